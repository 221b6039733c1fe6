"""The shipped tiny CLIP is a real, imperfect prior on the downstream world (fast check; the full bar, with CoOp,
is benchmarks/world_quality.py and the slow test below)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeprompt import api
from edgeprompt.config import TrainConfig, TuneConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    api.data_shapes(out / "data", task="shape", per_class=16, seed=0, overwrite=True)
    return out


def _top1(world: Path, method: str, noise: str, epochs: int, seed: int = 1) -> float:
    run = world / "runs" / f"{method}-{noise}-{seed}"
    api.tune(TuneConfig(train=str(world / "data" / "train"), out=str(run), method=method, shots=16, noise=noise,
                        cache_dir=str(world / "cache"), overwrite=True,
                        train_cfg=TrainConfig(epochs=epochs, seed=seed, eval_every=0)))
    return api.evaluate(run, world / "data" / "test", cache_dir=str(world / "cache"))["top1"]


def test_zero_shot_is_a_prior_not_a_solved_task(world: Path) -> None:
    assert 0.40 <= _top1(world, "zeroshot", "none", 0) <= 0.85


@pytest.mark.slow
def test_quality_bar_coop_gains_and_noise_hurts(world: Path) -> None:
    zs = _top1(world, "zeroshot", "none", 0)
    clean = _top1(world, "coop", "none", 200)
    noisy = _top1(world, "coop", "sym:0.75", 200)
    assert clean >= zs + 0.10 and noisy <= clean - 0.10
    # DSPT's gradient suppression keeps it near the zero-shot prior at 50 % noise; CoOp's CE memorises the flips
    assert _top1(world, "dspt", "sym:0.5", 200) > _top1(world, "coop", "sym:0.5", 200) + 0.05
