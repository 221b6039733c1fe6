"""The noise sweep: cells, resume without redoing finished cells, tables and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeprompt.errors import ConfigError
from edgeprompt.sweep import run as sw


def test_noise_groups_and_cells() -> None:
    assert sw.parse_noise_groups(["sym:0,0.5", "asym:0.25"]) == [("sym", 0.0), ("sym", 0.5), ("asym", 0.25)]
    with pytest.raises(ConfigError, match="expected sym:R1,R2"):
        sw.parse_noise_groups(["gauss:0.1"])
    cfg = sw.SweepConfig(train="t", test="t", out="o", methods=("zeroshot", "coop", "dspt"), losses=("ce", "mae"),
                         noise=("sym:0,0.5",), seeds=2)
    names = [c["name"] for c in sw.cells(cfg)]
    assert len(names) == len(set(names)) == 2 + 3 * 2 * 2  # zero-shot once per seed; 3 rows x 2 rates x 2 seeds
    assert "coop-mae__sym-0.5__s2" in names


def test_cell_keys_follow_method_defaults(monkeypatch) -> None:  # noqa: ANN001
    """A default that changes between two runs of a sweep changes the key of exactly the cells it applies to, so a
    resume recomputes them instead of reporting cells tuned under the old default."""
    import dataclasses

    from edgeprompt import config

    cfg = sw.SweepConfig(train="t", test="t", out="o", methods=("coop", "nlprompt"), noise=("sym:0.5",), seeds=1)
    before = {c["name"]: c["key"] for c in sw.cells(cfg)}
    nl = next(c for c in sw.cells(cfg) if c["method"] == "nlprompt")
    assert nl["settings"]["method_config"]["ot_floor"] == 0.0  # the whole resolved config, not only what was given
    proto = config.PROTOCOLS["default"]
    monkeypatch.setitem(config.PROTOCOLS, "default", dataclasses.replace(proto, method_options=(("ot_floor", 0.5),)))
    after = {c["name"]: c["key"] for c in sw.cells(cfg)}
    assert after["coop-ce__sym-0.5__s1"] == before["coop-ce__sym-0.5__s1"]  # CoOp has no ot_floor
    assert after["nlprompt__sym-0.5__s1"] != before["nlprompt__sym-0.5__s1"]


def test_sweep_runs_resumes_and_reports(tiny_model, image_folder, cache_dir, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from edgeprompt import api

    cfg = sw.SweepConfig(train=str(image_folder), test=str(image_folder), out=str(tmp_path / "sweep"),
                         methods=("zeroshot", "coop", "dspt"), noise=("sym:0,0.5",), shots=4, seeds=2,
                         model=tiny_model, pretrained="none", epochs=2, views=2, cache_dir=str(cache_dir))
    from edgeprompt.progress import NullReporter

    class Lines(NullReporter):
        said: list[str] = []

        def message(self, text: str) -> None:
            self.said.append(text)

    summary = api.sweep(cfg, Lines())
    out = tmp_path / "sweep"
    assert summary["cells"] == 10 and summary["zeroshot"] is not None
    # the cost is said before the work and estimated from the first tuned cell
    assert Lines.said[0].startswith("sweep: 10 cells to run (0 already done), 2 epochs each")
    assert any(line.startswith("sweep: ") and " min for the other " in line for line in Lines.said[1:])
    assert {(t["row"], t["rate"]) for t in summary["table"]} == {("coop-ce", 0.0), ("coop-ce", 0.5),
                                                                  ("dspt", 0.0), ("dspt", 0.5)}
    md = (out / "results.md").read_text()
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert head == ["method", "sym 0%", "sym 50%"] and "±" in md
    assert (out / "results.csv").read_text().count("\n") == 6
    assert (out / "accuracy_vs_noise_sym.png").stat().st_size > 1000
    # the summary is its cells: mean / std over seeds and gain kept against clean CoOp-CE, recomputed here
    import statistics

    cells = json.loads((out / "results.json").read_text())["cells"]
    top = {(c["row"], c["rate"], c["seed"]): c["top1"] for c in cells}
    zs = statistics.fmean(c["top1"] for c in cells if c["method"] == "zeroshot")
    clean = statistics.fmean(top[("coop-ce", 0.0, s)] for s in (1, 2))
    for t in summary["table"]:
        vals = [top[(t["row"], t["rate"], s)] for s in (1, 2)]
        assert t["mean"] == pytest.approx(statistics.fmean(vals)) and t["std"] == pytest.approx(statistics.stdev(vals))
        want = (t["mean"] - zs) / (clean - zs) if clean - zs > 1e-9 else None
        assert t["gain_kept"] == (pytest.approx(want) if want is not None else None)
    if clean - zs > 1e-9:
        assert summary["table"][0]["row"] == "coop-ce" and summary["table"][0]["gain_kept"] == pytest.approx(1.0)
        assert "Gain kept" in md
    # resume: only the missing cell is tuned again
    (cell,) = (out / "cells").glob("dspt__sym-0.5__s2.*.json")
    cell.unlink()
    calls = []
    real = sw.pipeline.tune
    monkeypatch.setattr(sw.pipeline, "tune", lambda c, r=None: calls.append(c.out) or real(c, r))
    again = api.sweep(cfg)
    assert [Path(c).name.rsplit(".", 1)[0] for c in calls] == ["dspt__sym-0.5__s2"]
    assert json.loads((out / "results.json").read_text())["summary"]["cells"] == again["cells"] == 10


def test_local_worker_processes_give_the_serial_results(tiny_model, image_folder, cache_dir, tmp_path,  # noqa: ANN001
                                                         monkeypatch) -> None:  # noqa: ANN001
    """--jobs 2: the same cells, keys and top-1 as one after another (cells are independent and seeded)."""
    from edgeprompt.errors import ConfigError
    from tests.conftest import TINY_CFG

    cfg_file = tmp_path / f"{tiny_model}.json"  # spawned workers learn the test's model config from the environment
    cfg_file.write_text(json.dumps(TINY_CFG))
    monkeypatch.setenv("EDGEPROMPT_MODEL_CONFIGS", str(cfg_file))

    base = dict(train=str(image_folder), test=str(image_folder), methods=("zeroshot", "coop"), noise=("sym:0.5",),
                shots=2, seeds=1, model=tiny_model, pretrained="none", epochs=1, views=1, cache_dir=str(cache_dir),
                method_options={"coop": {"n_ctx": 4}})
    serial = sw.run_sweep(sw.SweepConfig(out=str(tmp_path / "a"), **base))
    parallel = sw.run_sweep(sw.SweepConfig(out=str(tmp_path / "b"), jobs=2, **base))
    assert serial["table"] == parallel["table"] and serial["zeroshot"] == parallel["zeroshot"]
    with pytest.raises(ConfigError, match="choose one"):
        sw.run_sweep(sw.SweepConfig(out=str(tmp_path / "c"), jobs=2, ray=True, **base))
