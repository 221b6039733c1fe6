"""Index a labeled image folder (``root/<class>/…``) or a CSV manifest (``path,label``).

Images are checked once here (header + full decode) so that a corrupt file is reported by name before any
tuning starts: skipped with a warning, or fatal with ``strict=True``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeprompt.errors import DataError

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "img")  # header names a CSV's columns may have
LABEL_COLUMNS = ("label", "class", "classname", "category", "target")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass(frozen=True)
class LabeledSet:
    """Image paths with integer labels into ``classnames`` (display names, underscores already spaces)."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classnames: tuple[str, ...]
    root: Path | None = None
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (file, reason) for problems that were skipped

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def subset(self, indices: Sequence[int]) -> LabeledSet:
        """The samples at ``indices``, same class list."""
        return LabeledSet(
            paths=tuple(self.paths[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            classnames=self.classnames,
            root=self.root,
            skipped=self.skipped,
        )

    def counts(self) -> list[int]:
        """Number of samples per class."""
        out = [0] * self.num_classes
        for y in self.labels:
            out[y] += 1
        return out


def display_name(folder_name: str) -> str:
    """Folder name -> class name shown in prompts: underscores become spaces."""
    return folder_name.replace("_", " ").strip()


def is_image_file(path: Path) -> bool:
    """A visible file with a common image extension (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def check_image(path: Path) -> str | None:
    """None when ``path`` decodes as an image, else a short reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()  # structure check; a truncated file can still pass this …
        with Image.open(path) as im:
            im.load()  # … so decode the pixels too
    except Image.DecompressionBombError as e:  # a PNG bomb, or a huge scan: skipped like a broken file
        return f"too large to decode safely ({e})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


class ImageChecks:
    """:func:`check_image` verdicts, remembered per file (size, mtime) in ``db`` when given, so a warm command never
    decodes an image it checked before (:class:`~edgeprompt.data.filetable.FileTable`)."""

    def __init__(self, db: str | os.PathLike[str] | None = None) -> None:
        from edgeprompt.data.filetable import FileTable

        self._table = FileTable(Path(db), "checks", "reason") if db is not None else None

    def reasons(self, paths: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> list[str | None]:
        """None for each path that decodes, else why not (same order)."""
        if self._table is None:
            out = []
            for i, p in enumerate(paths):
                out.append(check_image(p))
                if progress:
                    progress(i + 1, len(paths))
            return out
        return [r or None for r in self._table.values(paths, lambda k: check_image(Path(k)) or "", progress)]


def image_side(paths: Sequence[Path], sample: int = 64) -> int | None:
    """Median shorter side in pixels of up to ``sample`` of ``paths`` (headers only), or None when none opens."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    sides = []
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(sorted(sides)[len(sides) // 2]) if sides else None


def list_images(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly, plus the images found recursively in named folders (hidden entries skipped).

    Raises:
        DataError: an item does not exist, or nothing to classify was found.
    """
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths.extend(p for p in visible_files(item) if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist: pass image files or folders that contain images")
    if not paths:
        raise DataError("no images to classify: pass image files or folders that contain images")
    return paths


def visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, through linked folders) whose path below it has no hidden part,
    sorted. Directory entries carry their type, so a 100k-image folder is listed without a stat per plain file
    (``Path.rglob`` + ``is_file`` stats each one); links are followed, and a broken one is left out."""
    out: list[Path] = []
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        stack.append(entry.path)
                    elif entry.is_file():
                        out.append(Path(entry.path))
        except OSError:  # an unreadable sub-folder: its files are not listed (as rglob skips it)
            continue
    return sorted(out)


def handle_problem(problems: list[tuple[str, str]], path: Path | str, reason: str, strict: bool,
                   quiet: bool = False) -> None:
    """Fail under ``strict``; else record the skipped file (``quiet``: the caller warns once for all of them)."""
    if strict:
        raise DataError(f"{path}: {reason} (remove it, or drop --strict to skip such files with a warning)")
    if not quiet:
        log.warning("skipping %s: %s", path, reason)
    problems.append((str(path), reason))


def read_classnames_file(path: str | Path) -> list[str]:
    """One class name per line (blank lines and '#' comments ignored)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class-names file {p} does not exist")
    names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise DataError(f"class-names file {p} lists a class twice")
    return names


def load_folder(
    root: str | Path,
    *,
    strict: bool = False,
    classnames: Sequence[str] | None = None,
    check_images: bool = True,
    progress: Callable[[int, int], None] | None = None,
    checks: ImageChecks | None = None,
) -> LabeledSet:
    """Index ``root/<class>/**/<image>``: nested folders allowed, hidden files and folders ignored.

    Args:
        root: folder with one sub-folder per class. Folder names become class names (``_`` → space), in sorted order.
        strict: make unreadable images and non-image files fatal instead of skipped with a warning.
        classnames: optional display names replacing the folder-derived ones, in sorted folder order.
        check_images: decode every image once to catch corrupt files early (False: index only; check what is
            used later with :func:`edgeprompt.data.fewshot.sample_checked` or :class:`ImageChecks`).
        progress: called as ``progress(done, total)`` while images are checked.
        checks: where verdicts are remembered (:class:`ImageChecks`); None decodes every image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a folder with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    real_root = root.resolve()
    for d in class_dirs:  # a link to the root (or above it) would make a class of every image
        target = d.resolve()
        if d.is_symlink() and (target == real_root or target in real_root.parents or real_root in target.parents):
            raise DataError(f"class folder {d} is a link to {target}, inside or around the data folder itself: "
                            f"remove the link, or point it at a folder outside {root}")
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders: expected {root}/<class name>/<images>")
    problems: list[tuple[str, str]] = []
    files: list[tuple[Path, int]] = []
    kept_dirs: list[Path] = []
    for d in class_dirs:
        entries = visible_files(d)
        images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
        for other in (p for p in entries if p.suffix.lower() not in IMAGE_EXTENSIONS):
            handle_problem(problems, other, "not an image file (unknown extension)", strict)
        if not images:
            msg = f"class folder {d} has no images"
            if strict:
                raise DataError(msg + " (add images or remove the folder)")
            log.warning("%s; ignoring that class", msg)
            problems.append((str(d), "empty class folder"))
            continue
        files.extend((p, len(kept_dirs)) for p in images)
        kept_dirs.append(d)
    names = [display_name(d.name) for d in kept_dirs]
    _check_names(names, [d.name for d in kept_dirs], root)
    if classnames is not None:
        if len(classnames) != len(class_dirs):
            raise DataError(f"{len(classnames)} class names given for {len(class_dirs)} class folders in {root}")
        keep = {d.name for d in kept_dirs}
        names = [n for n, d in zip(classnames, class_dirs, strict=True) if d.name in keep]
    paths, labels = _check_all(files, problems, strict, check_images, progress, checks)
    return finish_set(paths, labels, names, root, problems, str(root))


def _check_names(names: Sequence[str], sources: Sequence[str], where: Path) -> None:
    """Class names must be non-empty and distinct (``half_moon`` and ``half moon`` are the same prompt)."""
    seen: dict[str, str] = {}
    for name, src in zip(names, sources, strict=True):
        if not name:
            raise DataError(f"class {src!r} in {where} gives an empty class name: rename it to the class's name")
        if name in seen:
            raise DataError(f"classes {seen[name]!r} and {src!r} in {where} both give the class name {name!r} (the "
                            f"same prompt): merge or rename one")
        seen[name] = src


def finish_set(paths: list[Path], labels: list[int], names: Sequence[str], root: Path | None,
               problems: list[tuple[str, str]], where: str) -> LabeledSet:
    """Drop classes left without a usable image (with a warning, as an empty folder is), then check >= 2 remain."""
    counts = [0] * len(names)
    for y in labels:
        counts[y] += 1
    empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
    if empty:
        log.warning("no usable images for class(es) %s in %s; ignoring them", ", ".join(map(repr, empty)), where)
        problems.extend((n, "no usable images") for n in empty)
        new_index: dict[int, int] = {}  # old class index -> index among the classes kept
        for i, c in enumerate(counts):
            if c:
                new_index[i] = len(new_index)
        labels = [new_index[y] for y in labels]
        names = [n for n, c in zip(names, counts, strict=True) if c]
    if len(names) < 2:
        raise DataError(f"{where} has {len(names)} usable class(es): a classifier needs at least 2")
    return LabeledSet(tuple(paths), tuple(labels), tuple(names), root, tuple(problems))


def _check_all(
    files: list[tuple[Path, int]],
    problems: list[tuple[str, str]],
    strict: bool,
    check_images: bool,
    progress: Callable[[int, int], None] | None,
    checks: ImageChecks | None = None,
) -> tuple[list[Path], list[int]]:
    if not check_images:
        return [p for p, _ in files], [y for _, y in files]
    reasons = (checks or ImageChecks()).reasons([p for p, _ in files], progress)
    paths: list[Path] = []
    labels: list[int] = []
    for (p, y), reason in zip(files, reasons, strict=True):
        if reason:
            handle_problem(problems, p, reason, strict)
        else:
            paths.append(p)
            labels.append(y)
    return paths, labels


def load_csv(
    path: str | Path,
    *,
    classnames: Sequence[str] | None = None,
    strict: bool = False,
    check_images: bool = True,
    progress: Callable[[int, int], None] | None = None,
    checks: ImageChecks | None = None,
) -> LabeledSet:
    """Read a ``path,label`` CSV (header optional; relative paths are relative to the CSV's folder).

    Labels are class names (or folder-style names with underscores). With ``classnames`` given, a label outside that
    list is an error; otherwise the classes are the sorted set of labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark is no label
            rows = [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CSV manifest {path} is not a UTF-8 CSV file ({type(e).__name__}): save it as UTF-8 "
                        f"with lines of 'path,label'") from None
    if not rows:
        raise DataError(f"CSV manifest {path} has no rows: expected lines of 'path,label'")
    cols, first = (0, 1), 1  # column indices; the file's line number of rows[0]
    head = [c.lower() for c in rows[0]]
    if any(c in PATH_COLUMNS for c in head) or any(c in LABEL_COLUMNS for c in head):
        try:
            cols = (next(i for i, c in enumerate(head) if c in PATH_COLUMNS),
                    next(i for i, c in enumerate(head) if c in LABEL_COLUMNS))
        except StopIteration:
            raise DataError(f"{path}: the header {','.join(rows[0])!r} needs a path column ({'/'.join(PATH_COLUMNS)})"
                            f" and a label column ({'/'.join(LABEL_COLUMNS)})") from None
        rows, first = rows[1:], 2
    elif rows[0][0] and Path(rows[0][0]).suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{path} row 1 ({','.join(rows[0])!r}) is neither an image row nor a header with a path "
                        f"and a label column: start the file with 'path,label'")
    if not rows:
        raise DataError(f"CSV manifest {path} has a header but no rows")
    raw = []
    seen: dict[str, tuple[int, str]] = {}  # resolved path -> (row, label) of its first row
    repeated = 0
    for n, r in enumerate(rows, start=first):
        if len(r) <= max(cols) or not r[cols[0]] or not display_name(r[cols[1]]):
            raise DataError(f"{path} row {n}: expected a path and a label, got {','.join(r)!r}")
        label = display_name(r[cols[1]])
        key = str((Path(r[cols[0]]) if Path(r[cols[0]]).is_absolute() else path.parent / r[cols[0]]).resolve())
        if key in seen:
            if seen[key][1] != label:
                raise DataError(f"{path} rows {seen[key][0]} and {n} give {r[cols[0]]} two labels ({seen[key][1]!r} "
                                f"and {label!r}): keep one row per image")
            repeated += 1
            continue
        seen[key] = (n, label)
        raw.append((r[cols[0]], label))
    if repeated:
        log.warning("%s lists %d image(s) more than once with the same label; each is used once", path, repeated)
    names = list(classnames) if classnames is not None else sorted({lab for _, lab in raw})
    index = {n: i for i, n in enumerate(names)}
    files: list[tuple[Path, int]] = []
    problems: list[tuple[str, str]] = []
    for n, (p, lab) in enumerate(raw, start=first):
        if lab not in index:
            raise DataError(f"{path} row {n}: unknown label {lab!r}; known classes: {', '.join(names)}")
        fp = Path(p) if Path(p).is_absolute() else path.parent / p
        if not fp.is_file():
            handle_problem(problems, fp, "file does not exist", strict, quiet=True)
            continue
        files.append((fp, index[lab]))
    missing = sum(why == "file does not exist" for _, why in problems)
    if missing:
        log.warning("%d of the %d files %s lists do not exist (first: %s); paths are relative to the CSV's folder",
                    missing, len(raw), path, next(f for f, why in problems if why == "file does not exist"))
    if not files:
        raise DataError(f"none of the {len(raw)} files {path} lists exists (first: {raw[0][0]}): relative paths "
                        f"are read from the CSV's folder {path.parent}")
    paths, labels = _check_all(files, problems, strict, check_images, progress, checks)
    return finish_set(paths, labels, names, path.parent, problems, str(path))

def load_labeled(
    source: str | Path,
    *,
    strict: bool = False,
    classnames_file: str | Path | None = None,
    check_images: bool = True,
    progress: Callable[[int, int], None] | None = None,
    checks: ImageChecks | None = None,
) -> LabeledSet:
    """A folder or a ``.csv`` manifest, whichever ``source`` is (see :func:`load_folder` for the options)."""
    names = read_classnames_file(classnames_file) if classnames_file else None
    source = Path(source)
    if source.suffix.lower() == ".csv" and not source.is_dir():  # a folder named x.csv is a folder
        return load_csv(source, classnames=names, strict=strict, check_images=check_images, progress=progress,
                        checks=checks)
    return load_folder(source, strict=strict, classnames=names, check_images=check_images, progress=progress,
                       checks=checks)


def match_classes(train_classes: Sequence[str], test: LabeledSet, what: str = "test set") -> LabeledSet:
    """Re-index ``test`` labels onto ``train_classes``; any mismatch of class sets is a DataError."""
    if tuple(test.classnames) == tuple(train_classes):
        return test
    extra = sorted(set(test.classnames) - set(train_classes))
    missing = sorted(set(train_classes) - set(test.classnames))
    if extra:
        raise DataError(
            f"the {what} has classes the run was not tuned on: {', '.join(extra[:5])}"
            f"{' …' if len(extra) > 5 else ''} (run classes: {', '.join(train_classes[:8])}…)"
        )
    if missing:
        log.warning("the %s has no samples of: %s", what, ", ".join(missing))
    index = {n: i for i, n in enumerate(train_classes)}
    return LabeledSet(
        test.paths, tuple(index[test.classnames[y]] for y in test.labels), tuple(train_classes), test.root, test.skipped
    )
