"""NLPrompt: the per-epoch OT purification drives CE on the clean part and MAE on the rest; inference is CoOp's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeprompt.errors import ConfigError
from edgeprompt.methods import FeatureBatch, create_method
from edgeprompt.methods.ot import class_floor, ot_split
from edgeprompt.train.trainer import TrainSet

CLASSES = ["red", "green", "blue"]


def _data(backbone, n: int = 9) -> tuple[TrainSet, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    torch.manual_seed(0)
    pooled = torch.randn(n, backbone.embed_dim)
    true = torch.arange(n) % 3
    given = true.clone()
    given[:3] = (given[:3] + 1) % 3  # three flipped labels
    return TrainSet(pooled[:, None], given, None, true, pooled, None), true, given


def test_epoch_split_is_the_global_ot_of_the_current_prompt(tiny_backbone) -> None:  # noqa: ANN001
    m = create_method("nlprompt", tiny_backbone, CLASSES, ot_scorer="model")  # the paper's split
    data, true, given = _data(tiny_backbone)
    metrics = m.epoch_start({"data": data, "device": torch.device("cpu"), "epoch": 0})
    m.eval()
    with torch.no_grad():
        logits = m(FeatureBatch(data.eval_pooled))
    raw, _, _ = ot_split(logits.log_softmax(-1), given)
    assert torch.equal(m._clean, raw)  # a direct OT solve: the paper's split, no floor by default
    truly = true == given
    kept = int(m._clean.sum())
    assert metrics["ot_clean_frac"] == pytest.approx(kept / len(given))
    assert metrics["ot_precision"] == pytest.approx(int((m._clean & truly).sum()) / kept if kept else 0.0)
    floored = create_method("nlprompt", tiny_backbone, CLASSES, ot_floor=0.5, ot_scorer="model")  # floored
    floored.load_state_dict(m.state_dict())
    fm = floored.epoch_start({"data": data, "device": torch.device("cpu"), "epoch": 0})
    assert torch.equal(floored._clean, class_floor(raw, logits.log_softmax(-1), given, 0.5))
    assert fm["ot_floor_added"] == pytest.approx((int(floored._clean.sum()) - int(raw.sum())) / len(given))


def test_loss_is_ce_on_clean_and_mae_on_the_rest(tiny_backbone) -> None:  # noqa: ANN001
    m = create_method("nlprompt", tiny_backbone, CLASSES)
    data, _, given = _data(tiny_backbone)
    m._clean = torch.tensor([True, False, True, False, True, True, False, True, True])
    batch = FeatureBatch(data.eval_pooled, None, torch.arange(9))
    logits = m(batch)
    p_y = logits.softmax(-1).gather(1, given[:, None]).squeeze(1)
    expected = torch.where(m._clean, -p_y.log(), 1 - p_y).mean()
    assert torch.allclose(m.loss(logits, given, batch)["loss"], expected, atol=1e-6)
    # before the first split (warm-up), every sample gets CE
    m2 = create_method("nlprompt", tiny_backbone, CLASSES, ot_warmup=2)
    assert m2.epoch_start({"data": data, "epoch": 1}) == {} and m2._clean is None
    assert torch.allclose(m2.loss(logits, given, batch)["loss"], -p_y.log().mean(), atol=1e-6)


def test_options_are_checked(tiny_backbone) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="CE and the rest with MAE"):
        create_method("nlprompt", tiny_backbone, CLASSES, loss="gce")
    with pytest.raises(ConfigError, match="ot_floor"):
        create_method("nlprompt", tiny_backbone, CLASSES, ot_floor=1.5)
    with pytest.raises(ConfigError, match="ot_views"):
        create_method("nlprompt", tiny_backbone, CLASSES, ot_views="all")


def test_tune_export_and_predict(tiny_model: str, image_folder: Path, cache_dir: Path, tmp_path: Path) -> None:
    import json

    from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
    from edgeprompt.export import export_run
    from edgeprompt.train.run import evaluate, tune

    run = tmp_path / "run"
    tune(TuneConfig(train=str(image_folder), out=str(run), method="nlprompt", model=tiny_model, pretrained="none",
                    shots=4, views=2, noise="sym:0.5", cache_dir=str(cache_dir), method_options={"n_ctx": 4},
                    train_cfg=TrainConfig(epochs=3, batch_size=4, eval_every=0)))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all("ot_precision" in r and 0 <= r["ot_clean_frac"] <= 1 for r in records)
    torch_top1 = evaluate(run, image_folder, cache_dir=str(cache_dir))["top1"]
    info = export_run(ExportConfig(source=str(run), out=str(tmp_path / "bundle"), n_check=4))
    assert info["graph"] == "folded"  # constant text features: the prompt costs nothing on the device
    assert 0 <= torch_top1 <= 1
