"""What a session actor's process imports: the conversation runtime, and none of the heavy
packages that belong to the model deployments, the ingress, ingestion or occasional actions.

Every live conversation is a process of its own (~100 MB USS), so each package imported at start
is paid once per conversation: 17 MB of httpx, egress, Fernet and phonenumbers once crept in
through the actions. No stack needed: a fresh interpreter imports the actor modules as Ray's
worker does (actors.preload is the spare processes' warm-up hook).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

# Packages a session actor must not load when it starts: models (they run in Serve deployments),
# the HTTP edge, ingestion, analytics, and what only an order source or a phone number needs.
# (fastapi, starlette and uvicorn do load: ray.serve.handle imports them, part of the ~19 MB
# that Serve's handles cost each actor.)
NOT_IN_AN_ACTOR = {
    "torch", "transformers", "sentence_transformers", "llama_cpp", "vllm", "openai",
    "sse_starlette", "argon2",
    "ingestion", "trafilatura", "selectolax", "pypdf", "httpx",
    "matplotlib", "sklearn", "phonenumbers", "playwright",
}
# What it does load: the actor shell, the conversation logic, and Serve's handles to the models.
IN_AN_ACTOR = {"actors.session", "actors.models", "runtime.conversation.conversation",
               "runtime.conversation.answers", "ray.serve.handle", "asyncpg", "redis"}


def test_session_actor_process_loads_the_runtime_and_no_heavy_packages() -> None:
    # What actors.preload.prepare_session_worker imports (without starting its Redis thread).
    code = ("import json, sys, ray.serve.handle, actors.session, actors.models, actors.preload; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    tops = {m.split(".")[0] for m in modules}
    assert IN_AN_ACTOR <= modules, sorted(IN_AN_ACTOR - modules)
    assert tops & NOT_IN_AN_ACTOR == set(), sorted(tops & NOT_IN_AN_ACTOR)
