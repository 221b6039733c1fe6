"""Changing classes without retuning, measured with CoCoOp's base-to-new protocol on the offline world.

Tune on 15 of the 20 shape classes (the base classes), then add the other 5 (the new classes) with
``edgeprompt classes`` and measure, on the clean test split:
  - base: accuracy among the base classes; new: accuracy among the new classes (CoCoOp's protocol); their harmonic
    mean; and all: accuracy among all 20 after the addition;
  - the same for the zero-shot template and for a run tuned on all 20 classes (the upper bound that needs labels
    for the new classes).

    python benchmarks/base_to_new.py [--methods coop,nlprompt] [--seeds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from edgeprompt.config import TrainConfig, TuneConfig
from edgeprompt.data import load_labeled
from edgeprompt.train.classes import change_classes
from edgeprompt.train.run import evaluate, tune
from edgeprompt.world import shapes

N_NEW = 5


def manifest(path: Path, data: Path, keep: set[str]) -> Path:
    ds = load_labeled(data)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p.resolve()), ds.classnames[y]] for p, y in zip(ds.paths, ds.labels, strict=True)
                    if ds.classnames[y] in keep)
    return path


def hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-base-to-new")
    ap.add_argument("--methods", default="coop,nlprompt")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        shapes.write_dataset(data, task="shape", per_class=16, seed=0, overwrite=True)
    names = list(load_labeled(data / "test").classnames)
    new = names[-N_NEW:]  # the last five in folder order (sorted names): a fixed, documented split
    base = names[:-N_NEW]
    files = {split: {part: manifest(out / f"{split}-{part}.csv", data / split, set(keep))
                     for part, keep in (("base", base), ("new", new), ("all", names))} for split in ("train", "test")}
    cache = str(out / "cache")
    table: dict[str, dict[str, list[float]]] = {}

    def score(label: str, run: Path) -> None:
        """base / new / all accuracies of ``run`` (a run over all classes, or one over the base classes)."""
        res = table.setdefault(label, {"base": [], "new": [], "all": []})
        only_base = change_classes(run, run.with_name(run.name + "-base"), remove=new, overwrite=True) \
            if set(new) <= set(json.loads((run / "manifest.json").read_text())["classnames"]) else {"run_dir": run}
        res["base"].append(100 * evaluate(only_base["run_dir"], files["test"]["base"], cache_dir=cache)["top1"])
        full = json.loads((run / "manifest.json").read_text())["classnames"]
        added = run if set(new) <= set(full) else Path(change_classes(run, run.with_name(run.name + "-all"), add=new,
                                                                      overwrite=True)["run_dir"])
        only_new = change_classes(added, added.with_name(added.name + "-new"), remove=base, overwrite=True)
        res["new"].append(100 * evaluate(only_new["run_dir"], files["test"]["new"], cache_dir=cache)["top1"])
        res["all"].append(100 * evaluate(added, files["test"]["all"], cache_dir=cache)["top1"])

    zs = out / "runs" / "zeroshot"
    tune(TuneConfig(train=str(files["train"]["all"]), out=str(zs), method="zeroshot", cache_dir=cache,
                    overwrite=True))
    score("zero-shot", zs)
    for method in args.methods.split(","):
        for seed in range(1, args.seeds + 1):
            for part in ("base", "all"):
                run = out / "runs" / f"{method}-{part}-s{seed}"
                tune(TuneConfig(train=str(files["train"][part]), out=str(run), method=method, shots=16,
                                method_options={"class_specific": False},  # new rows need the shared context
                                cache_dir=cache, overwrite=True, train_cfg=TrainConfig(seed=seed, eval_every=0)))
                score(f"{method}, tuned on {'15 base classes, 5 added' if part == 'base' else 'all 20'}", run)
    print(f"\nbase classes: {', '.join(base)}\nnew classes: {', '.join(new)}\n")
    print("| | base | new | harmonic mean | all 20 after adding |\n|---|---|---|---|---|")
    summary = {}
    for label, res in table.items():
        m = {k: statistics.fmean(v) for k, v in res.items()}
        sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in res.items()}
        summary[label] = {**m, "hm": hm(m["base"], m["new"]), "std": sd}
        print(f"| {label} | {m['base']:.1f} ± {sd['base']:.1f} | {m['new']:.1f} ± {sd['new']:.1f} | "
              f"{hm(m['base'], m['new']):.1f} | {m['all']:.1f} ± {sd['all']:.1f} |")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
