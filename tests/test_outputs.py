"""Outputs: nothing of the user's is deleted or polluted, nothing half-written stays, and others can read the result.

The data-loss rows of the second bad-input round, run through the library (the CLI's one-line errors for the same
cases are in ``tests/test_errors.py``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgeprompt.errors import ConfigError
from tests.conftest import make_folder


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> dict[str, Path]:
    from edgeprompt.config import TrainConfig, TuneConfig
    from edgeprompt.train.run import tune

    root = tmp_path_factory.mktemp("outputs")
    data = make_folder(root / "data", per_class=3, size=32)
    cfg = TuneConfig(train=str(data), out=str(root / "run"), method="coop", model=tiny_model, pretrained="none",
                     shots=0, views=1, cache_dir=str(root / "cache"), method_options={"n_ctx": 4},
                     train_cfg=TrainConfig(epochs=1, batch_size=4, eval_every=0))
    tune(cfg)
    return {"root": root, "data": data, "run": root / "run", "cache": root / "cache"}


def _export(run: Path, out: Path, overwrite: bool = False) -> dict:
    from edgeprompt.config import ExportConfig
    from edgeprompt.export import export_run

    return export_run(ExportConfig(source=str(run), out=str(out), n_check=2, overwrite=overwrite))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_over_the_runs_training_data_deletes_nothing(tuned: dict[str, Path]) -> None:
    before = _tree(tuned["data"])
    for out in (tuned["data"], tuned["data"] / "bundle", tuned["data"] / "red"):
        with pytest.raises(ConfigError, match="overlaps the run's training data"):
            _export(tuned["run"], out, overwrite=True)
    assert _tree(tuned["data"]) == before


def test_overwrite_replaces_only_an_earlier_output_of_the_same_kind(tuned: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not an edgeprompt bundle"):
        _export(tuned["run"], mine, overwrite=True)
    with pytest.raises(ConfigError, match="not an edgeprompt bundle"):  # a run directory is not a bundle either
        _export(tuned["run"], _copy_run(tuned["run"], tmp_path / "another-run"), overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    bundle = tmp_path / "bundle"
    _export(tuned["run"], bundle)
    _export(tuned["run"], bundle, overwrite=True)  # an earlier bundle is replaced
    (tmp_path / "empty").mkdir()
    _export(tuned["run"], tmp_path / "empty", overwrite=True)  # and so is an empty folder


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_follow_the_umask(tuned: dict[str, Path], tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        bundle = tmp_path / "bundle"
        _export(tuned["run"], bundle)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [bundle, *bundle.iterdir()]}
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    assert modes.pop("bundle") == want_dir and modes.pop("trtexec.sh") == want_dir  # a script: executable
    assert modes and all(m == want_file for m in modes.values()), modes


def test_a_killed_exports_partial_folder_is_cleaned_by_the_next_run(tuned: dict[str, Path], tmp_path: Path) -> None:
    left = tmp_path / ".bundle.k2j4.partial"  # what atomic_dir leaves when its process is SIGKILLed
    left.mkdir()
    (left / "model.onnx").write_bytes(b"half")
    old = tmp_path / ".bundle.old"
    old.mkdir()
    _export(tuned["run"], tmp_path / "bundle")
    assert not left.exists() and not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_overwrite_through_a_symbolic_link_keeps_the_link(tuned: dict[str, Path], tmp_path: Path) -> None:
    real = tmp_path / "store" / "bundle"
    real.parent.mkdir()
    link = tmp_path / "bundle"
    link.symlink_to(real)  # dangling until the first export: its folder exists, so it is accepted
    for _ in range(3):
        _export(tuned["run"], link, overwrite=True)
    assert link.is_symlink() and (real / "manifest.json").is_file()
    assert sorted(p.name for p in real.parent.iterdir()) == ["bundle"]  # no .bundle.old left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "store"]


def test_a_cache_inside_the_data_is_refused_everywhere(tuned: dict[str, Path], tiny_model: str) -> None:
    from edgeprompt.config import ExtractConfig
    from edgeprompt.features.extract import extract
    from edgeprompt.train.run import evaluate

    inside = str(tuned["data"] / "features")
    with pytest.raises(ConfigError, match="--cache-dir"):
        evaluate(tuned["run"], tuned["data"], cache_dir=inside)
    with pytest.raises(ConfigError, match="--cache-dir"):
        extract(ExtractConfig(data=str(tuned["data"]), model=tiny_model, pretrained="none", cache_dir=inside))
    assert not Path(inside).exists()


_HOLD = """
import sys, time
from edgeprompt.fileio import output_lock
try:
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
except Exception as e:
    print("refused:", e, flush=True)
"""


def test_two_processes_racing_for_one_output_one_wins(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(target), "2"], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum("held" in o for o in outs) >= 1 and sum("refused" in o for o in outs) >= 1
    holders = [o for o in outs if "held" in o]
    assert all("released" in o for o in holders)
    assert all("being written by another edgeprompt process (pid" in o for o in outs if "refused" in o)


def test_the_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    import subprocess
    import sys

    from edgeprompt.fileio import lock_path, output_lock

    target = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), "60"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {p.pid}"):
        with output_lock(target):
            pass
    p.kill()  # SIGKILL: no finally, the lock file stays behind with a dead pid in it
    p.wait()
    assert lock_path(target).exists()
    with output_lock(target):  # the OS released the lock with the process
        pass
    assert not lock_path(target).exists()
