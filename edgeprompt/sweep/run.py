"""The noisy-label sweep: every (method, noise, seed) cell tuned on the shared feature cache, evaluated on the clean
test split, summarised as mean ± std (Markdown, CSV, JSON) and plotted against the noise rate.

Layout of ``OUT``::

    sweep.json            the settings of the latest run of the sweep
    cells/<cell>.<key>.json  one finished cell; ``key`` hashes everything that defines it (data, test set, model
                          and weights, method and its resolved config, protocol, epochs, learning rate, shots,
                          views, crop, noise, seed), so a rerun with other settings or after a default changed
                          computes new cells and never reports an old one as new
    runs/<cell>.<key>/    the cell's run directory
    results.json          every cell + the summary table
    results.md / .csv     method x noise table, mean ± std over seeds
    accuracy_vs_noise_<kind>.png

Zero-shot trains nothing and sees no labels, so it is evaluated once per seed and drawn as the reference line.
Cells run one after another here, or in parallel as Ray tasks (``--ray``); either way the driver writes each cell's
file as it finishes, so the same files, resume and results (:mod:`edgeprompt.sweep.executor`, docs/scale-out.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeprompt.config import PROTOCOLS, SweepConfig, TrainConfig, TuneConfig, default_lr, resolve_tune
from edgeprompt.data.noise import parse_noise
from edgeprompt.errors import ConfigError
from edgeprompt.features.cache import check_cache_dir
from edgeprompt.fileio import atomic_write_json, atomic_write_text, guard_output, lock_path, output_lock
from edgeprompt.progress import NullReporter, Reporter
from edgeprompt.sweep.executor import make_executor
from edgeprompt.tables import csv, markdown_table
from edgeprompt.train import run as pipeline

NOISE_GROUP_KINDS = ("sym", "asym")


def parse_noise_groups(groups: Sequence[str]) -> list[tuple[str, float]]:
    """``["sym:0,0.25", "asym:0.5"]`` -> ``[("sym", 0.0), ("sym", 0.25), ("asym", 0.5)]`` (each rate checked by
    :func:`edgeprompt.data.noise.parse_noise`)."""
    out = []
    for g in groups:
        kind, _, rates = g.partition(":")
        if kind not in NOISE_GROUP_KINDS or not rates:
            raise ConfigError(f"noise group {g!r}: expected sym:R1,R2,… or asym:R1,R2,…")
        for r in rates.split(","):
            out.append((kind, parse_noise(f"{kind}:{r}").rate))
    return out


def _rows(cfg: SweepConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, method, method options) for every method/loss combination."""
    from edgeprompt.methods.base import build_config

    rows = []
    for m in cfg.methods:
        extra = cfg.options_for(m)
        if m == "coop":
            rows += [(f"coop-{loss}", m, {**extra, "loss": loss}) for loss in cfg.losses]
        else:
            rows.append((m, m, extra))
    for _, m, opts in rows:
        build_config(m, opts)  # unknown methods, options, losses and ill-typed values fail before any work
    return rows


def _tree_fingerprint(path: str | None) -> str | None:
    """A cheap identity of a data folder or file: relative paths, sizes and modification times of its files."""
    if path is None:
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root) if f != root else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def sweep_identity(cfg: SweepConfig) -> dict[str, Any]:
    """Everything besides the cell's own (method, options, noise, seed) that defines a cell's result."""
    pretrained = cfg.pretrained
    weights = _tree_fingerprint(pretrained) if os.path.exists(pretrained) else pretrained
    cfg.validate()  # the protocol indexes PROTOCOLS below
    return {"train": str(Path(cfg.train).resolve()), "train_files": _tree_fingerprint(cfg.train),
            "test": str(Path(cfg.test).resolve()), "test_files": _tree_fingerprint(cfg.test),
            "model": cfg.model, "pretrained": pretrained, "weights": weights, "protocol": cfg.protocol,
            "epochs": cfg.epochs if cfg.epochs is not None else PROTOCOLS[cfg.protocol].epochs,
            "shots": cfg.shots, "views": cfg.views, "crop_scale": cfg.crop_scale}


def method_settings(method: str, options: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The method's whole config as ``tune`` resolves it (its defaults, the protocol's fill-ins, the user's options)."""
    import dataclasses

    from edgeprompt.methods.base import build_config, method_config_class

    names = [f.name for f in dataclasses.fields(method_config_class(method))]
    resolved = resolve_tune(TuneConfig(train="", out="", method=method, method_options=options, protocol=protocol),
                            None, names)
    return dataclasses.asdict(build_config(method, resolved.options))


def cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every cell to run, in a stable order; ``key`` names its file and changes with anything that defines it."""
    cfg.validate()
    noises = parse_noise_groups(cfg.noise)
    repeated = sorted({f"{k}:{r:g}" for k, r in noises if noises.count((k, r)) > 1})
    if repeated:
        raise ConfigError(f"--noise lists {', '.join(repeated)} more than once: give each rate once (use --seeds "
                          f"for repeats)")
    ident = sweep_identity(cfg)
    rows = _rows(cfg)
    settings = {label: method_settings(method, opts, cfg.protocol) for label, method, opts in rows}
    out = []
    for label, method, opts in rows:
        for seed in range(1, cfg.seeds + 1):
            grid = [("none", 0.0)] if method == "zeroshot" else noises
            for kind, rate in grid:
                noise = "none" if rate == 0 else f"{kind}:{rate:g}"
                name = f"{label}__{kind}-{rate:g}__s{seed}" if method != "zeroshot" else f"{label}__s{seed}"
                cell = {"name": name, "row": label, "method": method, "options": opts, "kind": kind, "rate": rate,
                        "noise": noise, "seed": seed}
                # the resolved method config and learning rate are part of the key, not only the options given:
                # a resume after a default changed never reuses the cells computed under the old one
                defining = {**ident, **{k: cell[k] for k in ("method", "options", "noise", "seed")},
                            "method_config": settings[label],
                            "lr": default_lr(method, cfg.protocol, bool(opts.get("class_specific", False)))}
                if method == "zeroshot":  # trains nothing: epochs, views and crop do not change it
                    defining = {k: v for k, v in defining.items() if k not in ("epochs", "views", "crop_scale", "lr")}
                cell["key"] = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
                cell["settings"] = defining
                out.append(cell)
    return out


def run_cell(cell: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:
    """Tune and evaluate one cell (its run directory under ``OUT/runs``); returns the cell's record."""
    run_dir = run_dir_of(Path(cfg.out), cell)
    t_cell = time.perf_counter()
    tune_cfg = TuneConfig(
        train=cfg.train, out=str(run_dir), method=cell["method"], method_options=cell["options"],
        protocol=cfg.protocol, model=cfg.model, pretrained=cfg.pretrained, shots=cfg.shots, noise=cell["noise"],
        views=cfg.views, crop_scale=cfg.crop_scale, cache_dir=cfg.cache_dir, overwrite=True,
        train_cfg=TrainConfig(epochs=cfg.epochs, seed=cell["seed"], eval_every=0),
    )
    summary = pipeline.tune(tune_cfg)
    ev = pipeline.evaluate(run_dir, cfg.test, cache_dir=cfg.cache_dir)
    record = {k: v for k, v in cell.items() if k != "settings"}
    record.update(top1=ev["top1"], n_test=ev["n"], n_flipped=summary["n_flipped"], epochs=summary["epochs"],
                  tune_s=summary["time_s"], time_s=round(time.perf_counter() - t_cell, 2),
                  ran_on={"host": socket.gethostname(), "pid": os.getpid()})  # which node and worker, on a cluster
    record.update(_ot_quality(run_dir))
    return record


def _ot_quality(run_dir: Path) -> dict[str, Any]:
    """The last epoch's OT split numbers from a VisPrompt run's metrics (empty for other methods)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    return {k: v for k, v in last.items() if k.startswith("ot_")}


def cell_file(out: Path, cell: dict[str, Any]) -> Path:
    return out / "cells" / f"{cell['name']}.{cell['key']}.json"


def run_dir_of(out: Path, cell: dict[str, Any]) -> Path:
    return out / "runs" / f"{cell['name']}.{cell['key']}"


def run_sweep(cfg: SweepConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the summary and writes tables and plots into ``cfg.out``.

    A cell already computed under the same settings (its key) is read back, any other is computed by the executor
    (here, or as Ray tasks: :mod:`edgeprompt.sweep.executor`) and written as soon as it finishes; cells of earlier
    sweeps with other settings stay on disk but never enter the tables.
    """
    rep = reporter or NullReporter()
    inputs = {"the training data": cfg.train, "the test data": cfg.test}
    out = guard_output(cfg.out, "sweep", inputs, overwrite=True)  # an earlier sweep there is resumed
    check_cache_dir(cfg.cache_dir, inputs)
    todo = cells(cfg)  # validates methods, noise groups and the protocol before anything is written
    executor = make_executor(cfg)
    with output_lock(out), executor:  # Ray is reached (or refused) before the first file is written
        (out / "cells").mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sweep.json", cfg.to_dict())
        tick = rep.task("sweep cells")
        done: dict[str, dict[str, Any]] = {}
        pending = []
        for cell in todo:
            if cell_file(out, cell).is_file():
                done[cell["name"]] = json.loads(cell_file(out, cell).read_text())
                tick(len(done), len(todo), cell=cell["name"])
            else:
                pending.append(cell)
                # a cell killed mid-run (Ctrl-C on Ray, a lost node) can leave its run directory's lock behind,
                # naming a host that may not run it again; holding the sweep's lock, we are its only writer
                lock_path(run_dir_of(out, cell)).unlink(missing_ok=True)
        epochs = cfg.epochs if cfg.epochs is not None else PROTOCOLS[cfg.protocol].epochs
        if pending:
            rep.message(f"sweep: {len(pending)} cells to run ({len(todo) - len(pending)} already done), {epochs} "
                        f"epochs each, {cfg.jobs if not cfg.ray else 'Ray'} at once; the time estimate follows the "
                        f"first cell")
        t0 = time.perf_counter()
        estimated = False
        for ran, (cell, record) in enumerate(executor.run(run_cell, pending, cfg), start=1):
            atomic_write_json(cell_file(out, cell), record)
            done[cell["name"]] = record
            elapsed = time.perf_counter() - t0  # wall time per finished cell: parallel cells make it shorter
            if not estimated and record["method"] != "zeroshot" and ran < len(pending):
                estimated = True  # a tuned cell's wall time, spread over the cells running at once
                at_once = 1 if cfg.ray else max(1, cfg.jobs)
                rest = elapsed / ran * (len(pending) - ran) / (at_once if ran == 1 else 1)
                rep.message(f"sweep: {ran} cells in {elapsed:.0f} s: about {rest / 60:.0f} min for the other "
                            f"{len(pending) - ran} (VisPrompt's cells are slower than the others)")
            tick(len(done), len(todo), cell=cell["name"], top1=record["top1"],
                 eta_min=round(elapsed / ran * (len(pending) - ran) / 60, 1))
        results = [done[c["name"]] for c in todo]  # the cells' order, however they finished
        summary = summarise(results, cfg)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        write_reports(out, results, summary)
    return summary


def summarise(results: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any]:
    """Mean and std of top-1 over seeds for every (row, noise kind, rate); zero-shot as a reference value; seconds
    per cell for each row."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in results:
        if r["method"] != "zeroshot":
            groups.setdefault((r["row"], r["kind"], r["rate"]), []).append(r)
    table = []
    for (row, kind, rate), rs in sorted(groups.items()):
        top = [r["top1"] for r in rs]
        entry = {"row": row, "kind": kind, "rate": rate, "mean": statistics.fmean(top),
                 "std": statistics.stdev(top) if len(top) > 1 else 0.0, "n": len(top)}
        for k in ("ot_precision", "ot_recall"):
            vals = [r[k] for r in rs if k in r]
            if vals:
                entry[k] = statistics.fmean(vals)
        table.append(entry)
    zs = [r["top1"] for r in results if r["method"] == "zeroshot"]
    add_gain_kept(table, statistics.fmean(zs) if zs else None, results)
    seconds: dict[str, list[float]] = {}
    for r in results:
        seconds.setdefault(r["row"], []).append(r.get("time_s", 0.0))
    return {"table": table, "zeroshot": statistics.fmean(zs) if zs else None,
            "zeroshot_std": statistics.stdev(zs) if len(zs) > 1 else 0.0, "cells": len(results),
            "seconds_per_cell": {k: round(statistics.fmean(v), 2) for k, v in sorted(seconds.items())},
            "cell_seconds": round(sum(sum(v) for v in seconds.values()), 1), **sweep_identity(cfg),
            "seeds": cfg.seeds}


CLEAN_REFERENCE = "coop-ce"  # gain kept is measured against clean-label CoOp with cross-entropy


def gain_kept(noisy: float, zeroshot: float, clean: float) -> float | None:
    """(noisy-label accuracy - zero-shot) / (clean-label CoOp - zero-shot); None when tuning gained nothing clean."""
    return (noisy - zeroshot) / (clean - zeroshot) if clean - zeroshot > 1e-9 else None


def add_gain_kept(table: list[dict[str, Any]], zeroshot: float | None, results: list[dict[str, Any]]) -> None:
    """Add ``gain_kept`` (from the seed means) and ``gain_kept_std`` (over per-seed ratios) to every table entry.

    The reference is clean-label CoOp-CE of the same sweep (same shots and seeds); without it, or without
    zero-shot, the entries get None.
    """
    clean = {r["seed"]: r["top1"] for r in results if r["row"] == CLEAN_REFERENCE and r["rate"] == 0}
    zs = {r["seed"]: r["top1"] for r in results if r["method"] == "zeroshot"}
    for t in table:
        t["gain_kept"] = t["gain_kept_std"] = None
        if zeroshot is None or not clean:
            continue
        t["gain_kept"] = gain_kept(t["mean"], zeroshot, statistics.fmean(clean.values()))
        per_seed = [g for r in results if r["row"] == t["row"] and r["kind"] == t["kind"] and r["rate"] == t["rate"]
                    and r["seed"] in clean and (g := gain_kept(r["top1"], zs.get(r["seed"], zeroshot),
                                                               clean[r["seed"]])) is not None]
        t["gain_kept_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


def markdown(summary: dict[str, Any]) -> str:
    """A paper-style table: rows = methods, columns = noise settings, cells = mean ± std top-1 (%)."""
    cols = sorted({(t["kind"], t["rate"]) for t in summary["table"]}, key=lambda c: (c[0] != "sym", c[0], c[1]))
    rows = sorted({t["row"] for t in summary["table"]}, key=lambda r: (r != "coop-ce", r))
    cell = {(t["row"], t["kind"], t["rate"]): t for t in summary["table"]}
    names = [f"{k} {100 * r:g}%" for k, r in cols]
    lines = []
    for row in rows:
        vals = {n: (f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}" if (t := cell.get((row, *c))) else "–")
                for n, c in zip(names, cols, strict=True)}
        lines.append({"method": row, **vals})
    if summary["zeroshot"] is not None:
        lines.append({"method": "zeroshot (no labels)", **dict.fromkeys(names, f"{100 * summary['zeroshot']:.1f}")})
    text = markdown_table(lines, ["method", *names]) + "\n"
    if any(t.get("gain_kept") is not None for t in summary["table"]):
        kept = [{"method": row, **{n: f"{100 * t['gain_kept']:.0f} %" if (t := cell.get((row, *c))) and
                                   t.get("gain_kept") is not None else "–" for n, c in zip(names, cols, strict=True)}}
                for row in rows]
        text += (f"\nGain kept: (top-1 - zero-shot) / (clean {CLEAN_REFERENCE} - zero-shot), from the seed means; "
                 f"100 % keeps all of clean tuning's gain, 0 % is the zero-shot prior, below 0 is worse than it:\n\n")
        text += markdown_table(kept, ["method", *names]) + "\n"
    split = [{"method": row, **{n: f"{t['ot_precision']:.2f} / {t['ot_recall']:.2f}" if (t := cell.get((row, *c)))
                                and "ot_precision" in t else "–" for n, c in zip(names, cols, strict=True)}}
             for row in rows if any("ot_precision" in cell.get((row, *c), {}) for c in cols)]
    if split:  # the OT clean/noisy split of the last epoch, against the known clean mask
        text += "\nOT split, clean precision / recall (last epoch, mean over seeds):\n\n"
        text += markdown_table(split, ["method", *names]) + "\n"
    return text


def write_reports(out: Path, results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """results.json, results.md, results.csv and one PNG per noise kind (when matplotlib is installed)."""
    atomic_write_json(out / "results.json", {"summary": summary, "cells": results})
    atomic_write_text(out / "results.md", markdown(summary))
    rows = [{"method": t["row"], "noise_kind": t["kind"], "noise_rate": t["rate"], "mean_top1": round(t["mean"], 4),
             "std_top1": round(t["std"], 4), "seeds": t["n"],
             "gain_kept": None if t.get("gain_kept") is None else round(t["gain_kept"], 4)}
            for t in summary["table"]]
    if summary["zeroshot"] is not None:
        rows.append({"method": "zeroshot", "noise_kind": "none", "noise_rate": 0,
                     "mean_top1": round(summary["zeroshot"], 4), "std_top1": round(summary["zeroshot_std"], 4),
                     "seeds": summary["seeds"], "gain_kept": 0.0})
    atomic_write_text(out / "results.csv", csv(rows))
    from edgeprompt._optional import available

    if available("matplotlib"):
        for kind in sorted({t["kind"] for t in summary["table"]}):
            plot(summary, kind, out / f"accuracy_vs_noise_{kind}.png")


def plot(summary: dict[str, Any], kind: str, path: Path) -> Path:
    """Accuracy against noise rate, one line per method with a ±std band, zero-shot dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_gain = any(t.get("gain_kept") is not None for t in summary["table"])
    fig, axes = plt.subplots(1, 2 if with_gain else 1, figsize=(11 if with_gain else 6, 4), dpi=120, squeeze=False)
    ax = axes[0, 0]
    for row in sorted({t["row"] for t in summary["table"]}):
        pts = sorted((t["rate"], t["mean"], t["std"], t.get("gain_kept")) for t in summary["table"]
                     if t["row"] == row and t["kind"] == kind)
        if not pts:
            continue
        x = [100 * p[0] for p in pts]
        y = [100 * p[1] for p in pts]
        s = [100 * p[2] for p in pts]
        line = ax.plot(x, y, marker="o", label=row)[0]
        if with_gain:
            gx = [xi for xi, p in zip(x, pts, strict=True) if p[3] is not None]
            axes[0, 1].plot(gx, [100 * p[3] for p in pts if p[3] is not None], marker="o", color=line.get_color(),
                            label=row)
        ax.fill_between(x, [a - b for a, b in zip(y, s, strict=True)], [a + b for a, b in zip(y, s, strict=True)],
                        alpha=0.15)
    if summary["zeroshot"] is not None:
        ax.axhline(100 * summary["zeroshot"], color="grey", linestyle="--", label="zero-shot")
    ax.set_xlabel(f"{kind} label noise (%)")
    ax.set_ylabel("clean test top-1 (%)")
    ax.set_title(f"{summary['model']} / {summary['pretrained']}, {summary['shots']} shots, {summary['seeds']} seeds, "
                 f"{summary['protocol']} protocol", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if with_gain:
        g = axes[0, 1]
        g.axhline(0, color="grey", linestyle="--", label="zero-shot")
        g.axhline(100, color="black", linestyle=":", label=f"clean {CLEAN_REFERENCE}")
        g.set_xlabel(f"{kind} label noise (%)")
        g.set_ylabel("gain kept (% of clean tuning's gain)")
        g.grid(alpha=0.3)
        g.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

