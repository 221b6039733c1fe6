"""Tune -> export -> predict on the real CLIP architectures (ViT-B-16, RN50), offline, with the parity gate.

Weights are random (no hub here), saved with ``torch.save(model.state_dict())`` to a local checkpoint file and loaded
back through ``--pretrained /path/to/file.pt``, the path a user without network takes. Per architecture:

1. a small labeled folder of synthetic images (3 classes);
2. ``edgeprompt.api.tune`` with CoOp (4 context vectors, 1 epoch);
3. ``export_run`` to an FP32 bundle and an FP16 bundle (each gated: torch vs onnxruntime on the run's images);
4. ``load_bundle(..., 'ort-cpu')`` and ``predict`` on the images (no torch in that path), compared with torch.

Takes minutes on a 2-core CPU; not part of CI.

    OMP_NUM_THREADS=2 python benchmarks/export_real_arch.py [--archs ViT-B-16,RN50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def make_images(root: Path, per_class: int = 4, size: int = 256, seed: int = 0) -> Path:
    """root/<colour>/<n>.png: a coloured square on a noisy grey background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(90, 160, (size, size + 32 * i, 3), dtype=np.uint8)  # varied aspect ratios
            x, y = rng.integers(0, size // 2, 2)
            s = int(rng.integers(size // 4, size // 2))
            arr[y:y + s, x:x + s] = rgb
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


def run_arch(arch: str, work: Path) -> dict[str, Any]:
    import open_clip
    import torch

    from edgeprompt.api import tune
    from edgeprompt.artifact import load_run
    from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
    from edgeprompt.export import export_run
    from edgeprompt.export.verify import torch_logits
    from edgeprompt.manifest import OUTPUT_LOGITS
    from edgeprompt.preprocess import preprocess_batch
    from edgeprompt.runtime import load_bundle

    out: dict[str, Any] = {"arch": arch}
    torch.manual_seed(0)
    ckpt = work / f"{arch}-random.pt"
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), ckpt)
    out["checkpoint_mb"] = round(ckpt.stat().st_size / 1e6, 1)
    data = make_images(work / "data")
    images = sorted(str(p) for p in data.rglob("*.png"))

    t0 = time.perf_counter()
    cfg = TuneConfig(train=str(data), out=str(work / f"run-{arch}"), method="coop", model=arch,
                     pretrained=str(ckpt), shots=0, views=1, cache_dir=str(work / "cache"),
                     method_options={"n_ctx": 4}, train_cfg=TrainConfig(epochs=1, batch_size=12, device="cpu"))
    run_dir = Path(tune(cfg)["run_dir"])
    out["tune_s"] = round(time.perf_counter() - t0, 1)
    run = load_run(run_dir)

    for precision in ("fp32", "fp16"):
        t0 = time.perf_counter()
        res = export_run(ExportConfig(source=str(run_dir), out=str(work / f"bundle-{arch}-{precision}"),
                                      precision=precision, n_check=len(images)))
        export_s = time.perf_counter() - t0
        predictor = load_bundle(res["bundle"], backend="ort-cpu")
        t0 = time.perf_counter()
        preds = predictor.predict(images, top_k=1)
        predict_ms = (time.perf_counter() - t0) * 1e3 / len(images)
        pixels = preprocess_batch(images, predictor.manifest.preprocess)
        ref = torch_logits(run.backbone, run.method, pixels)
        got = predictor.run(pixels)[OUTPUT_LOGITS]
        out[precision] = {
            "export_s": round(export_s, 1), "files_mb": res["files_mb"], "opset": res["opset"],
            "exporter": res["exporter"], "parity": res["parity"],
            "predict_ms_per_image": round(predict_ms, 1), "provider": predictor.runtime.provider,
            "predict_top1_agrees_with_torch": float(np.mean([p[0].index == r for p, r in
                                                             zip(preds, ref.argmax(-1), strict=True)])),
            "predict_max_abs_logit_diff": float(np.abs(got - ref).max()),
        }
        print(f"  {arch} {precision}: parity passed={res['parity']['passed']} in {export_s:.1f} s",
              file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="ViT-B-16,RN50")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    results = []
    for arch in a.archs.split(","):
        with tempfile.TemporaryDirectory(prefix=f"edgeprompt-{arch}-") as tmp:
            results.append(run_arch(arch, Path(tmp)))
    head = (f"{'arch':<10}{'prec':<6}{'tune s':>8}{'export s':>10}{'onnx MB':>9}{'opset':>6}{'top-1 agr':>10}"
            f"{'max |Δlogit|':>14}{'limit':>9}{'gate':>6}{'predict ms/img':>16}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        for prec in ("fp32", "fp16"):
            e = r[prec]
            par = e["parity"]
            limit = par.get("max_abs_logit_diff_limit")
            print(f"{r['arch']:<10}{prec:<6}{r['tune_s']:>8.1f}{e['export_s']:>10.1f}{e['files_mb']['model.onnx']:>9.1f}"
                  f"{e['opset']:>6}{par['top1_agreement']:>10.3f}{par['max_abs_logit_diff']:>14.2e}"
                  f"{(f'{limit:.2e}' if limit else '-'):>9}{'pass' if par['passed'] else 'FAIL':>6}"
                  f"{e['predict_ms_per_image']:>16.1f}")
    print("\nparity: torch (unfolded method) vs onnxruntime CPU on the run's own images; fp32 gate: 100 % top-1 and "
          "max |Δlogit| <= 1e-3 x logit scale; fp16 gate: >= 99.5 % top-1 (ties excepted)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
