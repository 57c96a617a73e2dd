"""Embeddings cached on disk, so re-scoring a protocol (another metric, fold count, FAR list) is instant.

One ``.npz`` file per (model, preprocessing) key holds image names, their raw flip-summed embeddings
and how each image was prepared. A later run with the same key embeds only the images it lacks.
Writes are atomic (temporary file + rename), so an interrupted run never leaves a broken cache, and
a cache that cannot be written (read-only folder, full disk) is a warning, not a lost evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingCache", "cache_key"]

logger = logging.getLogger(__name__)


def cache_key(settings: dict) -> str:
    """A short stable hash of everything that changes the embeddings (model fingerprint, input, alignment)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class EmbeddingCache:
    """Embeddings of named images under one key, in ``directory/<key>.npz``.

    Args:
        directory: where cache files live (created on first save).
        key: from :func:`cache_key`.
        settings: what the key was made from, stored beside it for people reading the folder.
    """

    def __init__(self, directory: str | os.PathLike, key: str, settings: dict | None = None):
        self.path = Path(directory) / f"{key}.npz"
        self.settings = settings or {}
        self.names: list[str] = []
        self.embeddings = np.zeros((0, 0), dtype=np.float32)
        self.preps = np.zeros(0, dtype=np.int8)
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self.names = [str(n) for n in data["names"]]
                    self.embeddings = data["embeddings"].astype(np.float32)
                    self.preps = data["preps"].astype(np.int8)
                logger.info("embedding cache %s: %d images", self.path, len(self.names))
            except (OSError, KeyError, ValueError) as error:  # a damaged cache is only a lost speed-up
                logger.warning("ignoring unreadable embedding cache %s (%s)", self.path, error)
                self.names, self.embeddings, self.preps = [], np.zeros((0, 0), np.float32), np.zeros(0, np.int8)
        self._index = {name: i for i, name in enumerate(self.names)}

    def missing(self, names: Sequence[str]) -> list[str]:
        """The names without a cached embedding, in the given order, each once."""
        return list(dict.fromkeys(n for n in names if n not in self._index))

    def add(self, names: Sequence[str], embeddings: np.ndarray, preps: Sequence[int]) -> None:
        if len(names) != len(embeddings) or len(names) != len(preps):
            raise ValueError(f"{len(names)} names, {len(embeddings)} embeddings, {len(preps)} prep codes")
        if not len(names):
            return
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if self.names and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding size {embeddings.shape[1]} differs from the cached {self.embeddings.shape[1]}")
        self.embeddings = embeddings if not self.names else np.concatenate([self.embeddings, embeddings])
        self.preps = np.concatenate([self.preps, np.asarray(preps, dtype=np.int8)])
        for name in names:
            self._index[name] = len(self.names)
            self.names.append(name)

    def get(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, D), prep codes (N,)) of ``names``; KeyError names the first absent one."""
        rows = np.array([self._index[name] for name in names], dtype=np.int64)
        return self.embeddings[rows], self.preps[rows]

    def save(self) -> bool:
        """Write the cache; False (with a warning, the temporary file removed) when it cannot be written:
        a cache is only a speed-up, so an unwritable one must not cost the results it was computed with."""
        temporary = self.path.with_suffix(".tmp.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(temporary, names=np.array(self.names, dtype=str), embeddings=self.embeddings, preps=self.preps)
            os.replace(temporary, self.path)
            self.path.with_suffix(".json").write_text(json.dumps(self.settings, indent=2, default=str) + "\n", encoding="utf-8")
        except OSError as error:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
            logger.warning("embedding cache not written (%s: %s); the results are not affected, the next run embeds again",
                           error.filename or self.path, error.strerror or error)
            return False
        return True
