"""Actions: what the bot does in the tenant's own systems instead of answering from the knowledge
base (issue 15). The turn consults them after the policy and lead capture, before retrieval.

- :mod:`.engine`: the registry (:data:`~.engine.REGISTRY`) and :class:`~.engine.ActionEngine`,
  a session's port (resume a pending step, start on a trigger, execute a request).
- :mod:`.triggers` (+ ``triggers.toml``): rules and example phrases that start an action.
- :mod:`.entities`: order ids, emails, phone numbers (E.164), choices, references, yes/no.
- :mod:`.orders`, :mod:`.order_config`, :mod:`.order_lookup`: live order status with verification.
- :mod:`.bookings`: availability, booking, look-up and cancellation.
- :mod:`.types`: the pending state kept in the session, and a :class:`~.types.Step`.
"""
