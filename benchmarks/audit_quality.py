"""How well ``edgeprompt audit`` finds injected label noise on the offline world (the truth is known).

For each noise setting (symmetric 25 % and 50 %, asymmetric 25 % by default): write the noisy labels as a CSV
manifest, audit it, and measure
  - precision and recall of the flagged set against the truly flipped samples;
  - the estimated noise rate against the injected one;
  - clean test top-1 after tuning (``--method``, default protocol) on the noisy labels, on the audit's corrected
    manifest, and on the clean labels.
Goals (issue: show users which labels are wrong): precision >= 0.9 at recall >= 0.7 at 25 % symmetric; the
noise-rate estimate within 5 points; the retuned result closer to the clean-label one than to the noisy one.

    python benchmarks/audit_quality.py [--per-class 32] [--noise sym:0.25,sym:0.5,asym:0.25] [--method dspt]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from edgeprompt.config import AuditConfig, TrainConfig, TuneConfig
from edgeprompt.data import apply_noise, load_labeled, parse_noise
from edgeprompt.train.audit import audit
from edgeprompt.train.run import evaluate, tune
from edgeprompt.world import shapes


def write_manifest(path: Path, paths: list[Path], labels: list[int], names: tuple[str, ...]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p.resolve()), names[y]] for p, y in zip(paths, labels, strict=True))
    return path


def tuned_top1(train: Path, test: Path, out: Path, method: str, cache: Path) -> float:
    tune(TuneConfig(train=str(train), out=str(out), method=method, shots=0, cache_dir=str(cache), overwrite=True,
                    train_cfg=TrainConfig(seed=1, eval_every=0)))
    return evaluate(out, test, cache_dir=str(cache))["top1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-audit-quality")
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--noise", default="sym:0.25,sym:0.5,asym:0.25")
    ap.add_argument("--method", default="dspt")
    ap.add_argument("--folds", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        shapes.write_dataset(data, task="shape", per_class=args.per_class, seed=0, overwrite=True)
    cache = out / "cache"
    train = load_labeled(data / "train")
    paths, true = list(train.paths), list(train.labels)
    clean_csv = write_manifest(out / "clean.csv", paths, true, train.classnames)
    clean_top1 = tuned_top1(clean_csv, data / "test", out / "runs" / "clean", args.method, cache)
    rows = []
    for spec in args.noise.split(","):
        t0 = time.perf_counter()
        noise = parse_noise(spec)
        given, is_clean = apply_noise(true, train.num_classes, noise, seed=7, classnames=train.classnames)
        tag = spec.replace(":", "")
        noisy_csv = write_manifest(out / f"noisy-{tag}.csv", paths, given, train.classnames)
        fixed_csv = out / f"fixed-{tag}.csv"
        res = audit(AuditConfig(train=str(noisy_csv), out=str(out / f"audit-{tag}"), method=args.method,
                                folds=args.folds, write_fixed=str(fixed_csv), cache_dir=str(cache), overwrite=True))
        issues = {r["path"]: r for r in csv.DictReader((out / f"audit-{tag}" / "issues.csv").open())}
        flipped = {str(p.resolve()) for p, c in zip(paths, is_clean, strict=True) if not c}
        flagged = {p for p, r in issues.items() if r["flagged"] == "True"}
        tp = len(flagged & flipped)
        precision = tp / len(flagged) if flagged else 0.0
        recall = tp / len(flipped) if flipped else 0.0
        true_rate = len(flipped) / len(paths)
        fixed = {r["path"]: r["label"] for r in csv.DictReader(fixed_csv.open())}
        name_of = {str(p.resolve()): train.classnames[y] for p, y in zip(paths, true, strict=True)}
        label_acc = sum(fixed[p] == name_of[p] for p in fixed) / len(fixed)
        noisy_top1 = tuned_top1(noisy_csv, data / "test", out / "runs" / f"noisy-{tag}", args.method, cache)
        fixed_top1 = tuned_top1(fixed_csv, data / "test", out / "runs" / f"fixed-{tag}", args.method, cache)
        rows.append({"noise": spec, "flipped": len(flipped), "flagged": len(flagged), "precision": round(precision, 3),
                     "recall": round(recall, 3), "true_rate": round(true_rate, 3),
                     "estimated_rate": res["estimated_noise_rate"],
                     "rate_error_pt": round(100 * (res["estimated_noise_rate"] - true_rate), 1),
                     "fixed_rows": len(fixed), "fixed_label_acc": round(label_acc, 3),
                     "top1_noisy": round(100 * noisy_top1, 1), "top1_fixed": round(100 * fixed_top1, 1),
                     "top1_clean": round(100 * clean_top1, 1), "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    head = ["noise", "flipped", "flagged", "precision", "recall", "true_rate", "estimated_rate", "rate_error_pt",
            "fixed_label_acc", "top1_noisy", "top1_fixed", "top1_clean"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in head) + " |")
    first = next((r for r in rows if r["noise"] == "sym:0.25"), None)
    checks = {
        "precision >= 0.9 at recall >= 0.7 (sym 25 %)": bool(first and first["precision"] >= 0.9
                                                            and first["recall"] >= 0.7),
        "noise-rate estimate within 5 points (all)": all(abs(r["rate_error_pt"]) <= 5 for r in rows),
        "fixed closer to clean than to noisy (all)": all(abs(r["top1_fixed"] - r["top1_clean"])
                                                         < abs(r["top1_fixed"] - r["top1_noisy"]) for r in rows),
    }
    for k, ok in checks.items():
        print(f"[{'ok' if ok else 'MISSED'}] {k}")
    print(json.dumps({"rows": rows, "checks": checks}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
