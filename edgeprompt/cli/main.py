"""``edgeprompt``: tune, eval, export, predict, bench, sweep, demo, data, models."""

from __future__ import annotations

import typer

from edgeprompt.cli import deploy, info, start, tune
from edgeprompt.cli.ui import EXIT_CODES_HELP

app = typer.Typer(
    name="edgeprompt",
    help="Noise-robust prompt tuning for a frozen CLIP (DSPT, VisPrompt), exported to ONNX / TensorRT.\n\n"
    "Typical flow: `edgeprompt tune DATA/train --method dspt --noise sym:0.5 --out runs/dspt` -> "
    "`edgeprompt eval runs/dspt DATA/test` -> `edgeprompt export runs/dspt --out bundle` -> "
    "`edgeprompt predict bundle photo.jpg`. Start with `edgeprompt demo` to see it all offline.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from edgeprompt.version import __version__

        typer.echo(f"edgeprompt {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the library's info messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors: no warnings, no progress."),
    threads: int | None = typer.Option(None, "--threads", "-t", min=1, envvar="EDGEPROMPT_THREADS",
                                       help="CPU threads for torch, onnxruntime and image decoding (default: "
                                            "every core, fewer when other processes keep cores busy)."),
) -> None:
    """The root options (the help text is the app's)."""
    from edgeprompt.cli import ui

    ui.VERBOSE, ui.QUIET = verbose, quiet and not verbose
    import os

    from edgeprompt._threads import apply, busy_default

    if threads is not None:
        apply(threads)
    elif "OMP_NUM_THREADS" not in os.environ and (auto := busy_default()) is not None:
        apply(auto[0])  # another job holds cores: fewer threads than cores is faster (docs/defaults.md)
        if ui.VERBOSE:  # the log handlers are set up by the verb, after this callback
            typer.echo(f"info: the machine is busy (load {auto[1]:.1f}): using {auto[0]} thread(s); --threads N "
                       f"chooses", err=True)
start.register(app)
tune.register(app)
deploy.register(app)
info.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a bad command line gets the same one-line error (exit 2) as a bad input."""
    import sys

    from edgeprompt.cli.ui import fail

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="edgeprompt", standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as e:  # click's usage errors (unknown option, bad value, missing argument)
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `edgeprompt` / `edgeprompt data`: the help was printed
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "edgeprompt"
        text = e.format_message() if hasattr(e, "format_message") else str(e)
        try:
            fail(f"{text} (see `{where} --help`)", "usage", "--json" in args)
        except typer.Exit as x:
            sys.exit(x.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
