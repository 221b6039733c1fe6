"""The evidence behind the per-method learning rates (``config.METHOD_LR``): gain kept under noise, per lr.

For each data seed: zero-shot and clean-label CoOp (the reference), then every (method, learning rate, noise) cell,
all at the default protocol (template init, 50 epochs), 16 shots. Gain kept = (top-1 - zero-shot) / (clean CoOp -
zero-shot), against clean class-specific CoOp for ``METHOD+csc`` rows (class-specific context). The table is the
mean over data and tuning seeds; docs/defaults.md quotes it.

    python benchmarks/noisy_defaults.py [--methods dspt,nlprompt] [--lrs 0.002,0.005,0.01] \\
        [--noise sym:0.25,sym:0.5,sym:0.75,asym:0.25] [--data-seeds 0,1] [--seeds 1] [--option ot_warmup=2]

``--option [METHOD.]KEY=VALUE`` (repeatable, parsed as the CLI's ``--opt``) adds a method option to every noisy cell
(the references keep the defaults).
``--lrs default`` tunes each method at its own default rate (``config.default_lr``). With more than one seed in all,
each cell also gets the standard deviation over data and tuning seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edgeprompt.cli.ui import parse_options
from edgeprompt.config import TrainConfig, TuneConfig, default_lr
from edgeprompt.sweep.run import gain_kept
from edgeprompt.train.run import evaluate, tune
from edgeprompt.world import shapes


def context_options(method: str, csc: bool) -> dict:
    """Say the context explicitly, so a row does not depend on tune's own choice (docs/defaults.md)."""
    return {"class_specific": csc} if method in ("coop", "dspt", "nlprompt") else {}


def top1(data: Path, out: Path, cache: Path, method: str, noise: str, seed: int, lr: float | None,
         options: dict | None = None) -> float:
    """Clean test top-1 of one tune; ``METHOD+csc`` is the method with class-specific context."""
    method, _, csc = method.partition("+")
    tune(TuneConfig(train=str(data / "train"), out=str(out), method=method, shots=16, noise=noise,
                    method_options=context_options(method, csc == "csc") | (options or {}),
                    cache_dir=str(cache), overwrite=True, train_cfg=TrainConfig(seed=seed, eval_every=0, lr=lr)))
    return 100 * evaluate(out, data / "test", cache_dir=str(cache))["top1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-noisy-defaults")
    ap.add_argument("--methods", default="dspt,nlprompt")
    ap.add_argument("--lrs", default="0.002,0.005,0.01")
    ap.add_argument("--noise", default="sym:0.25,sym:0.5,sym:0.75,asym:0.25")
    ap.add_argument("--data-seeds", default="0,1")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--option", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                    help="a method option for every noisy cell, as the CLI's --opt, repeatable")
    args = ap.parse_args()
    # per method name, as `tune --opt` parses them (values as JSON where they parse)
    options = parse_options(args.option, sorted({m.partition("+")[0] for m in args.methods.split(",")}))
    tag = "".join(f"-{k}{v}" for k, v in {k: v for o in options.values() for k, v in o.items()}.items())
    out, t0 = Path(args.out), time.perf_counter()
    cache = out / "cache"
    kept: dict[tuple[str, float, str], list[float]] = {}
    acc: dict[tuple[str, float, str], list[float]] = {}
    refs = []
    for ds in (int(s) for s in args.data_seeds.split(",")):
        data = out / f"data-{ds}"
        if not (data / "test").is_dir():
            shapes.write_dataset(data, task="shape", per_class=16, seed=ds, overwrite=True)
        zs = top1(data, out / "runs" / f"d{ds}-zs", cache, "zeroshot", "none", 1, None)
        for seed in range(1, args.seeds + 1):
            clean = top1(data, out / "runs" / f"d{ds}-coop-s{seed}", cache, "coop", "none", seed, None)
            clean_csc = (top1(data, out / "runs" / f"d{ds}-coopcsc-s{seed}", cache, "coop+csc", "none", seed, None)
                         if "+csc" in args.methods else None)
            refs.append({"data_seed": ds, "seed": seed, "zeroshot": zs, "coop": clean, "coop_csc": clean_csc})
            print(json.dumps(refs[-1]), flush=True)
            for method in args.methods.split(","):
                for lr in rates(method, args.lrs):
                    for noise in args.noise.split(","):
                        t = top1(data, out / "runs" / f"d{ds}-{method}-{lr:g}-{noise.replace(':', '')}-s{seed}{tag}",
                                 cache, method, noise, seed, lr, options.get(method.partition("+")[0]))
                        g = gain_kept(t, zs, clean_csc if method.endswith("+csc") else clean)
                        acc.setdefault((method, lr, noise), []).append(t)
                        kept.setdefault((method, lr, noise), []).append(g if g is not None else float("nan"))
                        kept_s = "n/a" if g is None else f"{g:.2f}"
                        print(f"d{ds} s{seed} {method} lr {lr:g} {noise}: {t:.1f} (kept {kept_s})", flush=True)
    noises = args.noise.split(",")
    print(f"\ngain kept (mean over {len(refs)} data x tuning seeds; top-1 in brackets; options {options or 'none'}), "
          f"{time.perf_counter() - t0:.0f} s:\n\n| method | lr | " + " | ".join(noises) + " |\n|" + "---|" *
          (2 + len(noises)))
    for method in args.methods.split(","):
        for lr in rates(method, args.lrs):
            cells = [f"{100 * statistics.fmean(kept[(method, lr, n)]):.0f} % "
                     f"({statistics.fmean(acc[(method, lr, n)]):.1f}{_std(acc[(method, lr, n)])})" for n in noises]
            print(f"| {method} | {lr:g} | " + " | ".join(cells) + " |")
    print(json.dumps({"refs": refs, "cells": {f"{m}|{lr:g}|{n}": {"top1": acc[(m, lr, n)], "kept": kept[(m, lr, n)]}
                                               for (m, lr, n) in acc}}))
    return 0


def rates(method: str, lrs: str) -> list[float]:
    """The rates of ``--lrs`` for ``method``; ``default`` is its own default rate."""
    name, _, csc = method.partition("+")
    return [default_lr(name, "default", csc == "csc") if x == "default" else float(x) for x in lrs.split(",")]


def _std(values: list[float]) -> str:
    return f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
