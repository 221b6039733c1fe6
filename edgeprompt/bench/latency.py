"""One latency routine for every backend: warm-up, then timed iterations of ``runtime.run`` on a fixed batch.

Torch-free. What is timed is the runtime call as a user sees it: host-to-device copy, compute, device-to-host copy
(every backend's ``run`` returns only when the outputs are on the host, so the wall clock needs no extra sync).
Preprocessing is not timed here; the input batch is made once, before the loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeprompt.errors import ConfigError
from edgeprompt.runtime.base import Runtime, input_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult:
    """Latency statistics of one (runtime, batch) pair; times in milliseconds per call (per batch).

    Attributes:
        backend: Backend name ('ort-cpu', 'trt', ...).
        provider: What actually ran the graph.
        batch: Images per call.
        iters: Timed calls.
        warmup_iters: Untimed calls before timing.
        p50_ms: Median call latency.
        p90_ms: 90th percentile.
        p99_ms: 99th percentile.
        mean_ms: Mean.
        std_ms: Standard deviation.
        min_ms: Fastest call.
        max_ms: Slowest call.
        throughput: Images per second, ``batch / mean``.
        input_shape: (C, H, W) of one image.
    """

    backend: str
    provider: str
    batch: int
    iters: int
    warmup_iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    input_shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def summarize(times_s: np.ndarray, *, backend: str, provider: str, batch: int, warmup_iters: int,
              shape: tuple[int, int, int]) -> LatencyResult:
    """Turn per-call wall times (seconds) into a :class:`LatencyResult` (percentiles by linear interpolation)."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return LatencyResult(
        backend=backend, provider=provider, batch=batch, iters=int(ms.size), warmup_iters=warmup_iters,
        p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=mean, std_ms=float(ms.std()),
        min_ms=float(ms.min()), max_ms=float(ms.max()), throughput=batch * 1e3 / mean if mean > 0 else float("inf"),
        input_shape=shape,
    )


def measure_latency(runtime: Runtime, batch: int = 1, *, warmup: int = 10, iters: int = 100,
                    warmup_seconds: float | None = None, seconds: float | None = None,
                    pixels: np.ndarray | None = None, seed: int = 0) -> LatencyResult:
    """Time ``runtime.run`` on one fixed batch.

    Warm-up runs until both ``warmup`` calls and ``warmup_seconds`` are done (the first calls allocate memory,
    pick kernels and, for onnxruntime's TensorRT provider, build the engine). Timing then runs ``iters`` calls, or,
    when ``seconds`` is given, until that much time has passed (and at least ``iters`` calls if both are set, like
    trtexec's "iterations and duration").

    Args:
        runtime: Any loaded backend.
        batch: Images per call.
        warmup: Minimum untimed calls.
        iters: Timed calls (minimum, when ``seconds`` is also given).
        warmup_seconds: Minimum warm-up time.
        seconds: Minimum timed duration.
        pixels: The batch to run (N, C, H, W); default uniform noise in [0, 1] (latency does not depend on content).
        seed: Seed for the default batch.

    Returns:
        The statistics, with the backend and provider that ran.
    """
    if batch < 1 or warmup < 0 or iters < 1 or (seconds is not None and seconds <= 0):
        raise ConfigError(f"need batch >= 1, warmup >= 0, iters >= 1 and seconds > 0; got batch={batch}, "
                          f"warmup={warmup}, iters={iters}, seconds={seconds}")
    shape = input_shape(runtime.io)
    if pixels is None:
        pixels = np.random.default_rng(seed).random((batch, *shape), dtype=np.float32)
    elif pixels.shape[0] != batch:
        raise ConfigError(f"pixels hold {pixels.shape[0]} images but batch={batch}")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)

    n_warm, t_start = 0, time.perf_counter()
    while n_warm < warmup or (warmup_seconds is not None and time.perf_counter() - t_start < warmup_seconds):
        runtime.run(pixels)
        n_warm += 1
    log.debug("%s: %d warm-up calls in %.2f s", runtime.name, n_warm, time.perf_counter() - t_start)

    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < iters or (seconds is not None and time.perf_counter() - t_start < seconds):
        t0 = time.perf_counter()
        runtime.run(pixels)  # blocks until outputs are on the host
        times.append(time.perf_counter() - t0)
    return summarize(np.asarray(times), backend=runtime.name, provider=runtime.provider, batch=batch,
                     warmup_iters=n_warm, shape=shape)
