"""The owner's numbers (issue 14): conversation figures per channel and day, the lead funnel,
first-response times, CSAT (:mod:`.figures`, SQL in :mod:`runtime.db.analytics`), the questions
the bot could not answer clustered by embedding (:mod:`.unanswered`), the daily chart as a PNG
(:mod:`.chart`) and the weekly report email (:mod:`.weekly`).

Shared by the API (``runtime.api.analytics``), the CLI (``chat-engine report``) and the
Timekeeper (the weekly email), so it sits below all three and imports no model library: embeddings
come through the handle the caller passes (the Embedder deployment, or the CLI's local model).
"""
