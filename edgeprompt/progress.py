"""How long-running library functions report progress without knowing about terminals (torch-free).

Library functions take a ``Reporter``; the CLI passes one that draws rich progress bars on stderr, tests and the
Python API get :class:`NullReporter`, which only logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("edgeprompt")

Tick = Callable[..., None]  # tick(done, total, **fields)


class Reporter(Protocol):
    def task(self, description: str) -> Tick:
        """Start a task; call the returned function as ``tick(done, total, **fields)``."""
        ...

    def message(self, text: str) -> None:
        """A line for the person watching (warnings, summaries)."""
        ...


class NullReporter:
    """Logs messages; progress ticks are dropped."""

    def task(self, description: str) -> Tick:
        def tick(done: int, total: int, **fields: Any) -> None:
            return None

        return tick

    def message(self, text: str) -> None:
        log.info(text)
