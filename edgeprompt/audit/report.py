"""The audit's report folder and the corrected manifest (the files a person and a script read).

```
REPORT/
  issues.csv          every sample, most suspicious first: path, given, suggested, suggested_prob, score, flagged
  audit.json          summary (noise rate, noise matrix, counts) and every sample's numbers
  report.md           the summary, the top suspects, the confused class pairs; links the two pictures
  contact_sheet.png   thumbnails of the top suspects: given -> suggested, score   (matplotlib: the plot extra)
  noise_matrix.png    the estimated P(true | given) heat map
```
The user's folder is never touched; ``--write-fixed FILE`` writes a new ``path,label`` CSV that ``edgeprompt tune``
reads like any manifest.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.config import AuditConfig, TrainConfig
from edgeprompt.data.folder import LabeledSet
from edgeprompt.fileio import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from edgeprompt.progress import Reporter
from edgeprompt.tables import csv as csv_text
from edgeprompt.tables import markdown_table

log = logging.getLogger(__name__)


def sample_rows(data: LabeledSet, probs: np.ndarray, cl: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per sample, most likely mislabeled first (score = 1 - label quality)."""
    names = data.classnames
    suggested = probs.argmax(1)
    rows = []
    for i, p in enumerate(data.paths):
        rows.append({"path": str(Path(p).resolve()), "given": names[data.labels[i]], "suggested": names[suggested[i]],
                     "suggested_prob": round(float(probs[i, suggested[i]]), 4),
                     "score": round(1.0 - float(cl["quality"][i]), 4), "flagged": bool(cl["flagged"][i])})
    return sorted(rows, key=lambda r: (not r["flagged"], -r["score"]))


def fixed_rows(rows: list[dict[str, Any]], cfg: AuditConfig) -> tuple[list[dict[str, str]], int, int]:
    """The corrected manifest (flagged samples relabelled when sure enough, else dropped), with both counts."""
    out, relabelled, dropped = [], 0, 0
    for r in rows:
        if not r["flagged"]:
            out.append({"path": r["path"], "label": r["given"]})
        elif not cfg.drop and r["suggested"] != r["given"] and r["suggested_prob"] >= cfg.relabel_threshold:
            out.append({"path": r["path"], "label": r["suggested"]})
            relabelled += 1
        else:
            dropped += 1
    return sorted(out, key=lambda r: r["path"]), relabelled, dropped


def write_report(cfg: AuditConfig, data: LabeledSet, probs: np.ndarray, cl: dict[str, Any], train_cfg: TrainConfig,
                 seconds: float, rep: Reporter) -> dict[str, Any]:
    """Write the report folder atomically (and the fixed manifest); returns the summary dict."""
    from edgeprompt._optional import available

    rows = sample_rows(data, probs, cl)
    joint = cl["joint"]
    given_marginal = joint.sum(1, keepdims=True)
    noise_matrix = np.divide(joint, given_marginal, out=np.zeros_like(joint), where=given_marginal > 0)
    names = list(data.classnames)
    pairs = sorted(((joint[i, j], names[i], names[j]) for i in range(len(names)) for j in range(len(names))
                    if i != j and joint[i, j] > 0), reverse=True)[:10]
    summary: dict[str, Any] = {
        "train": str(cfg.train), "n": len(data), "classes": names, "method": cfg.method, "folds": cfg.folds,
        "epochs": train_cfg.epochs, "prior_weight": cl["prior_weight"], "prior_weight_chosen": cfg.prior_weight is None,
        "prior_agreement": {f"{w:g}": round(a, 4) for w, a in cl["prior_agreement"].items()},
        "estimated_noise_rate": round(float(1.0 - np.trace(joint)), 4),
        "flagged": int(cl["flagged"].sum()), "flagged_frac": round(float(cl["flagged"].mean()), 4),
        "noise_matrix": np.round(noise_matrix, 4).tolist(), "noise_matrix_axes": "rows: given label; columns: "
        "estimated true label; each row sums to 1",
        "confused_pairs": [{"given": a, "true": b, "joint": round(float(v), 4)} for v, a, b in pairs],
        "top_issues": rows[: min(10, len(rows))], "time_s": round(seconds, 1),
        "scorer": cfg.scorer, **cl["assessment"],
    }
    summary["verdict"] = verdict(summary)
    out = Path(cfg.out)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        atomic_write_text(tmp / "issues.csv", csv_text(rows, ["path", "given", "suggested", "suggested_prob", "score",
                                                              "flagged"]))
        atomic_write_json(tmp / "audit.json", {"summary": summary, "samples": rows})
        pictures = available("matplotlib")
        if pictures:
            contact_sheet([r for r in rows if r["flagged"]][: cfg.top], tmp / "contact_sheet.png")
            heat_map(noise_matrix, names, tmp / "noise_matrix.png")
        atomic_write_text(tmp / "report.md", report_markdown(summary, rows, cfg, pictures))
        summary["files"] = {f.name: str(out / f.name) for f in tmp.iterdir()}
    if cfg.write_fixed and not summary["reliable"] and not cfg.force_fixed:
        log.warning("no fixed manifest written: %s (--force-fixed writes it anyway)", summary["verdict"])
        summary["fixed"] = None
    elif cfg.write_fixed:
        fixed, relabelled, dropped = fixed_rows(rows, cfg)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["path", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(fixed)
        atomic_write_bytes(cfg.write_fixed, buf.getvalue().encode())
        summary["fixed"] = {"file": str(cfg.write_fixed), "rows": len(fixed), "relabelled": relabelled,
                            "dropped": dropped}
    rep.message(f"audit of {len(data)} labels: {summary['verdict']}; report in {out}")
    return summary


def verdict(summary: dict[str, Any]) -> str:
    """The one line a person reads first: the estimate, or why there is none to trust."""
    clf, lab = 100 * summary["classifier_accuracy_est"], 100 * summary["label_accuracy_est"]
    if summary["reliable"]:
        return (f"estimated noise rate {100 * summary['estimated_noise_rate']:.1f} %, {summary['flagged']} labels "
                f"flagged (the audit's classifier, about {clf:.0f} % accurate, beats the labels' estimated "
                f"{lab:.0f} %)")
    return (f"the audit cannot judge these labels: its classifier is about {clf:.0f} % accurate, not clearly above "
            f"the labels' estimated {lab:.0f} %, so its {summary['flagged']} flags and its noise rate are not "
            f"trustworthy; read the ranking as a review order, not a verdict (a stronger --model, or more images)")


def report_markdown(summary: dict[str, Any], rows: list[dict[str, Any]], cfg: AuditConfig, pictures: bool) -> str:
    """report.md: what was estimated, the top suspects, the most confused pairs."""
    top = [{**r, "path": Path(r["path"]).name} for r in rows[:20]]
    scorer = (f"a logistic-regression probe on the frozen features (C = {cfg.probe_c:g})" if cfg.scorer == "probe"
              else f"{cfg.method} tuned")
    chosen = ""
    if summary["prior_weight_chosen"]:
        shown = ", ".join(f"{w}: {100 * a:.1f} %" for w, a in summary["prior_agreement"].items())
        chosen = f" (the candidate whose top-1 agrees most with the given labels; {shown})"
    parts = [
        f"# Label audit of {summary['train']}\n",
        f"{summary['n']} labels, {len(summary['classes'])} classes. **{summary['verdict'][0].upper()}"
        f"{summary['verdict'][1:]}.**\n",
        f"Out-of-sample probabilities: {scorer} on {cfg.folds - 1} of {cfg.folds} folds, mixed with the zero-shot "
        f"prior at weight {summary['prior_weight']:g}{chosen}; flags and the noise estimate by confident learning. "
        f"The classifier's accuracy is estimated from its own confidence, the labels' as 1 minus the estimated noise "
        f"rate.\n",
        "## Most likely wrong\n", markdown_table(top, ["path", "given", "suggested", "suggested_prob", "score"]), "\n",
        "## Most confused pairs (estimated joint of given and true label)\n",
        markdown_table(summary["confused_pairs"], ["given", "true", "joint"]) or "none", "\n",
    ]
    if pictures:
        parts += ["## Pictures\n", "![top suspects](contact_sheet.png)\n", "![noise matrix](noise_matrix.png)\n"]
    return "\n".join(parts)


def contact_sheet(rows: list[dict[str, Any]], path: Path, cols: int = 8) -> None:
    """Thumbnails of ``rows`` with 'given -> suggested (score)' under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    n = max(len(rows), 1)
    r = (n + cols - 1) // cols
    fig, axes = plt.subplots(r, cols, figsize=(cols * 1.6, r * 1.9), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        with Image.open(row["path"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{row['given']}\n-> {row['suggested']}\n{row['score']:.2f}", fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def heat_map(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """The estimated noise matrix P(true | given) as a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.35 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("estimated true label")
    ax.set_ylabel("given label")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
