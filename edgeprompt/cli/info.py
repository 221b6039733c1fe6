"""``edgeprompt models`` and ``edgeprompt checks``: what this machine has (torch-free at import)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgeprompt.cli.ui import JSON, command, emit, table


def models(as_json: JSON = False, all_models: Annotated[bool, typer.Option("--all", help="List every open_clip model, also those without known weights.")] = False) -> None:
    """List the methods (with their options) and the backbones (open_clip models and pretrained tags)."""
    from edgeprompt import api

    result = api.models()
    if not all_models:
        result["backbones"] = {k: v for k, v in result["backbones"].items() if v}

    def render(r: dict[str, Any]) -> None:
        table("methods", ["method", "description", "options"],
              [[k, v["help"], ", ".join(f"{o}={d!r}" for o, d in v["options"].items())] for k, v in r["methods"].items()])
        table("backbones (--model / --pretrained)", ["name", "pretrained tags"],
              [[k, ", ".join(v)] for k, v in sorted(r["backbones"].items())])

    emit(result, as_json, render)


def checks(as_json: JSON = False) -> None:
    """What this machine has for edgeprompt (versions, backends, GPU, driver, Jetson) and known-bad combinations.

    Run it first when an install misbehaves; each problem comes with the command that fixes it.
    """
    from edgeprompt import api

    result = api.checks()

    def render(r: dict[str, Any]) -> None:
        table("installed", ["name", "value"], [[k, v] for k, v in r["versions"].items()])
        table("backends", ["backend", "status"], [[k, v] for k, v in r["backends"].items()])
        gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in r["gpus"]) or "none visible"
        facts = [*r["machine"].items(), ("gpus", gpus), ("jetson", r["jetson_model"] or "no"),
                 ("power mode", r["power_mode"] or "–")]
        table("machine", ["name", "value"], [list(f) for f in facts])
        for p in r["problems"]:
            print(f"problem: {p['problem']}\n  fix: {p['fix']}")
        if not r["problems"]:
            print("no known problem found")

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the app."""
    app.command(rich_help_panel="Info")(command(models))
    app.command(rich_help_panel="Info")(command(checks))
