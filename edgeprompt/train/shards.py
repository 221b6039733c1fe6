"""Feature shards: many images' cached features per file, found through a small index, written by any number of
processes at once. Torch-free (numpy + sqlite3 from the standard library).

Layout under one backbone's cache folder::

    shards/<transform key>/<writer id>-<n>.npz   shas (n,) str, pooled (n, [V,] E) f32, tokens (n, [V,] T, E) f16
    ../files.sqlite                              path, size, mtime_ns -> content sha (shared by all backbones)

A shard is written once, atomically, under a name no other writer uses (host, pid, time, counter), so torchrun ranks,
``--shard i/n`` jobs or a parallel sweep can extract into one cache without coordinating; a reader's index is the
union of every shard's ``shas``. The freshness table lets a warm cache skip re-hashing files whose size and
modification time are unchanged (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeprompt.data.filetable import FileTable
from edgeprompt.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20  # target size of one shard file; a shard holds at least one image


class FileHashes:
    """Content hashes of image files, recomputed only when a file's size or modification time changed."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._table = FileTable(db, "files", value_col="sha")  # the table's name and column predate FileTable

    def shas(self, paths: Sequence[Path]) -> list[str]:
        """The content sha256 of each path (same order)."""
        return self._table.values(paths, sha256_file)


class ShardStore:
    """The shards of one backbone's cache: lookup by (transform key, content sha), append new shards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, dict[str, tuple[Path, int, bool]]] = {}  # key -> sha -> (shard, row, has tokens)
        self._writer = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self._count = 0

    def _dir(self, key: str) -> Path:
        return self.root / "shards" / key

    def index(self, key: str) -> dict[str, tuple[Path, int, bool]]:
        """sha -> (shard file, row, has tokens) for every readable shard of ``key`` (read once, then kept)."""
        if key not in self._index:
            found: dict[str, tuple[Path, int, bool]] = {}
            folder = self._dir(key)
            for shard in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
                try:
                    with np.load(shard) as z:
                        shas, tokens = z["shas"], "tokens" in z.files
                except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged shard: recomputed
                    log.warning("removing damaged feature shard %s (%s); its features are computed again", shard,
                                type(e).__name__)
                    with contextlib.suppress(OSError):
                        shard.unlink()  # shards appear by atomic rename, so this one is not being written
                    continue
                for row, sha in enumerate(shas.tolist()):
                    if sha not in found or (tokens and not found[sha][2]):  # prefer a shard with tokens
                        found[sha] = (shard, row, tokens)
            self._index[key] = found
        return self._index[key]

    def lookup(self, key: str, shas: Sequence[str], with_tokens: bool) -> list[tuple[Path, int] | None]:
        """Where each sha's features are (None: not cached, or cached without the tokens that are needed)."""
        index = self.index(key)
        out: list[tuple[Path, int] | None] = []
        for sha in shas:
            hit = index.get(sha)
            out.append((hit[0], hit[1]) if hit is not None and (hit[2] or not with_tokens) else None)
        return out

    def read(self, places: Sequence[tuple[Path, int]], with_tokens: bool) -> tuple[list[np.ndarray],
                                                                                     list[np.ndarray | None]]:
        """The pooled features (and tokens) at ``places``, each shard opened once."""
        by_shard: dict[Path, list[int]] = {}
        for i, (shard, _) in enumerate(places):
            by_shard.setdefault(shard, []).append(i)
        pooled: list[np.ndarray] = [np.empty(0)] * len(places)
        tokens: list[np.ndarray | None] = [None] * len(places)
        for shard, idx in by_shard.items():
            rows = [places[i][1] for i in idx]
            with np.load(shard) as z:
                p = z["pooled"][rows]
                t = z["tokens"][rows] if with_tokens else None
            for j, i in enumerate(idx):
                pooled[i] = p[j]
                tokens[i] = t[j] if t is not None else None
        return pooled, tokens

    def write(self, key: str, shas: Sequence[str], pooled: np.ndarray, tokens: np.ndarray | None) -> list[Path]:
        """Store features for ``shas`` in as many new shards as :data:`SHARD_BYTES` needs; returns the files."""
        per = pooled[0].nbytes + (tokens[0].nbytes if tokens is not None else 0) if len(shas) else 1
        rows = max(1, SHARD_BYTES // max(per, 1))
        written = []
        folder = self._dir(key)
        for start in range(0, len(shas), rows):
            stop = start + rows
            arrays = {"shas": np.asarray(shas[start:stop]), "pooled": pooled[start:stop]}
            if tokens is not None:
                arrays["tokens"] = tokens[start:stop]
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # type: ignore[arg-type]
            self._count += 1
            path = atomic_write_bytes(folder / f"{self._writer}-{self._count:05d}.npz", buf.getvalue())
            index = self.index(key)
            for row, sha in enumerate(shas[start:stop]):
                index[sha] = (path, row, tokens is not None)
            written.append(path)
        return written
