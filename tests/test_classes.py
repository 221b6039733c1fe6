"""Changing a tuned run's classes without retuning: rows from the learned context, the rest unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeprompt.errors import ConfigError


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> dict[str, Path]:
    from edgeprompt.config import TrainConfig, TuneConfig
    from edgeprompt.train.run import tune
    from tests.conftest import make_folder

    root = tmp_path_factory.mktemp("classes")
    data = make_folder(root / "data", per_class=3, size=32)
    out = {"root": root, "data": data}
    for name, opts in (("coop", {"n_ctx": 4, "class_specific": False}), ("csc", {"n_ctx": 4, "class_specific": True})):
        tune(TuneConfig(train=str(data), out=str(root / name), method="coop", model=tiny_model, pretrained="none",
                        shots=0, views=1, cache_dir=str(root / "cache"), method_options=opts,
                        train_cfg=TrainConfig(epochs=2, batch_size=4, eval_every=0)))
        out[name] = root / name
    return out


def _rows(run: Path) -> dict[str, torch.Tensor]:
    from edgeprompt.artifact import load_run

    r = load_run(run)
    with torch.no_grad():
        return dict(zip(r.manifest.classnames, r.method.text_features(), strict=True))


def test_removing_then_re_adding_a_class_reproduces_its_row_exactly(runs: dict[str, Path], tmp_path: Path) -> None:
    from edgeprompt.train.classes import change_classes

    before = _rows(runs["coop"])
    fewer = change_classes(runs["coop"], tmp_path / "fewer", remove=["red"])
    assert fewer["classes"] == ["blue", "green"]
    change_classes(tmp_path / "fewer", tmp_path / "again", add=["red", "purple"])
    after = _rows(tmp_path / "again")
    assert list(after) == ["blue", "green", "red", "purple"]
    for name in ("blue", "green", "red"):  # the same context, the same encoder: the same row, up to the float
        # rounding of a batched matmul over another number of classes (bit-equal when encoded alone)
        assert (after[name] - before[name]).abs().max() <= 1e-5, name
    assert not torch.allclose(after["purple"], after["red"])


def test_a_class_specific_run_can_lose_classes_and_keeps_the_others_rows(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from edgeprompt.train.classes import change_classes

    before = _rows(runs["csc"])
    fewer = change_classes(runs["csc"], tmp_path / "fewer", remove=["green"])
    after = _rows(tmp_path / "fewer")
    assert fewer["classes"] == ["blue", "red"] == list(after)
    for name in ("blue", "red"):  # each kept class keeps its own context: the same row
        assert (after[name] - before[name]).abs().max() <= 1e-5, name


def test_what_cannot_change_classes_says_so(runs: dict[str, Path], tmp_path: Path) -> None:
    from edgeprompt.train.classes import change_classes

    with pytest.raises(ConfigError, match="class-specific context"):
        change_classes(runs["csc"], tmp_path / "x", add=["purple"])
    with pytest.raises(ConfigError, match="not a class of this run"):
        change_classes(runs["coop"], tmp_path / "x", remove=["purple"])
    with pytest.raises(ConfigError, match="already a class"):
        change_classes(runs["coop"], tmp_path / "x", add=["red"])
    with pytest.raises(ConfigError, match="nothing to change"):
        change_classes(runs["coop"], tmp_path / "x")
    with pytest.raises(ConfigError, match="overlaps the run's training data"):
        change_classes(runs["coop"], runs["data"] / "x", add=["purple"])
    assert not (tmp_path / "x").exists()


def test_a_changed_run_exports_with_its_new_classes(runs: dict[str, Path], tmp_path: Path) -> None:
    import json

    from edgeprompt.config import ExportConfig
    from edgeprompt.export import export_run
    from edgeprompt.train.classes import change_classes

    change_classes(runs["coop"], tmp_path / "more", add=["purple"])
    export_run(ExportConfig(source=str(tmp_path / "more"), out=str(tmp_path / "bundle"), n_check=2))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["classnames"] == ["blue", "green", "red", "purple"]
