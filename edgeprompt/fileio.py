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


def umask() -> int:
    """The process's file-creation mask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it.

    The file gets the mode a plain ``open()`` would give (0666 less the umask): ``mkstemp``'s 0600 would hide runs,
    bundles and caches from a teammate, a container or an inference server running as another user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
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
    _remove(old)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    _remove(old)
    return dst


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points at) or a folder tree; nothing if it is not there."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name beside ``final`` and rename it into place on success.

    On any exception the temp directory is removed and ``final`` is untouched. With ``overwrite``,
    an existing ``final`` is replaced only after the new one is complete (:func:`replace_dir`).
    """
    final = real_output(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the output from other users
        yield tmp
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file :func:`output_lock` holds for ``target``: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``target`` while one command writes it; a second writer is refused.

    The lock is an OS file lock (``filelock``: ``flock`` on Unix), so taking it is atomic and a holder that dies,
    however it dies, releases it: no pid can be recycled into a stale lock, and no reader can catch a half-written
    lock file. The holder writes its pid and host into the file for the message a second writer gets. The file is
    removed when the holder is done (while still holding the lock).

    Raises:
        ConfigError: another live process holds the lock.
    """
    import socket

    from filelock import FileLock, Timeout

    from edgeprompt.errors import ConfigError

    target = Path(target)
    made = [d for d in [target.parent, *target.parent.parents] if not d.exists()]  # parents this lock creates
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(target)
    held = FileLock(str(lock), timeout=0)
    try:
        held.acquire()
    except Timeout:
        try:
            owner = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        raise ConfigError(f"{target} is being written by another edgeprompt process (pid {owner.get('pid', '?')} on "
                          f"{owner.get('host', '?')}): wait for it to finish") from None
    try:
        lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        _clear_leftovers(target)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # before the release: the next writer finds no file, or its own fresh one
        held.release()
        if not target.exists():  # a refused or failed write leaves no empty folders behind either
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _clear_leftovers(target: Path) -> None:
    """Remove what a killed writer of ``target`` left beside it: ``.NAME.*.partial`` folders and ``.NAME.old``.

    Called only by the holder of ``target``'s lock, so no live process is writing them. (``tune`` keeps its own
    ``NAME.partial`` to resume from; that one is not touched here.)
    """
    partials = target.parent.glob(f".{glob_escape(target.name)}.*.partial")
    for left in [*partials, target.with_name(f".{target.name}.old")]:
        if left.is_symlink() or left.exists():
            _remove(left)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def real_output(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``out`` with a symbolic link in its last part followed, so outputs are built beside what the link names.

    Raises:
        ConfigError: the link points at nothing (it would be found only after the work is done).
    """
    from edgeprompt.errors import ConfigError

    path = Path(out)
    if not path.is_symlink():
        return path
    target = path.resolve()
    if not target.exists() and not target.parent.is_dir():
        raise ConfigError(f"{flag} {out} is a symbolic link to {os.readlink(path)}, whose folder does not exist: "
                          f"create it, or choose another {flag}")
    return target


# What a previous output of each kind holds: ``--overwrite`` replaces a folder only when it is one of these.
_OUTPUT_MARKERS: dict[str, tuple[str, str | None]] = {
    "run directory": ("manifest.json", "run"),
    "bundle": ("manifest.json", "bundle"),
    "sweep": ("sweep.json", None),
    "audit report": ("audit.json", None),
    "generated dataset": ("world.json", None),
    "benchmark report": ("bench.json", None),
    "Triton model": ("config.pbtxt", None),
    "DeepStream folder": ("config_infer_primary.txt", None),
}


def is_output_of_kind(path: Path, kind: str) -> bool:
    """Whether the existing folder ``path`` is an earlier output of ``kind`` (or empty) and so may be replaced."""
    marker, manifest_kind = _OUTPUT_MARKERS[kind]
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    if not (path / marker).is_file():
        return False
    if manifest_kind is None:
        return True
    try:
        return json.loads((path / marker).read_text()).get("kind") == manifest_kind
    except (OSError, ValueError, AttributeError):
        return False


def guard_output(out: str | os.PathLike[str], kind: str, inputs: dict[str, str | os.PathLike[str] | None], *,
                 overwrite: bool, flag: str = "--out") -> Path:
    """The one check every output folder passes before any work: where it may go and what it may replace.

    - never on, over or inside an input (:func:`check_not_inside`, through symbolic links);
    - a symbolic link is followed (:func:`real_output`); a dangling one is refused;
    - its nearest existing parent must be a writable folder (not a file);
    - an existing ``out`` needs ``overwrite``, and even then is replaced only when it is an earlier output of the
      same ``kind`` (a key of ``_OUTPUT_MARKERS``), so ``--overwrite`` never deletes anything else.

    Returns:
        The path to write (the link's target when ``out`` is a link).

    Raises:
        ConfigError: one line naming ``flag`` and what to change.
    """
    from edgeprompt.errors import ConfigError

    check_not_inside(out, inputs, flag)
    path = real_output(out, flag)
    if path != Path(out):
        check_not_inside(path, inputs, flag)
    check_writable_parent(path, flag)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ConfigError(f"{out} already exists: pass --overwrite, or choose another {flag}")
        if not is_output_of_kind(path, kind):
            raise ConfigError(f"{flag} {out} exists and is not an edgeprompt {kind}: --overwrite only replaces an "
                              f"earlier {kind}; choose another {flag}")
    return path


def check_writable_parent(path: Path, flag: str = "--out") -> None:
    """Refuse an output whose nearest existing ancestor is a file or a folder this process cannot write."""
    from edgeprompt.errors import ConfigError

    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file (or a broken link), not a folder; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable; choose another {flag}")


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
