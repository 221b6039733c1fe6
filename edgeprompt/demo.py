"""``edgeprompt demo``: the whole story on the shipped world, offline, in a few minutes on a laptop CPU.

Zero-shot CLIP (the prior), CoOp on clean labels (what tuning can gain), CoOp at 50 % symmetric noise (what noise
does to cross-entropy), DSPT, NLPrompt and VisPrompt at the same noise (what robustness keeps, as the share of the
clean gain each keeps: :func:`edgeprompt.sweep.run.gain_kept`); then the run of the method recommended for noisy
labels (``config.RECOMMENDED_NOISY_METHOD``) is
exported to ONNX and the bundle is checked on the test split with the torch-free runtime. It composes the other
commands' library functions and adds no logic of its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeprompt.progress import NullReporter, Reporter

# (row label, method, options, noise or None for the demo's --noise, epochs or None for the protocol's): the story
# the table tells, in order, each with default flags (the world's images are upside down, which one shared context
# learns; docs/world.md). VisPrompt runs 25 epochs: its text encoder runs once per (image, class), and at 50 epochs
# its row alone took 116 of the demo's 175 s; the label says so.
DEMO_ROWS: tuple[tuple[str, str, dict, str | None, int | None], ...] = (
    ("zero-shot", "zeroshot", {}, "none", None),
    ("CoOp, clean labels", "coop", {}, "none", None),
    ("CoOp", "coop", {}, None, None),
    ("DSPT", "dspt", {}, None, None),
    ("NLPrompt", "nlprompt", {}, None, None),
    ("VisPrompt (25 epochs)", "visprompt", {}, None, 25),
)


def run_demo(out: str | Path = "edgeprompt-demo", *, noise: str = "sym:0.5", shots: int = 16,
             epochs: int | None = None, seed: int = 0, export: bool = True,
             reporter: Reporter | None = None) -> dict[str, Any]:
    """Generate the world, tune each row of :data:`DEMO_ROWS`, evaluate on the clean test split, export the run of
    the method recommended for noisy labels.

    Args:
        out: working folder (data, runs, cache, bundle); rerunning reuses its data and feature cache.
        noise: the label noise of the noisy rows.
        shots: samples per class.
        epochs: epochs per tuned method (None: the default protocol's, or the row's own where it has one).
        seed: the seed of the few-shot draw, the noise and the training.
        export: export the recommended noisy-label method's run and check the bundle.
        reporter: progress.

    Returns:
        ``rows`` (one per table row), ``export`` (bundle check) and ``time_s``.
    """
    from edgeprompt.config import TrainConfig, TuneConfig
    from edgeprompt.train.run import evaluate, tune
    from edgeprompt.world.shapes import write_dataset

    rep = reporter or NullReporter()
    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    if not _current_world(data, seed):  # absent, or written by another version of the world (other class names)
        write_dataset(data, task="shape", per_class=max(shots, 16), seed=seed, overwrite=True,
                      progress=rep.task("rendering the shapes world"))
    cache = str(out / "cache")
    rows = []
    for label, method, options, row_noise, row_epochs in DEMO_ROWS:
        row_noise = noise if row_noise is None else row_noise
        run_dir = out / "runs" / f"{method}-{row_noise.replace(':', '')}"
        train_cfg = TrainConfig(epochs=row_epochs if epochs is None else epochs, seed=seed, eval_every=0)
        res = tune(TuneConfig(train=str(data / "train"), out=str(run_dir), method=method, method_options=options,
                              shots=shots, noise=row_noise, cache_dir=cache, overwrite=True, train_cfg=train_cfg), rep)
        test = evaluate(run_dir, data / "test", cache_dir=cache)
        noisy = evaluate(run_dir, on_train=True, cache_dir=cache)["noisy"]
        rows.append({"label": label, "method": method, "noise": res["noise"], "run_dir": str(run_dir),
                     "test_top1": test["top1"], "train_acc_clean": noisy["acc_clean"],
                     "flipped_memorized": noisy["memorized_flipped"], "n_train": res["n_train"],
                     "n_flipped": res["n_flipped"], "tune_s": res["time_s"]})
    from edgeprompt.sweep.run import gain_kept

    zs = next(r["test_top1"] for r in rows if r["method"] == "zeroshot")
    clean = next(r["test_top1"] for r in rows if r["method"] == "coop" and r["noise"] == "none")
    for r in rows:
        r["gain_kept"] = gain_kept(r["test_top1"], zs, clean) if r["method"] != "zeroshot" else 0.0
    result: dict[str, Any] = {"out": str(out), "data": str(data), "classes": test["classnames"], "noise": noise,
                              "rows": rows}
    if export:
        from edgeprompt.config import RECOMMENDED_NOISY_METHOD

        best = next(r for r in rows if r["method"] == RECOMMENDED_NOISY_METHOD)
        result["export"] = _export_and_check(Path(best["run_dir"]), out / "bundle", data / "test",
                                             best["test_top1"], rep)
        result["export"]["method"] = best["label"]
    result["time_s"] = round(time.perf_counter() - t0, 1)
    return result


def _current_world(data: Path, seed: int) -> bool:
    """Whether ``data`` holds this version's shapes world for ``seed`` (its ``world.json`` says so)."""
    import json

    from edgeprompt.world.shapes import classnames

    try:
        record = json.loads((data / "world.json").read_text())
    except (OSError, ValueError):
        return False
    return (data / "test").is_dir() and record.get("classes") == classnames("shape") and record.get("seed") == seed


def _export_and_check(run_dir: Path, bundle: Path, test: Path, torch_top1: float, rep: Reporter) -> dict[str, Any]:
    """Export ``run_dir`` and compare the bundle's top-1 on ``test`` (torch-free runtime) with torch's."""
    from edgeprompt._optional import available, install_hint

    if not (available("onnx") and available("onnxruntime")):
        return {"skipped": f"onnx / onnxruntime not installed: {install_hint('export')}"}
    from edgeprompt.config import ExportConfig
    from edgeprompt.data import load_labeled
    from edgeprompt.export import export
    from edgeprompt.runtime import load_bundle

    info = export(ExportConfig(source=str(run_dir), out=str(bundle), overwrite=True), rep)
    data = load_labeled(test)
    with load_bundle(bundle) as predictor:
        probs = predictor.probabilities(list(data.paths))
        backend = predictor.runtime.name
    names = list(predictor.classnames)
    hits = [names[int(p.argmax())] == data.classnames[y] for p, y in zip(probs, data.labels, strict=True)]
    return {"bundle": str(bundle), "backend": backend, "bundle_test_top1": sum(hits) / len(hits),
            "torch_test_top1": torch_top1, "parity": info.get("parity")}
