"""Terminal rendering: progress bars and messages on stderr, tables on stdout, ``--json`` as the last stdout line."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, TypeVar

import typer

from edgeprompt.errors import EdgePromptError

F = TypeVar("F", bound=Callable[..., Any])


def _console(stderr: bool = True):  # noqa: ANN202 - rich imported lazily
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class RichReporter:
    """A :class:`edgeprompt.progress.Reporter` drawing one rich progress bar per task on stderr."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def task(self, description: str) -> Callable[..., None]:
        task_id = None

        def tick(done: int, total: int, **fields: Any) -> None:
            nonlocal task_id
            extra = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            if task_id is None:
                task_id = self.progress.add_task(description, total=total, extra=extra)
            self.progress.update(task_id, completed=done, total=total, extra=extra)

        return tick

    def message(self, text: str) -> None:
        self.progress.console.print(text)


PROGRESS_AFTER_S = 2.0  # a step shorter than this prints no progress line at all


class PlainReporter:
    """Progress as plain, throttled lines on stderr, for logs (nohup, CI, Ray): nothing for a step that ends within
    ``PROGRESS_AFTER_S``; for a longer one a line then, at most one every ``every`` seconds, and its last tick."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every

    def task(self, description: str) -> Callable[..., None]:
        import time

        start, last = time.monotonic(), [float("-inf")]

        def tick(done: int, total: int, **fields: Any) -> None:
            now = time.monotonic()
            if QUIET or now - start < PROGRESS_AFTER_S:
                return
            if done != total and now - last[0] < self.every:
                return
            last[0] = now
            extra = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            print(f"{description}: {done}/{total} {extra}".rstrip(), file=sys.stderr, flush=True)

        return tick

    def message(self, text: str) -> None:
        if not QUIET:
            print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def reporter() -> Iterator[RichReporter | PlainReporter]:
    """Progress bars on stderr for the duration of a command; throttled plain lines when stderr is not a terminal
    (nothing with ``--quiet``)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    if not console.is_terminal:
        yield PlainReporter()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[extra]}"), console=console, transient=False,
        disable=not console.is_terminal,
    )
    with progress:
        yield RichReporter(progress)


class _OneLineHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        print(f"{level}: {record.getMessage()}", file=sys.stderr)


VERBOSE = False  # set by the root options -v / -q (cli.main), read when a command starts
QUIET = False


def setup_logging(verbose: bool | None = None) -> None:
    """Warnings (with ``-v`` also info, with ``-q`` only errors) from the library as one line each on stderr."""
    verbose = VERBOSE if verbose is None else verbose
    root = logging.getLogger("edgeprompt")
    if not any(isinstance(h, _OneLineHandler) for h in root.handlers):
        root.addHandler(_OneLineHandler())
    root.setLevel(logging.INFO if verbose else logging.ERROR if QUIET else logging.WARNING)
    root.propagate = False
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" warning is ours to give
    logging.captureWarnings(True)  # library warnings (torch.load, exporters) go to the quiet root logger, not stderr


def error_kind(e: BaseException) -> str:
    """``config`` | ``data`` | ``artifact`` | ``export`` | ``dependency`` | ``usage``: what ``--json`` errors carry."""
    from edgeprompt import errors

    for cls, kind in ((errors.ConfigError, "config"), (errors.DataError, "data"), (errors.ArtifactError, "artifact"),
                      (errors.ExportError, "export"), (errors.MissingDependencyError, "dependency")):
        if isinstance(e, cls):
            return kind
    return "usage"


def os_error_line(e: OSError) -> str:
    """One line for a file-system failure: what, where, and what to do."""
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "a file"
    hint = {errno.ENOSPC: "free some space, or choose another output folder",
            errno.EDQUOT: "free some space, or choose another output folder",
            errno.EACCES: "check the permissions, or choose another output folder",
            errno.EPERM: "check the permissions, or choose another output folder",
            errno.EROFS: "the file system is read-only: choose another output folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
            errno.ENAMETOOLONG: "the path is too long: use a shorter one"}.get(e.errno or 0, "check the path")
    return f"{where}: {e.strerror or e}; {hint}"


# Exit codes by kind of failure, so a script or a CI job can tell a typo from bad data from a refused gate.
EXIT_CODES: dict[str, int] = {"usage": 2, "config": 2, "data": 3, "artifact": 4, "export": 5, "dependency": 6,
                              "filesystem": 7, "interrupted": 130}
EXIT_CODES_HELP = ("Exit codes: 0 ok; 2 a bad option or value; 3 bad data (unreadable images, class mismatch); "
                   "4 a missing or damaged run, bundle or file; 5 export failed or a parity / INT8 gate refused the "
                   "bundle; 6 a missing optional package; 7 the file system refused (full disk, permissions); "
                   "130 interrupted.")


def fail(message: str, kind: str, as_json: bool) -> None:
    """One line on stderr (and with ``--json`` one JSON object on stdout), then the kind's exit code."""
    message = " ".join(message.split())  # one line, whatever the exception text held
    typer.echo(f"error: {message}", err=True)
    if as_json:
        sys.stdout.write(json.dumps({"error": message, "kind": kind}) + "\n")
        sys.stdout.flush()
    raise typer.Exit(EXIT_CODES.get(kind, 2))


def command(fn: F) -> F:
    """Turn EdgePromptError into one line on stderr and its kind's exit code (EXIT_CODES); Ctrl-C into a resume
    hint and 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except EdgePromptError as e:
            fail(str(e), error_kind(e), bool(kwargs.get("as_json")))
        except OSError as e:  # the file system said no (full disk, permissions, a path under a file): name the file
            fail(os_error_line(e), "filesystem", bool(kwargs.get("as_json")))
        except KeyboardInterrupt:
            typer.echo("interrupted: run the same command again to resume where it stopped", err=True)
            if kwargs.get("as_json"):
                sys.stdout.write(json.dumps({"error": "interrupted", "kind": "interrupted"}) + "\n")
                sys.stdout.flush()
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit(result: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """Render for a person (stdout, or stderr under --json) and, with ``as_json``, one JSON object as the last
    stdout line."""
    if render is not None:
        if as_json:
            with contextlib.redirect_stdout(sys.stderr):
                render(result)
        else:
            render(result)
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stdout."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c not in ("method", "class", "backend", "name", "noise") else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    _console(stderr=False).print(t)


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"
    return str(v)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


JSON = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]

PROTOCOL_HELP = "default (context starts from the zero-shot template) | paper (16 random tokens, 200 epochs)."


def parse_options(pairs: list[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--opt [METHOD.]KEY=VALUE``, the one syntax of every verb, into method -> {key: value}.

    ``METHOD.KEY`` sets the option of that method (one of ``methods``); a bare ``KEY`` sets it for every method of
    ``methods`` that has the option. Values are JSON when they parse (numbers, true/false), text otherwise; each is
    checked against its field's type when the method's config is built.
    """
    from edgeprompt.errors import ConfigError
    from edgeprompt.methods.base import method_config_class

    fields = {m: {f.name for f in dataclasses.fields(method_config_class(m))} for m in methods}
    out: dict[str, dict[str, Any]] = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--opt {item!r}: expected [METHOD.]KEY=VALUE, e.g. --opt n_ctx=4 or --opt "
                              f"visprompt.ot_warmup=2")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        method, dot, name = key.rpartition(".")
        if dot and method not in fields:
            raise ConfigError(f"--opt {key}: {method!r} is not a method of this command ({', '.join(methods)})")
        targets = [method] if dot else [m for m in methods if name in fields[m]]
        if not targets and len(methods) == 1:
            targets = list(methods)  # the method's own config says what it accepts, with a suggestion
        elif not targets:
            from edgeprompt.registry import suggest

            known = sorted(set().union(*fields.values()))
            raise ConfigError(f"--opt {key}: none of {', '.join(methods)} has an option {name!r}.{suggest(name, known)}"
                              f" Name one method with METHOD.{name}=…")
        for m in targets:
            out.setdefault(m, {})[name] = value
    return out
