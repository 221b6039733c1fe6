"""How many CPU threads edgeprompt uses: one setting (``edgeprompt --threads N`` or ``$EDGEPROMPT_THREADS``) read by
torch, onnxruntime and the decoding workers. Torch-free.

Why a setting at all: torch's OpenMP threads spin while they wait, so on a machine where another process is busy a
thread count equal to the core count loses far more than it gains (benchmarks/threads.py measures it).
"""

from __future__ import annotations

import os
import sys

from edgeprompt.errors import ConfigError

ENV = "EDGEPROMPT_THREADS"


def configured() -> int | None:
    """The thread count set by ``--threads`` or ``$EDGEPROMPT_THREADS``; None when unset (each library's default)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"${ENV}={raw!r} must be a whole number >= 1 (or unset)")
    return n


def apply(n: int) -> None:
    """Use ``n`` threads from now on, in this process and the ones it starts (set before torch is imported, the
    OpenMP pool is sized once; after, torch is told directly)."""
    if isinstance(n, bool) or n < 1:
        raise ConfigError(f"--threads must be a whole number >= 1, got {n}")
    for var in (ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def cores() -> int:
    """The cores edgeprompt may use: the configured threads, else the machine's."""
    return configured() or os.cpu_count() or 1
