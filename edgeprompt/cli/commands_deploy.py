"""Deployment commands: export, predict, bench (torch-free at import; predict and bench never need torch)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the deployment commands to ``app``."""
