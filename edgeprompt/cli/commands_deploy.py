"""Deployment commands: export, predict, bench (torch-free at import; predict and bench never need torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprompt.cli.ui import command, emit, table

JSON = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]


def predict(
    bundle: Annotated[Path, typer.Argument(help="Export bundle (manifest.json + model.onnx [+ model.engine]).")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Predictions per image.")] = 3,
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | trt.")] = "auto",
    as_json: JSON = False,
) -> None:
    """Classify images with a compiled bundle (onnxruntime or TensorRT; torch is never imported)."""
    from edgeprompt import api

    result = api.predict(bundle, images, top_k=top_k, backend=backend)

    def render(r: dict[str, Any]) -> None:
        rows = [[item["image"], ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in item["top"])]
                for item in r["predictions"]]
        table(f"{len(rows)} images, backend {r['backend']} ({r['provider']})", ["name", f"top-{top_k}"], rows)

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    """Attach the deployment commands to ``app``."""
    app.command(rich_help_panel="Deploy")(command(predict))
