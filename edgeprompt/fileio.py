"""Atomic file and directory writes: nothing half-written is ever left at the final path."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Pretty JSON, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Move the finished directory ``src`` to ``dst``, replacing an existing ``dst`` only once ``src`` is complete.

    The old ``dst`` is first renamed aside (``.<name>.old``), so at no moment is there neither an old nor a new
    copy; if the second rename fails the old one is put back.
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return dst
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dst


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name beside ``final`` and rename it into place on success.

    On any exception the temp directory is removed and ``final`` is untouched. With ``overwrite``,
    an existing ``final`` is replaced only after the new one is complete (:func:`replace_dir`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file :func:`output_lock` holds for ``target``: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``target`` while one command writes it; a second writer is refused.

    The lock file records the owner's pid and host. A lock whose process is gone (same host) is stale and taken
    over; a lock from another host is respected, and the error says how to clear it.

    Raises:
        ConfigError: another live process holds the lock.
    """
    import json
    import socket

    from edgeprompt.errors import ConfigError

    target = Path(target)
    made = [d for d in [target.parent, *target.parent.parents] if not d.exists()]  # parents this lock creates
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(target)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            stale = owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", -1)))
            if stale or not owner:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                continue
            raise ConfigError(f"{target} is being written by another edgeprompt process (pid {owner.get('pid')} on "
                              f"{owner.get('host')}): wait for it, or delete {lock} if no such process runs") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - two racing stale-lock takeovers
        raise ConfigError(f"could not take the lock {lock}: try again")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        if not target.exists():  # a refused or failed write leaves no empty folders behind either
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()


def check_not_inside(out: str | os.PathLike[str], inputs: dict[str, str | os.PathLike[str] | None],
                     flag: str = "--out") -> None:
    """Refuse an output path that is, contains or lies inside one of the command's inputs.

    Args:
        out: the output file or directory.
        inputs: what the input is called in the message (e.g. ``"the run directory"``) -> its path.

    Raises:
        ConfigError: ``out`` overlaps an input (writing it could destroy that input).
    """
    from edgeprompt.errors import ConfigError

    o = Path(out).resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        p = Path(path).resolve()
        if o == p or p in o.parents or o in p.parents:
            raise ConfigError(f"{flag} {out} overlaps {what} {path}: writing there would destroy or pollute it; "
                              f"choose another {flag}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
