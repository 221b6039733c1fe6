"""Tuning end to end on a tiny random CLIP: frozen encoders, run directory, resume, cache reuse, registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeprompt import api
from edgeprompt.backbone import create_backbone, weights_fingerprint
from edgeprompt.config import TrainConfig, TuneConfig
from edgeprompt.errors import ConfigError
from edgeprompt.methods import create_method, list_methods


def _cfg(tiny_model: str, data: Path, out: Path, cache: Path, **kw) -> TuneConfig:  # noqa: ANN003
    train = kw.pop("train_cfg", TrainConfig(epochs=3, eval_every=1, batch_size=4))
    return TuneConfig(train=str(data), out=str(out), model=tiny_model, pretrained="none", shots=4, views=2,
                      cache_dir=str(cache), train_cfg=train, **kw)


def test_registry_lists_creates_and_suggests(tiny_backbone) -> None:  # noqa: ANN001
    assert {"zeroshot", "coop", "dspt"} <= set(list_methods())
    for name in ("zeroshot", "coop", "dspt"):
        create_method(name, tiny_backbone, ["a", "b"])
    with pytest.raises(ConfigError, match="Did you mean 'dspt'"):
        create_method("dsp", tiny_backbone, ["a", "b"])
    with pytest.raises(ConfigError, match="no option 'n_cxt'.*'n_ctx'"):
        create_method("coop", tiny_backbone, ["a", "b"], n_cxt=4)
    with pytest.raises(ConfigError, match="double-softmax"):
        create_method("dspt", tiny_backbone, ["a", "b"], loss="ce")


@pytest.mark.parametrize("method,opts", [("coop", {"loss": "ce"}), ("coop", {"loss": "gce"}),
                                         ("coop", {"loss": "mae"}), ("dspt", {})])
def test_encoders_bit_identical_after_tuning(tiny_model, image_folder, cache_dir, tmp_path, method, opts) -> None:  # noqa: ANN001
    bb = create_backbone(tiny_model, "none")  # the same cached instance api.tune uses
    before = weights_fingerprint(bb.model)
    res = api.tune(_cfg(tiny_model, image_folder, tmp_path / "run", cache_dir, method=method, method_options=opts,
                        noise="sym:0.5"))
    assert weights_fingerprint(bb.model) == before
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert res["epochs"] == 3 and res["n_flipped"] == 6
    # the prompt did change
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "run" / "state.safetensors"))
    assert list(state) == ["prompt.ctx"]
    fresh = create_method(method, bb, ["blue", "green", "red"], **opts)
    assert not torch.equal(state["prompt.ctx"], fresh.prompt.ctx.detach())


def test_run_directory_contract(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    api.tune(_cfg(tiny_model, image_folder, out, cache_dir, method="dspt", val=str(image_folder)))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "manifest.json", "metrics.jsonl", "state.safetensors", "train_split.json"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "run" and man["method"] == "dspt" and man["classnames"] == ["blue", "green", "red"]
    assert len(man["backbone"]["weights_sha256"]) == 64 and man["preprocess"]["image_size"] == 32
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all("val_acc" in r for r in records)
    assert records[0]["lr"] == pytest.approx(1e-5)  # constant warm-up epoch
    assert not (tmp_path / "run.partial").exists()
    with pytest.raises(ConfigError, match="already exists"):
        api.tune(_cfg(tiny_model, image_folder, out, cache_dir))
    # the run reloads strictly and evaluates
    rep = api.evaluate(out, image_folder, cache_dir=str(cache_dir))
    assert rep["n"] == 18 and len(rep["confusion"]) == 3
    rep_train = api.evaluate(out, on_train=True, cache_dir=str(cache_dir))
    assert rep_train["noisy"]["n_clean"] == 12


def test_second_tune_reuses_the_feature_cache(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    first = api.tune(_cfg(tiny_model, image_folder, tmp_path / "a", cache_dir, method="coop"))
    second = api.tune(_cfg(tiny_model, image_folder, tmp_path / "b", cache_dir, method="dspt", noise="sym:0.5"))
    assert first["cache"]["misses"] > 0
    # each image's views and centre are read once per tune (the choice of context shares the centre read)
    assert first["cache"]["hits"] == 0
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] == first["cache"]["misses"]


def test_interrupted_run_resumes_to_the_same_result(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    from edgeprompt.progress import NullReporter

    class StopAtEpoch2(NullReporter):
        def task(self, description: str):  # noqa: ANN202
            def tick(done: int, total: int, **_: object) -> None:
                if description.startswith("tuning") and done == 2:
                    raise KeyboardInterrupt

            return tick

    train = TrainConfig(epochs=4, eval_every=0, batch_size=4)
    ref = tmp_path / "ref"
    api.tune(_cfg(tiny_model, image_folder, ref, cache_dir, method="coop", train_cfg=train))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        api.tune(_cfg(tiny_model, image_folder, out, cache_dir, method="coop", train_cfg=train), StopAtEpoch2())
    assert not out.exists() and (tmp_path / "run.partial" / "checkpoint.pt").is_file()
    api.tune(_cfg(tiny_model, image_folder, out, cache_dir, method="coop", train_cfg=train))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]
    assert torch.equal(load_file(str(out / "state.safetensors"))["prompt.ctx"],
                       load_file(str(ref / "state.safetensors"))["prompt.ctx"])


def test_zeroshot_has_no_state_and_reloads(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "zs"
    res = api.tune(_cfg(tiny_model, image_folder, out, cache_dir, method="zeroshot",
                        method_options={"ensemble": True}))
    assert res["epochs"] == 0 and not (out / "state.safetensors").exists()
    assert api.evaluate(out, image_folder, cache_dir=str(cache_dir))["n"] == 18


def test_a_tune_that_learned_nothing_says_so() -> None:
    from edgeprompt.train.run import learning_verdict

    assert "stayed at chance" in learning_verdict(0.10, 0.11, 10)  # digits named zero..nine on the shapes model
    assert "--csc" in learning_verdict(0.10, 0.11, 10)
    assert "learned nothing over its start: 56 % -> 56 %" in learning_verdict(0.556, 0.557, 20)
    assert learning_verdict(0.556, 0.70, 20) is None  # it learned
    assert learning_verdict(0.97, 0.97, 20) is None  # nothing left to learn
    assert learning_verdict(0.50, 0.51, 2) is not None and "chance" not in learning_verdict(0.50, 0.51, 2)
    # cross-entropy at 75 % noise moves the prompt (a third of its predictions change) without fitting the labels:
    # a larger learning rate is the wrong advice there
    moved = learning_verdict(0.136, 0.14, 20, moved=0.3)
    assert "changed 30 % of its predictions" in moved and "audit" in moved and "--method nlprompt" in moved
    assert "--lr" not in moved
    robust = learning_verdict(0.136, 0.14, 20, moved=0.3, plain_ce=False)  # VisPrompt at 75 %: +9.5 on clean test
    assert "--method nlprompt" not in robust and "edgeprompt eval" in robust
    assert "--lr" in learning_verdict(0.556, 0.557, 20, moved=0.02)  # did not move: the rate


def test_tune_reports_a_prompt_that_did_not_move(tiny_model, image_folder, cache_dir, tmp_path, caplog) -> None:  # noqa: ANN001
    import logging

    cfg = _cfg(tiny_model, image_folder, tmp_path / "run", cache_dir, method="coop",
               train_cfg=TrainConfig(epochs=1, batch_size=4, lr=1e-9, warmup_epochs=0))
    with caplog.at_level(logging.WARNING, logger="edgeprompt"):
        res = api.tune(cfg)
    assert res["warning"] and ("stayed at chance" in res["warning"] or "learned nothing" in res["warning"])
    assert res["warning"] in caplog.text


def test_unknown_names_are_the_classes_zero_shot_rarely_predicts() -> None:
    import numpy as np

    from edgeprompt.train.run import AUTO_CSC_SHARE, context_choice, unknown_names

    # 4 classes, 40 images: a fair share is 10; class 3 predicted twice (< 2.5), class 2 never
    pred = np.array([0] * 20 + [1] * 18 + [3] * 2)
    assert unknown_names(pred, 4) == [2, 3]
    assert len(unknown_names(pred, 4)) >= AUTO_CSC_SHARE * 4
    line = context_choice([2, 3], ("a", "b", "c", "d"), True)
    assert line.startswith("2 of 4 class names look unknown") and "'c', 'd'" in line and "--shared-ctx" in line
    assert unknown_names(np.arange(40) % 4, 4) == []
