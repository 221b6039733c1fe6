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


def _top1(world: Path, method: str, noise: str, epochs: int | None = None, seed: int = 1,
          csc: bool | None = False) -> float:
    """Clean test top-1 of a run; ``csc`` None leaves the context to the tune's own choice."""
    run = world / "runs" / f"{method}-{noise}-{seed}-{csc}"
    api.tune(TuneConfig(train=str(world / "data" / "train"), out=str(run), method=method, shots=16, noise=noise,
                        cache_dir=str(world / "cache"), overwrite=True,
                        method_options={} if csc is None or method == "zeroshot" else {"class_specific": csc},
                        train_cfg=TrainConfig(epochs=epochs, seed=seed, eval_every=0)))
    return api.evaluate(run, world / "data" / "test", cache_dir=str(world / "cache"))["top1"]


def test_zero_shot_is_a_prior_not_a_solved_task(world: Path) -> None:
    assert 0.45 <= _top1(world, "zeroshot", "none", 0) <= 0.60  # world v3's bar (docs/world.md)


def test_headline_noise_hurts_cross_entropy_and_nlprompt_keeps_the_gain(world: Path) -> None:
    """The product's claim, small and in the default run: at 50 % symmetric noise cross-entropy CoOp falls below
    zero-shot, NLPrompt (class-specific context: the world's names are mostly unknown) keeps most of clean tuning's
    gain. Measured on data seed 0, tuning seed 1 (docs/world.md): zero-shot 53.2, CoOp-CE 27.5, class-specific
    CoOp-CE 74-ish, NLPrompt --csc 90+; the thresholds sit well inside those, so a broken loss or split fails them."""
    zs = _top1(world, "zeroshot", "none", 0)
    assert _top1(world, "coop", "sym:0.5") < zs - 0.15  # CE memorises the flips
    ce_csc = _top1(world, "coop", "sym:0.5", csc=True)
    robust = _top1(world, "nlprompt", "sym:0.5", csc=True)
    assert robust > zs + 0.25 and robust > ce_csc + 0.05


@pytest.mark.slow
def test_quality_bar_tuning_gains_with_class_specific_context(world: Path) -> None:
    zs = _top1(world, "zeroshot", "none", 0)
    # default flags; measured on seed 1 (docs/world.md): zero-shot 53.2, CoOp 55.1, class-specific CoOp 96.6.
    assert _top1(world, "coop", "none", csc=True) > zs + 0.3  # names the model never saw are learned
    assert _top1(world, "coop", "none") >= zs - 0.03  # a shared context keeps the prior (it cannot rename)


def test_names_the_model_does_not_know_get_class_specific_context_by_default(world: Path) -> None:
    """Without --csc or --shared-ctx, a tune on the world (eleven names the model never saw) chooses class-specific
    context and says so; --shared-ctx keeps one context."""
    import json

    common = dict(train=str(world / "data" / "train"), method="coop", shots=16, cache_dir=str(world / "cache"),
                  overwrite=True, train_cfg=TrainConfig(epochs=1, seed=1, eval_every=0))
    res = api.tune(TuneConfig(out=str(world / "runs" / "auto"), **common))  # type: ignore[arg-type]
    # 8 of the 11 never-seen names on data seed 0 (the other three absorb images of their own): the rule needs 5
    assert int(res["context"].split(" of 20")[0]) >= 5 and "class-specific" in res["context"]
    config = json.loads((world / "runs" / "auto" / "config.json").read_text())
    assert config["method_options"]["class_specific"] is True
    shared = api.tune(TuneConfig(out=str(world / "runs" / "shared"), method_options={"class_specific": False},
                                 **common))  # type: ignore[arg-type]
    assert shared["context"] is None
