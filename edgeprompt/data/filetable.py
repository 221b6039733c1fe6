"""A value per file, remembered while the file's size and modification time are unchanged: one sqlite table that
any number of processes share. Torch-free (sqlite3 from the standard library).

Two tables use it, both in the feature cache's ``files.sqlite``: ``files`` (content sha256, so a warm cache never
re-hashes) and ``checks`` (whether an image decodes, so a warm command never re-decodes what it checked before).
sqlite and not a JSON file: concurrent ranks and sweep cells update it without a lock of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from edgeprompt.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_TIMEOUT_S = 30  # how long a reader waits for another process's write
_CHUNK = 900  # sqlite's default limit on bound parameters is 999


class FileTable:
    """``path -> value`` valid for one (size, mtime_ns) of the file; a missing or unusable table only costs time.

    Args:
        db: The sqlite file (created on first use).
        table: The table's name; its value column is ``value_col``.
        value_col: The value column's name (``sha`` for the original ``files`` table, kept for old caches).
    """

    def __init__(self, db: Path, table: str, value_col: str = "value") -> None:
        self.db, self.table, self.value_col = db, table, value_col

    def _query(self, work: Callable[[sqlite3.Connection], T]) -> T | None:
        """Run ``work`` on the table; None when it cannot be used (a read-only cache: the caller computes, only
        slower). A damaged or foreign file is replaced by a fresh one once (one warning); a lock held past the
        timeout is a one-line error naming the file."""
        for attempt in range(2):
            try:
                self.db.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(self.db, timeout=LOCK_TIMEOUT_S)
            except (OSError, sqlite3.Error) as e:
                log.debug("file table %s unavailable: %s", self.db, e)
                return None
            try:
                con.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (path TEXT PRIMARY KEY, size INTEGER, "
                            f"mtime_ns INTEGER, {self.value_col} TEXT)")
                result = work(con)
                con.commit()
                return result
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise ConfigError(f"the feature cache index {self.db} stayed locked for {LOCK_TIMEOUT_S} s by "
                                      f"another process: wait for it, or pass another --cache-dir") from None
                log.debug("file table %s: %s", self.db, e)
                return None
            except sqlite3.DatabaseError as e:  # "file is not a database", a damaged page, a foreign schema
                if attempt:
                    log.debug("file table %s: %s", self.db, e)
                    return None
                log.warning("the feature cache index %s is damaged (%s): rebuilding it", self.db, e)
                con.close()
                with contextlib.suppress(OSError):
                    self.db.unlink()
                continue
            finally:
                con.close()
        return None

    def values(self, paths: Sequence[str | os.PathLike[str]], compute: Callable[[str], str],
               progress: Callable[[int, int], None] | None = None) -> list[str]:
        """The value of each path (same order): remembered when the file is unchanged, else ``compute(path)``,
        stored for next time. ``progress(done, total)`` ticks over the files that are computed."""
        keys = [str(Path(p).resolve()) for p in paths]
        stats = [os.stat(k) for k in keys]

        def select(con: sqlite3.Connection) -> dict[str, tuple[int, int, str]]:
            found: dict[str, tuple[int, int, str]] = {}
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                rows = con.execute(f"SELECT path, size, mtime_ns, {self.value_col} FROM {self.table} WHERE path IN "
                                   f"({','.join('?' * len(chunk))})", chunk)
                found.update((p, (s, m, v)) for p, s, m, v in rows if isinstance(v, str))
            return found

        known = self._query(select) or {}
        # the remembered value where the file is unchanged, else None: computed below
        out: list[str | None] = [h[2] if (h := known.get(k)) and h[:2] == (st.st_size, st.st_mtime_ns) else None
                                 for k, st in zip(keys, stats, strict=True)]
        todo = [i for i, v in enumerate(out) if v is None]
        fresh: list[tuple[str, int, int, str]] = []
        for done, i in enumerate(todo, start=1):
            value = out[i] = compute(keys[i])
            fresh.append((keys[i], stats[i].st_size, stats[i].st_mtime_ns, value))
            if progress:
                progress(done, len(todo))
        if fresh:
            self._query(lambda con: con.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?, ?, ?)", fresh))
        return [v for v in out if v is not None]
