"""The offline world's quality bar (issue: tuning that pays off), rerunnable by anyone, offline, on a CPU.

On the downstream shape task of the shipped ``edgeprompt-tiny`` / ``shapes`` model, 16 shots, default flags (the
default protocol: context from the template, 50 epochs; crop scale by image size), mean ± std over seeds:

  1. zero-shot top-1 between 45 % and 65 %;
  2. the best tuned method on clean labels >= zero-shot + 15, and default CoOp >= zero-shot + 10;
  3. CoOp (cross-entropy) at 50 % symmetric noise below zero-shot (noise must hurt);
  4. the model's logit scale >= 50; at least 20 downstream classes;
  5. pretraining at most 30 minutes on two cores, shipped weights at most 10 MB (from the checkpoint's record).

Exit code 1 when a bar is missed.

    python benchmarks/world_quality.py [--seeds 3] [--out /tmp/world-quality] [--cells coop,dspt,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edgeprompt.config import TrainConfig, TuneConfig
from edgeprompt.train.run import evaluate, tune
from edgeprompt.world import shapes, tiny

# name -> (method, options, noise)
CELLS: dict[str, tuple[str, dict, str]] = {
    "zeroshot": ("zeroshot", {}, "none"),
    "coop": ("coop", {}, "none"),
    "coop-csc": ("coop", {"class_specific": True}, "none"),
    "dspt": ("dspt", {}, "none"),
    "visprompt": ("visprompt", {}, "none"),
    "coop@sym50": ("coop", {}, "sym:0.5"),
    "dspt@sym50": ("dspt", {}, "sym:0.5"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-world-quality")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of: " + ", ".join(CELLS))
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        shapes.write_dataset(data, task="shape", per_class=16, seed=0, overwrite=True)
    results: dict[str, list[float]] = {}
    scale = None
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for name in args.cells.split(","):
            method, opts, noise = CELLS[name]
            run = out / "runs" / f"{name}-s{seed}"
            tune(TuneConfig(train=str(data / "train"), out=str(run), method=method, method_options=opts, shots=16,
                            noise=noise, cache_dir=str(out / "cache"), overwrite=True,
                            train_cfg=TrainConfig(seed=seed, eval_every=0)))
            ev = evaluate(run, data / "test", cache_dir=str(out / "cache"))
            results.setdefault(name, []).append(100 * ev["top1"])
            scale = scale or json.loads((run / "manifest.json").read_text())["logit_scale"]
            print(f"seed {seed}  {name:12s} {100 * ev['top1']:5.1f}", flush=True)
    mean = {k: statistics.fmean(v) for k, v in results.items()}
    std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in results.items()}
    meta = tiny.checkpoint_metadata()
    weights_mb = tiny.tiny_weights_path(tiny.MODEL_NAME, "shapes").stat().st_size / 1e6
    zs = mean.get("zeroshot", float("nan"))
    tuned = {k: v for k, v in mean.items() if "@" not in k and k != "zeroshot"}
    best = max(tuned, key=tuned.__getitem__) if tuned else None
    checks = {
        "zero-shot in [45, 65]": 45 <= zs <= 65,
        f"best tuned ({best}) >= zero-shot + 15": best is not None and tuned[best] >= zs + 15,
        "default CoOp >= zero-shot + 10": mean.get("coop", -1) >= zs + 10,
        "CoOp-CE at 50 % sym below zero-shot": mean.get("coop@sym50", 1e9) < zs,
        "logit scale >= 50": scale is not None and scale >= 50,
        ">= 20 downstream classes": len(shapes.classnames("shape")) >= 20,
        "pretraining <= 30 min on 2 cores": float(meta.get("wall_s", 1e9)) <= 1800 and meta.get("threads") in (
            "2", "2.0"),
        "weights <= 10 MB": weights_mb <= 10,
    }
    print(f"\nmean ± std over {args.seeds} seeds ({time.perf_counter() - t0:.0f} s of tuning here):")
    for k in mean:
        print(f"  {k:12s} {mean[k]:5.1f} ± {std[k]:.1f}")
    print(f"  logit scale {scale:.1f}; {len(shapes.classnames('shape'))} classes; pretraining {meta.get('wall_s')} s "
          f"on {meta.get('threads')} threads, {meta.get('steps')} steps; weights {weights_mb:.2f} MB")
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {k}")
    print(json.dumps({"mean": mean, "std": std, "runs": results, "logit_scale": scale, "pretrain": meta,
                      "weights_mb": weights_mb, "checks": checks}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
