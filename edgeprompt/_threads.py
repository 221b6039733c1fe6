"""How many CPU threads edgeprompt uses: one setting (``edgeprompt --threads N`` or ``$EDGEPROMPT_THREADS``) read by
torch, onnxruntime and the decoding workers. Torch-free.

Why a setting at all: torch's OpenMP threads spin while they wait, so on a machine where another process is busy a
thread count equal to the core count loses far more than it gains (benchmarks/threads.py measures it). Unset, the
CLI uses every core on a quiet machine and leaves the busy ones alone otherwise (:func:`busy_default`).
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


def busy_default() -> tuple[int, float] | None:
    """(threads, load) when other processes keep cores busy, so fewer threads than cores is the faster choice; None
    on a quiet machine (or where the load average is unknown). The 1-minute load average counts runnable processes:
    with L of them already running, C - L threads do not wait on each other behind a busy core
    (benchmarks/threads.py: a warm tune beside one busy process took 50 s with 2 threads, 11 s with 1)."""
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    busy = int(load + 0.5)
    return (max(1, n - busy), load) if busy and n > 1 else None


def cores() -> int:
    """The cores edgeprompt may use: the configured threads, else the machine's."""
    return configured() or os.cpu_count() or 1
