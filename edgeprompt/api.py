"""One function per CLI verb. Torch-free at import: each function imports the stage it needs.

The CLI (``edgeprompt.cli``) only parses options, calls these and renders the returned dicts.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeprompt.config import TuneConfig
from edgeprompt.errors import ConfigError
from edgeprompt.progress import NullReporter, Reporter


def _prepare_workdir(out: Path, resolved: dict[str, Any], overwrite: bool) -> Path:
    """``OUT.partial`` for an unfinished run: kept when its config matches (resume), recreated otherwise."""
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite, or choose another --out")
    work = out.with_name(out.name + ".partial")
    cfg_path = work / "config.json"
    if work.is_dir():
        same = cfg_path.is_file() and json.loads(cfg_path.read_text()) == resolved
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not cfg_path.is_file():
        from edgeprompt.fileio import atomic_write_json

        atomic_write_json(cfg_path, resolved)
    return work


def tune(cfg: TuneConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Tune ``cfg.method`` on a labeled folder and write the run directory ``cfg.out`` (atomically).

    Returns a summary: run directory, sample counts, final metrics, validation accuracy, time.
    """
    import torch

    from edgeprompt.artifact import SPLIT_FILE, save_state
    from edgeprompt.backbone import create_backbone
    from edgeprompt.data import apply_noise, load_labeled, parse_noise, sample_few_shot
    from edgeprompt.data.folder import match_classes
    from edgeprompt.fileio import atomic_write_json
    from edgeprompt.manifest import Manifest
    from edgeprompt.methods import create_method
    from edgeprompt.methods.base import build_config
    from edgeprompt.train.cache import AugmentSpec, FeatureCache
    from edgeprompt.train.trainer import EvalSet, TrainSet, fit, resolve_device

    rep = reporter or NullReporter()
    t_start = time.perf_counter()
    cfg.train_cfg.validate()
    method_cfg = build_config(cfg.method, dict(cfg.method_options))  # unknown method/options fail before any work
    noise = parse_noise(cfg.noise)
    data = load_labeled(cfg.train, strict=cfg.strict, classnames_file=cfg.classnames_file,
                        progress=rep.task("checking images"))
    few = sample_few_shot(data, cfg.shots, cfg.train_cfg.seed)
    given, clean = apply_noise(few.labels, few.num_classes, noise, cfg.train_cfg.seed, few.classnames)
    val = None
    if cfg.val:
        val = match_classes(few.classnames, load_labeled(cfg.val, strict=cfg.strict), "validation set")

    out = Path(cfg.out)
    # what defines the result (the overwrite flag does not, so it never blocks a resume)
    resolved = {k: v for k, v in cfg.to_dict().items() if k != "overwrite"} | {"method_options": asdict(method_cfg)}
    work = _prepare_workdir(out, resolved, cfg.overwrite)

    torch.manual_seed(cfg.train_cfg.seed)
    device = resolve_device(cfg.train_cfg.device)
    backbone = create_backbone(cfg.model, cfg.pretrained, device)
    method = create_method(cfg.method, backbone, list(few.classnames), **asdict(method_cfg)).to(device)
    cache = FeatureCache(backbone, cfg.cache_dir)
    tokens = method.needs_tokens
    aug = AugmentSpec(views=cfg.views, scale=(cfg.crop_scale, 1.0))
    pooled, tok = cache.features(few.paths, aug, tokens, rep.task("encoding train views"))
    eval_pooled, eval_tok = cache.features(few.paths, None, tokens, rep.task("encoding train (centre)"))
    val_set = None
    if val is not None:
        vp, vt = cache.features(val.paths, None, tokens, rep.task("encoding validation"))
        val_set = EvalSet(vp, torch.tensor(val.labels), vt)
    train_set = TrainSet(pooled, torch.tensor(given), tok, torch.tensor(few.labels), eval_pooled, eval_tok)

    tick = rep.task(f"tuning {cfg.method}")
    epochs = cfg.train_cfg.epochs if method.trainable else 0

    def on_epoch(rec: dict[str, Any]) -> None:
        tick(rec["epoch"], epochs, **{k: v for k, v in rec.items() if k in ("loss", "train_acc", "val_acc")})

    history = fit(method, train_set, cfg.train_cfg, work, val_set, on_epoch) if epochs else []
    (work / "checkpoint.pt").unlink(missing_ok=True)
    (work / "metrics.jsonl").touch()
    files = save_state(method, work)
    atomic_write_json(work / SPLIT_FILE, {
        "root": str(few.root) if few.root else None,
        "paths": [str(p) for p in few.paths],
        "given_labels": given,
        "true_labels": list(few.labels),
        "noise": str(noise),
    })
    manifest = Manifest(
        kind="run", method=cfg.method, backbone=backbone.ref, classnames=few.classnames,
        preprocess=backbone.preprocess, logit_scale=backbone.logit_scale, files=files,
        extra={"method_config": asdict(method_cfg), "noise": str(noise), "shots": cfg.shots,
               "n_train": len(few), "n_flipped": int(sum(not c for c in clean)), "seed": cfg.train_cfg.seed},
    )
    manifest.write(work)
    if out.exists():  # overwrite was asked for; the new run is complete, so replace the old one now
        shutil.rmtree(out)
    work.rename(out)
    final = history[-1] if history else {}
    return {
        "run_dir": str(out), "method": cfg.method, "model": cfg.model, "pretrained": cfg.pretrained,
        "classes": few.num_classes, "n_train": len(few), "n_flipped": int(sum(not c for c in clean)),
        "noise": str(noise), "epochs": len(history), "final_loss": final.get("loss"),
        "val_acc": final.get("val_acc"), "skipped_files": len(data.skipped),
        "cache": {"hits": cache.hits, "misses": cache.misses}, "time_s": round(time.perf_counter() - t_start, 2),
    }


def evaluate(run_dir: str | Path, test: str | Path | None = None, *, on_train: bool = False,
             strict: bool = False, cache_dir: str | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Top-1, per-class accuracy and confusion matrix of a run on ``test`` (a labeled folder or CSV).

    With ``on_train``, evaluates on the run's own tuning samples instead and adds accuracy on clean and on flipped
    samples separately (against the true labels).
    """
    import numpy as np
    import torch

    from edgeprompt.artifact import SPLIT_FILE, load_run
    from edgeprompt.data import load_labeled
    from edgeprompt.data.folder import match_classes
    from edgeprompt.train.cache import FeatureCache
    from edgeprompt.train.evaluate import classification_report, noisy_train_report
    from edgeprompt.train.trainer import predict

    rep = reporter or NullReporter()
    if (test is None) == (not on_train):
        raise ConfigError("pass a TEST_DIR, or --train to evaluate on the run's tuning samples (not both)")
    run = load_run(run_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    classnames = list(run.manifest.classnames)
    if on_train:
        split = json.loads((Path(run_dir) / SPLIT_FILE).read_text())
        paths = [Path(p) for p in split["paths"]]
        target = np.array(split["true_labels"])
        given = np.array(split["given_labels"])
    else:
        data = match_classes(classnames, load_labeled(test, strict=strict), "test set")  # type: ignore[arg-type]
        paths, target, given = list(data.paths), np.array(data.labels), None
    cache = FeatureCache(run.backbone, cache_dir)
    pooled, tokens = cache.features(paths, None, run.method.needs_tokens, rep.task("encoding"))
    pred = predict(run.method, pooled.to(run.backbone.model.logit_scale.device), tokens).argmax(-1).numpy()
    report = classification_report(pred, target, classnames)
    report.update(run_dir=str(run_dir), method=run.manifest.method, split="train" if on_train else str(test))
    if given is not None:
        report["noisy"] = noisy_train_report(pred, given, target)
    return report


def models() -> dict[str, Any]:
    """Registered methods (with options) and backbones (open_clip names with known pretrained tags)."""
    import dataclasses

    from edgeprompt.backbone import list_backbones
    from edgeprompt.methods import METHODS, list_methods

    methods = {}
    for name, doc in list_methods().items():
        cls = METHODS.get(name).Config
        methods[name] = {"help": doc, "options": {f.name: f.default for f in dataclasses.fields(cls)}}
    return {"methods": methods, "backbones": list_backbones()}


def predict(bundle: str | Path, images: list[str | Path], *, top_k: int = 3, backend: str = "auto") -> dict[str, Any]:
    """Top-k predictions for image files (folders are searched recursively) with a bundle's runtime; no torch."""
    from edgeprompt.data.folder import IMAGE_EXTENSIONS
    from edgeprompt.errors import DataError
    from edgeprompt.runtime import load_bundle

    paths: list[Path] = []
    for item in map(Path, images):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                                and not any(part.startswith(".") for part in p.relative_to(item).parts)))
        elif item.exists():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist")
    if not paths:
        raise DataError("no images to classify: pass image files or folders that contain images")
    with load_bundle(bundle, backend) as predictor:
        preds = predictor.predict(paths, top_k=top_k)
        runtime = predictor.runtime
        return {
            "bundle": str(bundle), "backend": runtime.name, "provider": runtime.provider,
            "predictions": [{"image": str(p), "top": [x.to_dict() for x in top]}
                            for p, top in zip(paths, preds, strict=True)],
        }


def sweep(cfg: Any, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) a noise sweep described by a :class:`edgeprompt.train.sweep.SweepConfig`."""
    from edgeprompt.train.sweep import run_sweep

    return run_sweep(cfg, reporter)


def data_shapes(out: str | Path, *, task: str = "shape", per_class: int = 32, domain: str = "downstream",
                seed: int = 0, image_size: int = 64, overwrite: bool = False,
                reporter: Reporter | None = None) -> dict[str, Any]:
    """Write the offline world's labeled folders ``OUT/train``, ``OUT/val``, ``OUT/test`` (torch-free)."""
    from edgeprompt.world.shapes import write_dataset

    rep = reporter or NullReporter()
    return write_dataset(out, task=task, per_class=per_class, domain=domain, seed=seed, image_size=image_size,
                         overwrite=overwrite, progress=rep.task(f"rendering {task} ({domain})"))


DEMO_METHODS = ("zeroshot", "coop", "dspt")


DEMO_CROP_SCALE = 0.5  # the world's 32-pixel images: CoOp's 0.08 crops often cut the shape out of the view


def demo(out: str | Path = "edgeprompt-demo", *, noise: str = "sym:0.5", shots: int = 16, epochs: int = 200,
         seed: int = 0, export: bool = True, reporter: Reporter | None = None) -> dict[str, Any]:
    """The main job, offline: generate the shapes world, tune zero-shot, CoOp and DSPT on noisy labels, evaluate
    each on the clean test split, then export the DSPT run and check the bundle against the torch evaluation."""
    from edgeprompt.config import TrainConfig

    rep = reporter or NullReporter()
    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "test").is_dir():
        data_shapes(data, task="shape", per_class=max(shots, 16), seed=seed, overwrite=True, reporter=rep)
    cache = str(out / "cache")
    rows = []
    for method in DEMO_METHODS:
        run_dir = out / "runs" / method
        res = tune(TuneConfig(train=str(data / "train"), out=str(run_dir), method=method, shots=shots, noise=noise,
                              cache_dir=cache, overwrite=True, crop_scale=DEMO_CROP_SCALE,
                              train_cfg=TrainConfig(epochs=epochs, seed=seed, eval_every=0)), rep)
        test = evaluate(run_dir, data / "test", cache_dir=cache)
        train = evaluate(run_dir, on_train=True, cache_dir=cache)
        noisy = train["noisy"]
        rows.append({"method": method, "noise": res["noise"], "test_top1": test["top1"],
                     "train_acc_clean": noisy["acc_clean"], "flipped_memorized": noisy["memorized_flipped"],
                     "n_train": res["n_train"], "n_flipped": res["n_flipped"], "tune_s": res["time_s"]})
    result: dict[str, Any] = {"out": str(out), "data": str(data), "classes": test["classnames"], "rows": rows}
    if export:
        result["export"] = _demo_export(out, data, rows, rep)
    result["time_s"] = round(time.perf_counter() - t0, 1)
    return result


def _demo_export(out: Path, data: Path, rows: list[dict[str, Any]], rep: Reporter) -> dict[str, Any]:
    """Export the DSPT run and check the bundle's accuracy on the test split against the torch evaluation."""
    from edgeprompt._optional import available

    if not (available("onnx") and available("onnxruntime")):
        return {"skipped": 'onnx / onnxruntime not installed: pip install "edgeprompt[export]"'}
    bundle = out / "bundle"
    info = export(out / "runs" / "dspt", bundle, overwrite=True, reporter=rep)
    pred = predict(bundle, [data / "test"], top_k=1)
    folders = {p.name: p.name.replace("_", " ") for p in (data / "test").iterdir() if p.is_dir()}
    hits = [item["top"][0]["label"] == folders[Path(item["image"]).parent.name] for item in pred["predictions"]]
    torch_top1 = next(r["test_top1"] for r in rows if r["method"] == "dspt")
    return {"bundle": str(bundle), "backend": pred["backend"], "bundle_test_top1": sum(hits) / len(hits),
            "torch_test_top1": torch_top1, "parity": info.get("parity")}


def export(source: str | Path, out: str | Path | None = None, *, onnx: bool = True, trt: bool = False,
           fp16: bool = False, opset: int = 17, max_batch: int = 32, n_check: int = 32, overwrite: bool = False,
           reporter: Reporter | None = None) -> dict[str, Any]:
    """Export a run directory into a bundle (workstation, torch; default ``RUN-bundle``), or build the TensorRT
    engine of an existing bundle in place (``source`` is a bundle; on the target, no torch)."""
    from edgeprompt.export import export as run_export

    return run_export(source, out, onnx=onnx, trt=trt, fp16=fp16, opset=opset, max_batch=max_batch,
                      n_check=n_check, overwrite=overwrite, reporter=reporter)

def bench(bundle: str | Path, data: str | Path | None = None, *, backends: list[str] | None = None,
          batches: list[int] | None = None, warmup: int = 10, iters: int = 50, seconds: float | None = None,
          max_images: int | None = None, out: str | Path | None = None,
          reporter: Reporter | None = None) -> dict[str, Any]:
    """Latency and accuracy of a bundle on every available backend; with ``out``, writes bench.json + bench.md."""
    from edgeprompt.bench.run import BACKENDS, report_markdown
    from edgeprompt.bench.run import bench as run_bench
    from edgeprompt.fileio import atomic_write_json, atomic_write_text

    result = run_bench(bundle, data, backends=backends or BACKENDS, batches=batches or [1, 8, 32], warmup=warmup,
                       iters=iters, seconds=seconds, max_images=max_images, reporter=reporter)
    if out is not None:
        atomic_write_json(Path(out) / "bench.json", result)
        atomic_write_text(Path(out) / "bench.md", report_markdown(result))
    return result
