"""The noise sweep on Ray: the same cells, files and top-1 as the local loop, resumable, one-line errors.

The Ray tests start one local Ray (2 CPUs) for the module and use the shipped ``edgeprompt-tiny`` model, which Ray's
worker processes find as package data (the conftest's tiny config is registered in this process only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeprompt.config import SweepConfig
from edgeprompt.errors import ConfigError, MissingDependencyError
from edgeprompt.sweep import executor as ex


def _cells(out: Path) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads((out / "results.json").read_text())["cells"]}


def test_executor_settings_are_checked_where_they_enter() -> None:
    base = SweepConfig(train="t", test="t", out="o")
    assert isinstance(ex.make_executor(base), ex.LocalExecutor)
    for bad, needle in ((dict(ray_cpus=2.0), "add --ray"), (dict(ray_address="auto"), "add --ray"),
                        (dict(ray=True, ray_cpus=1.5), "--ray-cpus"), (dict(ray=True, ray_cpus=0.0), "--ray-cpus"),
                        (dict(ray=True, ray_gpus=-1.0), "--ray-gpus"), (dict(ray=True, ray_address=" "), "empty")):
        with pytest.raises(ConfigError, match=needle):
            ex.make_executor(dataclasses.replace(base, **bad))
    SweepConfig(train="t", test="t", out="o", ray=True, ray_cpus=0.5, ray_gpus=0.25).validate_executor()
    SweepConfig(train="t", test="t", out="o", ray=True, ray_cpus=4, ray_gpus=2).validate_executor()


def test_missing_ray_names_the_extra_before_anything_is_written(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from edgeprompt.sweep.run import run_sweep

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    data = tmp_path / "data"
    data.mkdir()
    cfg = SweepConfig(train=str(data), test=str(data), out=str(tmp_path / "sweep"), methods=("zeroshot",), ray=True)
    with pytest.raises(MissingDependencyError, match=r'edgeprompt\[ray\]'):
        run_sweep(cfg)
    assert not (tmp_path / "sweep").exists()


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_gives_the_local_results_and_resumes(local_ray: Any, image_folder: Path, cache_dir: Path,
                                                       tmp_path: Path) -> None:
    import torch

    from edgeprompt import api

    local_cfg = SweepConfig(train=str(image_folder), test=str(image_folder), out=str(tmp_path / "local"),
                            methods=("zeroshot", "dspt"), noise=("sym:0,0.5",), shots=4, seeds=1,
                            model="edgeprompt-tiny", pretrained="shapes", epochs=2, views=2,
                            cache_dir=str(cache_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many as a Ray task with --ray-cpus 1 gets: the same float sums
    try:
        local = api.sweep(local_cfg)
    finally:
        torch.set_num_threads(threads)
    ray_cfg = dataclasses.replace(local_cfg, out=str(tmp_path / "ray"), ray=True, ray_cpus=1.0)
    on_ray = api.sweep(ray_cfg)

    a, b = _cells(tmp_path / "local"), _cells(tmp_path / "ray")
    assert list(a) == list(b) == ["zeroshot__s1", "dspt__sym-0__s1", "dspt__sym-0.5__s1"]  # same cells, same order
    assert {n: c["top1"] for n, c in a.items()} == {n: c["top1"] for n, c in b.items()}
    assert {n: c["key"] for n, c in a.items()} == {n: c["key"] for n, c in b.items()}  # the executor is no setting
    assert all(c["ran_on"]["pid"] == os.getpid() for c in a.values())
    assert all(c["ran_on"]["pid"] != os.getpid() for c in b.values())  # they really ran in Ray's workers
    assert local["table"] == on_ray["table"] and local["zeroshot"] == on_ray["zeroshot"]
    files = sorted(p.name for p in (tmp_path / "ray" / "cells").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "local" / "cells").iterdir())
    assert ray_cfg.ray and json.loads((tmp_path / "ray" / "sweep.json").read_text())["ray"] is True

    # resume: only the missing cell runs again; the others are read back untouched
    cells_dir = tmp_path / "ray" / "cells"
    (gone,) = cells_dir.glob("dspt__sym-0.5__s1.*.json")
    kept = {p: p.stat().st_mtime_ns for p in cells_dir.iterdir() if p != gone}
    gone.unlink()
    # as a cell force-killed on another node leaves it: the run directory's lock names a host that is not this one
    run_lock = tmp_path / "ray" / "runs" / f".{gone.name.removesuffix('.json')}.lock"
    run_lock.write_text(json.dumps({"pid": 1, "host": "another-node"}))
    again = api.sweep(ray_cfg)
    assert gone.is_file() and {p: p.stat().st_mtime_ns for p in kept} == kept
    assert again["table"] == on_ray["table"]
    assert local_ray.is_initialized()  # a Ray the caller started is left running


@pytest.mark.parametrize(("cpus", "threads"), [(0.5, 1), (2.0, 2)])
def test_a_cell_task_gets_the_threads_and_gpus_it_asked_for(local_ray: Any, cpus: float, threads: int) -> None:
    import torch

    def probe(cell: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:  # pickled by value into the worker
        return {"threads": torch.get_num_threads(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "pid": os.getpid()}

    cfg = SweepConfig(train="t", test="t", out="o", ray=True, ray_cpus=cpus)
    with ex.make_executor(cfg) as executor:
        ((cell, record),) = list(executor.run(probe, [{"name": "a"}], cfg))
    assert cell == {"name": "a"} and record["pid"] != os.getpid()
    assert record["threads"] == threads and record["cuda"] == ""  # --ray-gpus 0: no GPU, whatever the node has


def test_an_abandoned_run_cancels_the_cells_still_running(local_ray: Any) -> None:
    """Ctrl-C or an error in the driver's loop closes the generator: queued and running cells are cancelled."""
    import time

    def probe(cell: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:
        if cell["name"] != "fast":
            time.sleep(600)  # holds its CPU until cancelled
        return {"name": cell["name"]}

    cfg = SweepConfig(train="t", test="t", out="o", ray=True, ray_cpus=1.0)
    with ex.make_executor(cfg) as executor:
        run = executor.run(probe, [{"name": "fast"}, {"name": "slow1"}, {"name": "slow2"}], cfg)
        assert next(run)[1] == {"name": "fast"}
        run.close()  # what a KeyboardInterrupt in the sweep's loop does to it
    # both CPUs of the local Ray are free again: this task could not start while a slow cell still ran
    both = local_ray.remote(num_cpus=2)(lambda: "ran")
    assert local_ray.get(both.remote(), timeout=120) == "ran"


def test_a_failing_cell_on_ray_is_the_cell_s_own_one_line_error(local_ray: Any, image_folder: Path,
                                                                 cache_dir: Path, tmp_path: Path) -> None:
    from edgeprompt import api

    cfg = SweepConfig(train=str(image_folder), test=str(image_folder), out=str(tmp_path / "sweep"),
                      methods=("zeroshot",), seeds=1, model="edgeprompt-tinyy", pretrained="none",
                      cache_dir=str(cache_dir), ray=True)
    with pytest.raises(ConfigError, match="Did you mean 'edgeprompt-tiny'") as info:
        api.sweep(cfg)
    assert type(info.value) is ConfigError and "Traceback" not in str(info.value)  # not Ray's RayTaskError
    assert list((tmp_path / "sweep" / "cells").iterdir()) == []


def test_cli_sweep_on_ray_and_its_option_errors(local_ray: Any, image_folder: Path, cache_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import run_cli

    args = ["sweep", str(image_folder), "--test", str(image_folder), "--out", str(tmp_path / "sweep"), "--methods",
            "zeroshot", "--seeds", "1", "--model", "edgeprompt-tiny", "--pretrained", "shapes", "--cache-dir",
            str(cache_dir)]
    for extra, needle in ((["--ray", "--ray-cpus", "1.5"], "--ray-cpus must be"), (["--ray-gpus", "1"], "add --ray")):
        code, out, err = run_cli([*args, *extra, "--json"], capsys)
        assert code == 2 and err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1
        assert json.loads(out)["kind"] == "config" and not (tmp_path / "sweep").exists()
    code, out, err = run_cli([*args, "--ray", "--ray-cpus", "0.5", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["cells"] == 1
    (cell,) = _cells(tmp_path / "sweep").values()
    assert cell["ran_on"]["pid"] != os.getpid()
