"""FP32 vs INT8 (Q/DQ) on onnxruntime CPU: latency at batch 1 and 8, top-1 agreement, accuracy change.

Models:

- ``tiny``: the shipped edgeprompt-tiny / shapes model, DSPT tuned on the offline world (16 shots, the default
  protocol); calibrated on the run's tuning images (centre views, as ``export --int8`` does), agreement and
  accuracy on the world's test split (480 images).
- ``ViT-B-32``, ``ViT-B-16``: random weights saved to and loaded from a local checkpoint file (no hub here),
  zero-shot on the world's classes; calibrated on 32 tuning images. Their accuracy is meaningless (random weights);
  agreement is reported on a subset of the test split to show the quantization noise, latency is the point.

Every (quantizer, calibrator) pair goes through :func:`edgeprompt.export.quantize.quantize_int8`, the function
``export --int8`` uses. Latency: one thread, FP32 and INT8 calls alternated in one run, median of the timed calls;
another job may share the machine, so read the ratios, not the absolute times.

    OMP_NUM_THREADS=1 python benchmarks/int8.py [--models tiny,ViT-B-32,ViT-B-16] [--out DIR] [--json FILE]
    OMP_NUM_THREADS=1 python benchmarks/int8.py --ablation --models tiny,ViT-B-32   # keep-float groups instead

``--ablation`` varies the keep-float groups (ModelOpt, percentile) instead of the quantizer and calibrator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATORS = ("minmax", "percentile", "entropy")
QUANTIZERS = ("modelopt", "ort")
GRID = [(q, c, ("head", "attention")) for q in QUANTIZERS for c in CALIBRATORS]  # (quantizer, calibrator, float)
ABLATION = [("modelopt", "percentile", g) for g in [(), ("head",), ("head", "attention"),
                                                    ("head", "attention", "residual"),
                                                    ("head", "attention", "residual", "patch")]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_bundle(model: str, work: Path, world: Path) -> tuple[Path, Path]:
    """A tuned run and its FP32 bundle for ``model`` ('tiny' or an open_clip architecture with random weights)."""
    import torch

    from edgeprompt.api import tune
    from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
    from edgeprompt.export import export_run

    run, bundle = work / f"run-{model}", work / f"bundle-{model}"
    if not (run / "manifest.json").is_file():
        if model == "tiny":
            cfg = TuneConfig(train=str(world / "train"), out=str(run), method="dspt", cache_dir=str(work / "cache"),
                             overwrite=True, train_cfg=TrainConfig(device="cpu"))
        else:
            import open_clip

            ckpt = work / f"{model}-random.pt"
            torch.manual_seed(0)
            torch.save(open_clip.create_model(model, pretrained=None).state_dict(), ckpt)
            cfg = TuneConfig(train=str(world / "train"), out=str(run), method="zeroshot", model=model,
                             pretrained=str(ckpt), shots=4, views=1, cache_dir=str(work / "cache"), overwrite=True,
                             train_cfg=TrainConfig(device="cpu"))
        tune(cfg)
    if not (bundle / "manifest.json").is_file():
        export_run(ExportConfig(source=str(run), out=str(bundle), n_check=8, overwrite=True))
    return run, bundle


def latency(fp32: Any, int8: Any, shape: tuple[int, ...], reps: int) -> dict[int, tuple[float, float]]:
    """Median ms of FP32 and INT8 calls at batch 1 and 8, calls alternated (same machine state for both)."""
    out = {}
    rng = np.random.default_rng(0)
    for b in (1, 8):
        x = rng.random((b, *shape), dtype=np.float32)
        for rt in (fp32, int8):
            rt.run(x)
            rt.run(x)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(reps):
            for name, rt in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                rt.run(x)
                times[name].append(time.perf_counter() - t0)
        out[b] = (float(np.median(times["fp32"]) * 1e3), float(np.median(times["int8"]) * 1e3))
    return out


def run_model(model: str, work: Path, world: Path, reps: int, n_test: int | None,
              variants: list[tuple[str, str, tuple[str, ...]]]) -> list[dict[str, Any]]:
    from edgeprompt.config import Int8Config
    from edgeprompt.data import load_labeled
    from edgeprompt.data.folder import match_classes
    from edgeprompt.export.int8 import calibration_set, spread
    from edgeprompt.export.quantize import quantize_int8
    from edgeprompt.manifest import ONNX_FILE, OUTPUT_LOGITS, Manifest
    from edgeprompt.preprocess import preprocess_batch
    from edgeprompt.runtime.onnxrt import OrtRuntime

    t0 = time.perf_counter()
    run, bundle = make_bundle(model, work, world)
    m = Manifest.read(bundle)
    assert m.io is not None
    test = match_classes(list(m.classnames), load_labeled(world / "test"), "test split")
    idx = spread(list(range(len(test))), n_test or len(test))
    pixels = preprocess_batch([str(test.paths[i]) for i in idx], m.preprocess).astype(np.float32)
    labels = np.array([test.labels[i] for i in idx])
    fp32 = OrtRuntime(bundle / ONNX_FILE, m.io, "ort-cpu", threads=1)
    ref = np.concatenate([fp32.run(pixels[i:i + 16])[OUTPUT_LOGITS] for i in range(0, len(pixels), 16)])
    log(f"{model}: FP32 bundle ready in {time.perf_counter() - t0:.0f} s; "
        f"FP32 top-1 {(ref.argmax(-1) == labels).mean():.4f}")
    rows = []
    calib_n = 256 if model == "tiny" else 32
    for quantizer, method, keep in variants:
        cfg = Int8Config(quantizer=quantizer, calib_method=method, calib_n=calib_n, keep_float=keep)
        calib = calibration_set(run, cfg)
        out = work / f"{model}-{quantizer}-{method}-{'+'.join(keep) or 'none'}.onnx"
        t1 = time.perf_counter()
        calib_px = preprocess_batch([str(p) for p in calib.paths], m.preprocess).astype(np.float32)
        quantize_int8(bundle / ONNX_FILE, out, calib_px, cfg)
        q_s = time.perf_counter() - t1
        int8 = OrtRuntime(out, m.io, "ort-cpu", threads=1)
        got = np.concatenate([int8.run(pixels[i:i + 16])[OUTPUT_LOGITS] for i in range(0, len(pixels), 16)])
        lat = latency(fp32, int8, tuple(int(d) for d in m.io.inputs[0].shape[1:]), reps)
        int8.close()
        row = {
            "model": model, "quantizer": quantizer, "calibrator": method, "keep_float": "+".join(keep) or "-",
            "calib_images": len(calib), "quantize_s": round(q_s, 1), "n_test": len(labels),
            "agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "mean_abs_logit_diff": float(np.abs(got - ref).mean()),
            "top1_fp32": float((ref.argmax(-1) == labels).mean()),
            "top1_change_pt": 100 * float((got.argmax(-1) == labels).mean() - (ref.argmax(-1) == labels).mean()),
            "fp32_mb": round((bundle / ONNX_FILE).stat().st_size / 1e6, 1),
            "int8_mb": round(out.stat().st_size / 1e6, 1),
            **{f"b{b}_{k}_ms": v for b, (f, q) in lat.items() for k, v in (("fp32", f), ("int8", q))},
            **{f"b{b}_ratio": f / q for b, (f, q) in lat.items()},
        }
        log(f"  {quantizer:8s} {method:10s} {row['keep_float']:28s} agreement {row['agreement']:.4f}  "
            f"b8 {row['b8_ratio']:.2f}x  (quantized in {q_s:.0f} s)")
        rows.append(row)
    fp32.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | quantizer | calibrator | float | calib imgs | b1 FP32 ms | b1 INT8 ms | b1 ratio | b8 FP32 ms | "
            "b8 INT8 ms | b8 ratio | agreement % | mean abs Δlogit | top-1 FP32 % | top-1 change pt | MB FP32 → INT8 |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['quantizer']} | {r['calibrator']} | {r['keep_float']} | {r['calib_images']} | "
            f"{r['b1_fp32_ms']:.1f} | {r['b1_int8_ms']:.1f} | {r['b1_ratio']:.2f}x | {r['b8_fp32_ms']:.1f} | "
            f"{r['b8_int8_ms']:.1f} | {r['b8_ratio']:.2f}x | {100 * r['agreement']:.2f} (n={r['n_test']}) | "
            f"{r['mean_abs_logit_diff']:.3f} | {100 * r['top1_fp32']:.2f} | {r['top1_change_pt']:+.2f} | "
            f"{r['fp32_mb']} → {r['int8_mb']} |")
    return "\n".join(lines)


def main() -> int:
    import torch

    from edgeprompt import api
    from edgeprompt.bench.report import environment

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,ViT-B-32,ViT-B-16")
    p.add_argument("--out", type=Path, default=Path("/tmp/edgeprompt-int8-bench"))
    p.add_argument("--reps", type=int, default=0, help="timed calls per graph and batch (default: 20 tiny, 5 ViT)")
    p.add_argument("--vit-test", type=int, default=96, help="test images for the ViT-B agreement")
    p.add_argument("--ablation", action="store_true", help="vary the keep-float groups (see the docstring)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    world = a.out / "world"
    if not (world / "test").is_dir():
        api.data_shapes(world, overwrite=True)
    rows = []
    for model in a.models.split(","):
        reps = a.reps or (20 if model == "tiny" else 5)
        rows += run_model(model, a.out, world, reps, None if model == "tiny" else a.vit_test,
                          ABLATION if a.ablation else GRID)
    env = environment()
    print(f"\nonnxruntime {env['onnxruntime']} CPU, 1 thread, {env['cpu']} ({env['cpu_count']} cores); FP32 and INT8 "
          f"calls alternated in one run, median ms; another job may share this machine, so compare the ratios.\n")
    print(table(rows))
    default = [r for r in rows if (r["quantizer"], r["calibrator"], r["keep_float"]) ==
               ("modelopt", "percentile", "head+attention")]
    for r in default:
        if r["model"] == "ViT-B-32":
            print(f"\ngoal ViT-B-32 batch 8 >= 1.5x (default modelopt/percentile): {r['b8_ratio']:.2f}x "
                  f"{'met' if r['b8_ratio'] >= 1.5 else 'MISSED'}")
        if r["model"] == "tiny":
            print(f"goal tiny agreement >= 99 % (default modelopt/percentile): {100 * r['agreement']:.2f} % "
                  f"{'met' if r['agreement'] >= 0.99 else 'MISSED'}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "environment": env}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
