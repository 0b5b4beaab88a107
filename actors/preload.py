"""The setup hook of a session actor's worker process (Ray's ``worker_process_setup_hook``, set by
:func:`actors.spare_workers.session_runtime_env`): runs once when the process starts, before an
actor is placed in it, so a new session's actor finds its modules imported.

Kept apart from :mod:`actors.spare_workers` so that the module every session imports stays light
and the hook alone pulls in the whole session runtime.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def prepare_session_worker() -> None:
    """Import the session actor's modules and Serve's handle machinery; then, in a thread (the
    process goes on to wait for an actor meanwhile), read the intent examples' vectors from
    Redis (:func:`actors.models.warm_process`) and count this process as a spare
    (:func:`actors.spare_workers.announce_spare`). No Ray calls: an idle worker must not submit
    any (Ray's core worker aborts). Never raises: Ray ends a worker whose setup hook fails, and
    an unwarmed process still works."""
    started = time.perf_counter()
    try:
        import ray.serve.handle  # noqa: F401 - the session's model handles

        import actors.session  # noqa: F401 - the conversation runtime
        from actors.models import warm_process
    except Exception:  # noqa: BLE001 - the actor imports them again and reports what fails
        log.warning("session worker not warmed", exc_info=True)
        return

    def warm() -> None:
        from actors.spare_workers import announce_spare, hosting

        if hosting():
            return  # started for an actor that is already here: it warms what it needs itself
        warm_process()
        announce_spare()
        log.debug("session worker warmed in %.0f ms", (time.perf_counter() - started) * 1000)

    threading.Thread(target=warm, name="session-worker-warm", daemon=True).start()
