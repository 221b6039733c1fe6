"""Feature shards: many images' cached features per file, found through a small index, written by any number of
processes at once. Torch-free (numpy, safetensors' numpy API, sqlite3 from the standard library).

Layout under one backbone's cache folder::

    shards/<transform key>/<writer id>-<n>.safetensors   pooled (n, [V,] E) f32, tokens (n, [V,] T, E) f16; shas in
                                                       the header (older caches: .npz, still read)
    ../files.sqlite                                      per file (path, size, mtime_ns): content sha, image check
                                                         (shared by all backbones; edgeprompt.data.filetable)

A shard is written once, atomically, under a name no other writer uses (host, pid, time, counter), so torchrun ranks,
``--shard i/n`` jobs or a parallel sweep can extract into one cache without coordinating; a reader's index is the
union of every shard's ``shas``. The freshness table lets a warm cache skip re-hashing files whose size and
modification time are unchanged (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    return safe_open(str(path), framework="np")


def _runs(rows: Sequence[int]) -> list[tuple[int, int, list[int]]]:
    """Contiguous runs of ``rows``: (start, stop, positions in ``rows``), so a read touches only those rows."""
    runs: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(rows)), key=rows.__getitem__):
        r = rows[i]
        if runs and runs[-1][0] <= r <= runs[-1][1]:  # extends the run, or asks for its last row again
            start, stop, pos = runs[-1]
            pos.append(i)
            runs[-1] = (start, max(stop, r + 1), pos)
        else:
            runs.append((r, r + 1, [i]))
    return runs


class ShardStore:
    """The shards of one backbone's cache: lookup by (transform key, content sha), append new shards.

    Shards are safetensors files (``shas`` in the header's metadata, ``pooled`` and ``tokens`` as tensors): a read
    memory-maps the file and copies only the rows asked for, so a 16-shot subset of a large cache reads megabytes,
    not the shard. Shards written before (``.npz``, whose members load whole) are still read.
    """

    SUFFIXES = (".safetensors", ".npz")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, dict[str, tuple[Path, int, bool]]] = {}  # key -> sha -> (shard, row, has tokens)
        self._writer = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self._count = 0
        self.bytes_read = 0  # feature bytes copied out of shards (row-exact for safetensors, whole arrays for npz)

    def _dir(self, key: str) -> Path:
        return self.root / "shards" / key

    @staticmethod
    def _shard_rows(shard: Path) -> tuple[list[str], bool]:
        """(the shas of a shard's rows, whether it holds tokens); raises on a damaged file."""
        if shard.suffix == ".npz":
            with np.load(shard) as z:
                return z["shas"].tolist(), "tokens" in z.files
        with _open_safetensors(shard) as f:
            meta = f.metadata() or {}
            return meta["shas"].split(","), "tokens" in f.keys()

    def index(self, key: str) -> dict[str, tuple[Path, int, bool]]:
        """sha -> (shard file, row, has tokens) for every readable shard of ``key`` (read once, then kept)."""
        from safetensors import SafetensorError

        if key not in self._index:
            found: dict[str, tuple[Path, int, bool]] = {}
            folder = self._dir(key)
            shards = sorted(p for p in folder.iterdir() if p.suffix in self.SUFFIXES) if folder.is_dir() else []
            for shard in shards:
                try:
                    shas, tokens = self._shard_rows(shard)
                except (OSError, ValueError, KeyError, zipfile.BadZipFile, SafetensorError) as e:
                    log.warning("removing damaged feature shard %s (%s); its features are computed again", shard,
                                type(e).__name__)
                    with contextlib.suppress(OSError):
                        shard.unlink()  # shards appear by atomic rename, so this one is not being written
                    continue
                for row, sha in enumerate(shas):
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
        """The pooled features (and tokens) at ``places``, each shard opened once, only those rows copied."""
        by_shard: dict[Path, list[int]] = {}
        for i, (shard, _) in enumerate(places):
            by_shard.setdefault(shard, []).append(i)
        pooled: list[np.ndarray] = [np.empty(0)] * len(places)
        tokens: list[np.ndarray | None] = [None] * len(places)
        names = ("pooled", "tokens") if with_tokens else ("pooled",)
        for shard, idx in by_shard.items():
            rows = [places[i][1] for i in idx]
            if shard.suffix == ".npz":
                with np.load(shard) as z:
                    arrays = {n: z[n] for n in names}
                self.bytes_read += sum(a.nbytes for a in arrays.values())
                got = {n: a[rows] for n, a in arrays.items()}
            else:
                got = {}
                with _open_safetensors(shard) as f:
                    for n in names:
                        sl = f.get_slice(n)
                        parts: list[np.ndarray] = [np.empty(0)] * len(rows)
                        for start, stop, pos in _runs(rows):
                            block = sl[start:stop]
                            self.bytes_read += block.nbytes
                            for i in pos:
                                parts[i] = block[rows[i] - start]
                        got[n] = np.stack(parts)
            for j, i in enumerate(idx):
                pooled[i] = got["pooled"][j]
                tokens[i] = got["tokens"][j] if with_tokens else None
        return pooled, tokens

    def write(self, key: str, shas: Sequence[str], pooled: np.ndarray, tokens: np.ndarray | None) -> list[Path]:
        """Store features for ``shas`` in as many new shards as :data:`SHARD_BYTES` needs; returns the files."""
        from safetensors.numpy import save

        per = pooled[0].nbytes + (tokens[0].nbytes if tokens is not None else 0) if len(shas) else 1
        rows = max(1, SHARD_BYTES // max(per, 1))
        written = []
        folder = self._dir(key)
        for start in range(0, len(shas), rows):
            stop = start + rows
            arrays = {"pooled": np.ascontiguousarray(pooled[start:stop])}
            if tokens is not None:
                arrays["tokens"] = np.ascontiguousarray(tokens[start:stop])
            data = save(arrays, metadata={"shas": ",".join(shas[start:stop])})  # hex shas: no commas inside
            self._count += 1
            path = atomic_write_bytes(folder / f"{self._writer}-{self._count:05d}.safetensors", data)
            index = self.index(key)
            for row, sha in enumerate(shas[start:stop]):
                index[sha] = (path, row, tokens is not None)
            written.append(path)
        return written
