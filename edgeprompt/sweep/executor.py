"""Where sweep cells run: one after another here, in local worker processes (--jobs), or as Ray tasks.

An executor is a context manager (``with`` connects to Ray, before the sweep writes anything) whose ``run(fn, cells,
cfg)`` yields ``(cell, record)`` pairs as cells finish; the driver writes each record as it arrives, so an interrupted
sweep resumes from its cell files whichever executor ran it. Plain Ray tasks, not Ray Tune, and how cells find the
data and the feature cache on a cluster: docs/scale-out.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType, TracebackType
from typing import Any, Protocol

from edgeprompt.config import SweepConfig
from edgeprompt.errors import ConfigError, EdgePromptError

Cell = dict[str, Any]
Record = dict[str, Any]
CellFn = Callable[[Cell, SweepConfig], Record]


class Executor(Protocol):
    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def run(self, fn: CellFn, cells: Sequence[Cell], cfg: SweepConfig) -> Iterator[tuple[Cell, Record]]:
        """Run ``fn(cell, cfg)`` for every cell; yield each cell with its record as it finishes."""
        ...


class LocalExecutor:
    """Cells one after another, in order, in this process (the next starts only once the last one is written)."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def run(self, fn: CellFn, cells: Sequence[Cell], cfg: SweepConfig) -> Iterator[tuple[Cell, Record]]:
        for cell in cells:
            yield cell, fn(cell, cfg)


class RayExecutor:
    """Each cell a Ray task with ``num_cpus`` / ``num_gpus`` of its own; records come back as tasks finish.

    Connects on ``__enter__``: to an already initialised Ray (left running afterwards), else ``ray.init(address)``
    (shut down again on exit, which stops a local instance it started or disconnects from a cluster).
    """

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0) -> None:
        from edgeprompt._optional import require

        self.ray: ModuleType = require("ray", "ray", why="--ray runs sweep cells as Ray tasks")
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self._started = False

    def __enter__(self) -> RayExecutor:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address)
            except ConnectionError as e:
                where = self.address or "$RAY_ADDRESS / this host"
                raise ConfigError(f"cannot reach a Ray cluster at {where} ({str(e).splitlines()[0]}): start one "
                                  f"with `ray start --head`, or fix --ray-address") from None
            self._started = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def run(self, fn: CellFn, cells: Sequence[Cell], cfg: SweepConfig) -> Iterator[tuple[Cell, Record]]:
        ray = self.ray
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_cell_task)
        cfg_ref = ray.put(cfg)  # one copy in the object store, not one per task
        pending = {task.remote(fn, cell, cfg_ref): cell for cell in cells}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    yield cell, _get(ray, ref)
        finally:  # an error, Ctrl-C or an abandoned loop: nothing keeps running (finished cells are written)
            _cancel(ray, list(pending))


class ProcessExecutor:
    """Cells in ``jobs`` worker processes of this machine, each with ``cpu_count // jobs`` torch threads.

    On a small CPU two single-threaded cells finish sooner than one two-threaded cell at a time (the tiny matrices of
    prompt tuning scale poorly across threads). Workers are spawned, not forked: the driver has torch loaded.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: Any = None

    def __enter__(self) -> ProcessExecutor:
        import concurrent.futures
        import multiprocessing

        from edgeprompt._threads import cores

        threads = max(1, cores() // self.jobs)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_set_torch_threads, initargs=(threads,))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, fn: CellFn, cells: Sequence[Cell], cfg: SweepConfig) -> Iterator[tuple[Cell, Record]]:
        import concurrent.futures

        futures = {self._pool.submit(fn, cell, cfg): cell for cell in cells}
        try:
            for done in concurrent.futures.as_completed(futures):
                yield futures[done], done.result()  # a cell's EdgePromptError is re-raised here as itself
        finally:
            for f in futures:
                f.cancel()


def _cancel(ray: ModuleType, refs: list[Any], tries: int = 10) -> None:
    """Stop tasks, running or queued. ``force``: a running task ignores the polite cancel until it ends by itself;
    and a task that is being handed to a worker at that moment can miss a cancel, so leftovers are cancelled again."""
    for _ in range(tries):
        if not refs:
            return
        for ref in refs:
            ray.cancel(ref, force=True)
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=1.0)


def _cell_task(fn: CellFn, cell: Cell, cfg: SweepConfig) -> Record:
    """The body of one Ray task: the cell gets the threads and GPUs its task was given, then it runs."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    _set_torch_threads(max(1, math.floor(cpus)))  # Ray's OMP_NUM_THREADS is read once, and only when unset
    if not ray.get_gpu_ids():  # Ray leaves a node's GPUs visible to a task that asked for none: hide them
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # so device=auto trains on the CPU, as --ray-gpus 0 said
    return fn(cell, cfg)


def _set_torch_threads(n: int) -> None:
    from edgeprompt._optional import available

    if available("torch"):
        import torch

        torch.set_num_threads(n)


def _get(ray: ModuleType, ref: Any) -> Record:
    """``ray.get`` that re-raises a cell's own EdgePromptError as itself (one line), not as Ray's traceback."""
    try:
        record: Record = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EdgePromptError):
            raise e.cause from None
        raise
    return record


def make_executor(cfg: SweepConfig) -> Executor:
    """The executor ``cfg`` asks for (settings checked here, before the sweep reads or writes anything)."""
    cfg.validate_executor()
    if cfg.ray:
        return RayExecutor(cfg.ray_address, cfg.ray_cpus, cfg.ray_gpus)
    if cfg.jobs > 1:
        return ProcessExecutor(cfg.jobs)
    return LocalExecutor()
