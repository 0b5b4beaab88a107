"""What the customer reads: sentences, extractive answers, the grounding check, intent signals
and the coverage decision. Plain functions over retrieved chunks and MiniLM embeddings (an
``embed_many`` callable: the Embedder deployment in production, a local model in tests)."""
