"""Knowledge-base ingestion: crawl (``crawl``; URLs in ``urls``, robots.txt in ``robots``, page
requests in ``fetch``), extract HTML (``extract``), read PDFs (``pdf``), chunk (``chunking``), embed
and store (``store``), owner Q&A (``qa``) and background jobs (``jobs``; their data in
``job_types``, the work per source in ``job_runner``). Retrieval lives in :mod:`runtime.retrieval`."""
