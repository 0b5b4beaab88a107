"""The conversation runtime as plain objects: what a session actor does, testable without Ray.

- :mod:`.conversation`: :class:`Conversation`, a session's operations, queue and lifecycle;
- :mod:`.pipeline`: :class:`TurnPipeline`, from a customer message to a decision (:mod:`.decisions`);
- :mod:`.turns`: :class:`TurnRunner`, carrying a decision out, with retries and abort handling;
- :mod:`.answers` / :mod:`.answer_stream`: extractive and generative answers, guarded and grounded;
- :mod:`.escalation`: escalation to a human and the SLA timer;
- :mod:`.delivery`: the Delivery seam (the widget's Redis stream, the outbox for messaging channels);
- :mod:`.control`: abort checkpoints and the delivery critical section;
- :mod:`.state`, :mod:`.payloads`, :mod:`.ports`, :mod:`.resources`, :mod:`.faults`.
"""
