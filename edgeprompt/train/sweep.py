"""The noisy-label sweep: every (method, noise, seed) cell tuned on the shared feature cache, evaluated on the clean
test split, summarised as mean ± std (Markdown, CSV, JSON) and plotted against the noise rate.

Layout of ``OUT``::

    cells/<cell>.json     one finished cell (its presence is what makes an interrupted sweep resume)
    runs/<cell>/          the cell's run directory
    results.json          every cell + the summary table
    results.md / .csv     method x noise table, mean ± std over seeds
    accuracy_vs_noise_<kind>.png

Zero-shot trains nothing and sees no labels, so it is evaluated once per seed and drawn as the reference line.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprompt.config import TrainConfig, TuneConfig
from edgeprompt.errors import ConfigError
from edgeprompt.fileio import atomic_write_json, atomic_write_text
from edgeprompt.progress import NullReporter, Reporter


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. ``noise`` holds groups like ``sym:0,0.25,0.5`` (kind, then comma-separated rates)."""

    train: str
    test: str
    out: str
    methods: tuple[str, ...] = ("zeroshot", "coop", "dspt", "visprompt")
    losses: tuple[str, ...] = ("ce",)  # CoOp losses; each becomes its own row (coop-ce, coop-gce, …)
    noise: tuple[str, ...] = ("sym:0,0.25,0.5,0.75",)
    shots: int = 16
    seeds: int = 3
    model: str = "edgeprompt-tiny"
    pretrained: str = "shapes"
    epochs: int = 30
    views: int = 8
    crop_scale: float = 0.08  # smallest random-resized-crop area of the cached views
    cache_dir: str | None = None
    method_options: dict[str, dict[str, Any]] | None = None  # per-method overrides, e.g. {"visprompt": {...}}


def parse_noise_groups(groups: Sequence[str]) -> list[tuple[str, float]]:
    """``["sym:0,0.25", "asym:0.5"]`` -> ``[("sym", 0.0), ("sym", 0.25), ("asym", 0.5)]``."""
    out = []
    for g in groups:
        kind, _, rates = g.partition(":")
        if kind not in ("sym", "asym") or not rates:
            raise ConfigError(f"noise group {g!r}: expected sym:R1,R2,… or asym:R1,R2,…")
        for r in rates.split(","):
            try:
                rate = float(r)
            except ValueError:
                raise ConfigError(f"noise group {g!r}: {r!r} is not a number") from None
            if not 0 <= rate < 1:
                raise ConfigError(f"noise group {g!r}: rate {rate} must be in [0, 1)")
            out.append((kind, rate))
    return out


def _rows(cfg: SweepConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, method, method options) for every method/loss combination."""
    from edgeprompt.methods import METHODS

    rows = []
    for m in cfg.methods:
        METHODS.get(m)  # unknown names fail before any work
        extra = dict((cfg.method_options or {}).get(m, {}))
        if m == "coop":
            rows += [(f"coop-{loss}", m, {**extra, "loss": loss}) for loss in cfg.losses]
        else:
            rows.append((m, m, extra))
    return rows


def cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every cell to run, in a stable order."""
    noises = parse_noise_groups(cfg.noise)
    out = []
    for label, method, opts in _rows(cfg):
        for seed in range(1, cfg.seeds + 1):
            grid = [("none", 0.0)] if method == "zeroshot" else noises
            for kind, rate in grid:
                noise = "none" if rate == 0 else f"{kind}:{rate:g}"
                name = f"{label}__{kind}-{rate:g}__s{seed}" if method != "zeroshot" else f"{label}__s{seed}"
                out.append({"name": name, "row": label, "method": method, "options": opts, "kind": kind,
                            "rate": rate, "noise": noise, "seed": seed})
    return out


def run_sweep(cfg: SweepConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the summary and writes tables and plots into ``cfg.out``."""
    from edgeprompt import api

    rep = reporter or NullReporter()
    out = Path(cfg.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    todo = cells(cfg)
    tick = rep.task("sweep cells")
    t0, ran = time.perf_counter(), 0
    results = []
    for i, cell in enumerate(todo):
        done_file = out / "cells" / f"{cell['name']}.json"
        if done_file.is_file():
            results.append(json.loads(done_file.read_text()))
            tick(i + 1, len(todo), cell=cell["name"])
            continue
        run_dir = out / "runs" / cell["name"]
        shutil.rmtree(run_dir, ignore_errors=True)
        t_cell = time.perf_counter()
        tune_cfg = TuneConfig(
            train=cfg.train, out=str(run_dir), method=cell["method"], method_options=cell["options"],
            model=cfg.model, pretrained=cfg.pretrained, shots=cfg.shots, noise=cell["noise"], views=cfg.views,
            crop_scale=cfg.crop_scale,
            cache_dir=cfg.cache_dir, train_cfg=TrainConfig(epochs=cfg.epochs, seed=cell["seed"], eval_every=0),
        )
        summary = api.tune(tune_cfg)
        ev = api.evaluate(run_dir, cfg.test, cache_dir=cfg.cache_dir)
        record = {**cell, "top1": ev["top1"], "n_test": ev["n"], "n_flipped": summary["n_flipped"],
                  "time_s": round(time.perf_counter() - t_cell, 2)}
        atomic_write_json(done_file, record)
        results.append(record)
        ran += 1
        elapsed = time.perf_counter() - t0
        tick(i + 1, len(todo), cell=cell["name"], top1=record["top1"],
             eta_min=round(elapsed / ran * (len(todo) - i - 1) / 60, 1))
    summary = summarise(results, cfg)
    write_reports(out, results, summary)
    return summary


def summarise(results: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any]:
    """Mean and std of top-1 over seeds for every (row, noise kind, rate); zero-shot as a reference value."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in results:
        if r["method"] == "zeroshot":
            continue
        groups.setdefault((r["row"], r["kind"], r["rate"]), []).append(r["top1"])
    table = [{"row": k[0], "kind": k[1], "rate": k[2], "mean": statistics.fmean(v),
              "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)} for k, v in sorted(groups.items())]
    zs = [r["top1"] for r in results if r["method"] == "zeroshot"]
    return {"table": table, "zeroshot": statistics.fmean(zs) if zs else None, "cells": len(results),
            "shots": cfg.shots, "seeds": cfg.seeds, "model": cfg.model, "pretrained": cfg.pretrained,
            "epochs": cfg.epochs}


def markdown(summary: dict[str, Any]) -> str:
    """A paper-style table: rows = methods, columns = noise settings, cells = mean ± std top-1 (%)."""
    cols = sorted({(t["kind"], t["rate"]) for t in summary["table"]}, key=lambda c: (c[0] != "sym", c[0], c[1]))
    rows = sorted({t["row"] for t in summary["table"]}, key=lambda r: (r != "coop-ce", r))
    cell = {(t["row"], t["kind"], t["rate"]): t for t in summary["table"]}
    head = "| method | " + " | ".join(f"{k} {100 * r:g}%" for k, r in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for row in rows:
        vals = []
        for c in cols:
            t = cell.get((row, *c))
            vals.append(f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}" if t else "–")
        lines.append(f"| {row} | " + " | ".join(vals) + " |")
    if summary["zeroshot"] is not None:
        lines.append("| zeroshot (no labels) | " + " | ".join(f"{100 * summary['zeroshot']:.1f}" for _ in cols) + " |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """results.json, results.md, results.csv and one PNG per noise kind (when matplotlib is installed)."""
    atomic_write_json(out / "results.json", {"summary": summary, "cells": results})
    atomic_write_text(out / "results.md", markdown(summary))
    lines = ["method,noise_kind,noise_rate,mean_top1,std_top1,seeds"]
    lines += [f"{t['row']},{t['kind']},{t['rate']},{t['mean']:.4f},{t['std']:.4f},{t['n']}" for t in summary["table"]]
    if summary["zeroshot"] is not None:
        lines.append(f"zeroshot,none,0,{summary['zeroshot']:.4f},,")
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    from edgeprompt._optional import available

    if available("matplotlib"):
        for kind in sorted({t["kind"] for t in summary["table"]}):
            plot(summary, kind, out / f"accuracy_vs_noise_{kind}.png")


def plot(summary: dict[str, Any], kind: str, path: Path) -> Path:
    """Accuracy against noise rate, one line per method with a ±std band, zero-shot dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in sorted({t["row"] for t in summary["table"]}):
        pts = sorted((t["rate"], t["mean"], t["std"]) for t in summary["table"]
                     if t["row"] == row and t["kind"] == kind)
        if not pts:
            continue
        x = [100 * p[0] for p in pts]
        y = [100 * p[1] for p in pts]
        s = [100 * p[2] for p in pts]
        ax.plot(x, y, marker="o", label=row)
        ax.fill_between(x, [a - b for a, b in zip(y, s, strict=True)], [a + b for a, b in zip(y, s, strict=True)],
                        alpha=0.15)
    if summary["zeroshot"] is not None:
        ax.axhline(100 * summary["zeroshot"], color="grey", linestyle="--", label="zero-shot")
    ax.set_xlabel(f"{kind} label noise (%)")
    ax.set_ylabel("clean test top-1 (%)")
    ax.set_title(f"{summary['model']} / {summary['pretrained']}, {summary['shots']} shots, {summary['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

