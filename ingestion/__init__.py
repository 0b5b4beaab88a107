"""Knowledge-base ingestion: crawl (``crawl``), extract HTML (``extract``), read PDFs (``pdf``),
chunk (``chunking``), embed and store (``store``), owner Q&A (``qa``) and background jobs
(``jobs``). Retrieval lives in :mod:`runtime.retrieval`."""
