"""``edgeprompt``: tune, eval, export, predict, bench, sweep, demo, data, models."""

from __future__ import annotations

import typer

from edgeprompt.cli import commands_deploy, commands_tune

app = typer.Typer(
    name="edgeprompt",
    help="Noise-robust prompt tuning for a frozen CLIP (DSPT, VisPrompt), exported to ONNX / TensorRT.\n\n"
    "Typical flow: `edgeprompt tune DATA/train --method dspt --noise sym:0.5 --out runs/dspt` -> "
    "`edgeprompt eval runs/dspt DATA/test` -> `edgeprompt export runs/dspt --out bundle` -> "
    "`edgeprompt predict bundle photo.jpg`. Start with `edgeprompt demo` to see it all offline.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
commands_tune.register(app)
commands_deploy.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
