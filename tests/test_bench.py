"""bench: every available backend x batch, accuracy and agreement, unavailable backends with a reason."""

from __future__ import annotations

import json

from edgeprompt import api
from edgeprompt.config import BenchConfig, ExportConfig, TrainConfig, TuneConfig


def test_tune_export_bench_predict(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    api.tune(TuneConfig(train=str(image_folder), out=str(run), model=tiny_model, pretrained="none", shots=4,
                        views=2, cache_dir=str(cache_dir), train_cfg=TrainConfig(epochs=2, batch_size=4)))
    bundle = tmp_path / "bundle"
    info = api.export(ExportConfig(source=str(run), out=str(bundle)))
    assert info["parity"]["passed"] and info["parity"]["top1_agreement"] == 1.0
    result = api.bench(BenchConfig(bundle=str(bundle), data=str(image_folder), batches=(1, 2), warmup=1, iters=3,
                                   out=str(tmp_path / "b")))
    ran = {r["backend"] for r in result["rows"]}
    assert {"torch", "ort-cpu"} <= ran
    # what this machine cannot run is reported with its reason, whatever the machine (no TensorRT here; a bundle
    # without model.engine on a TensorRT machine), and none of it ran
    from edgeprompt.runtime import available_backends

    lacking = {b for b, why in available_backends().items() if why} | {"trt"}  # no engine in this bundle either way
    assert set(result["unavailable"]) == lacking and not ran & lacking
    assert all(isinstance(why, str) and len(why) > 10 for why in result["unavailable"].values())
    assert all(r["p50_ms"] > 0 and r["img_per_s"] > 0 and r["e2e_p50_ms"] > 0 for r in result["rows"])
    ort = [r for r in result["rows"] if r["backend"] == "ort-cpu"]
    assert [r["batch"] for r in ort] == [1, 2] and ort[0]["agreement"] == 1.0  # same predictions as torch
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "| backend" in md and all(f"`{b}` unavailable" in md for b in lacking)
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["n_images"] == 18
    # predict agrees with bench's accuracy numbers: same runtime, same preprocessing
    pred = api.predict(bundle, [image_folder], top_k=1, backend="ort-cpu")
    hits = [p["top"][0]["label"] == p["image"].split("/")[-2] for p in pred["predictions"]]
    assert abs(sum(hits) / len(hits) - ort[0]["top1"]) < 1e-9
