"""The tuning pipeline: labeled folder -> few-shot, noisy labels -> cached features -> fit -> run directory.

``tune`` is what ``edgeprompt tune`` (and every sweep cell) runs; ``evaluate`` is ``edgeprompt eval``. The run
directory is built in ``OUT.partial`` (kept across an interrupt, so the same command resumes it) and moved into place
by :func:`edgeprompt.fileio.replace_dir` only when complete; one writer at a time holds ``.OUT.lock``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprompt.artifact import SPLIT_FILE, load_run, read_split, run_data, save_state
from edgeprompt.backbone import create_backbone, resolve_device
from edgeprompt.config import COOP_CROP, TuneConfig, resolve_tune
from edgeprompt.data import apply_noise, load_labeled, parse_noise
from edgeprompt.data.fewshot import sample_checked
from edgeprompt.data.folder import LabeledSet, image_side, match_classes
from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.features.cache import AugmentSpec, FeatureCache, check_cache_dir, image_checks
from edgeprompt.fileio import atomic_write_json, guard_output, output_lock, replace_dir
from edgeprompt.manifest import Manifest
from edgeprompt.methods import create_method
from edgeprompt.methods.base import batched_logits, build_config, method_config_class
from edgeprompt.methods.zeroshot import zero_shot_logits
from edgeprompt.progress import NullReporter, Reporter
from edgeprompt.train.evaluate import classification_report, noisy_train_report
from edgeprompt.train.trainer import EvalSet, TrainSet, fit

log = logging.getLogger(__name__)


def _prepare_workdir(out: Path, resolved: dict[str, Any], overwrite: bool) -> Path:
    """``OUT.partial`` for an unfinished run: kept when its config matches (resume), recreated otherwise."""
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite, or choose another --out")
    work = out.with_name(out.name + ".partial")
    cfg_path = work / "config.json"
    if work.is_dir():
        try:
            same = json.loads(cfg_path.read_text()) == resolved
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not cfg_path.is_file():
        atomic_write_json(cfg_path, resolved)
    return work


def load_tuning_set(cfg: TuneConfig, rep: Reporter) -> tuple[LabeledSet, LabeledSet, list[int], list[bool]]:
    """All labeled samples, the few-shot subset, its given (possibly noisy) labels and the clean mask."""
    noise = parse_noise(cfg.noise)
    # index the folder without decoding it, then check only the images the run uses (remembered in the cache)
    data = load_labeled(cfg.train, strict=cfg.strict, classnames_file=cfg.classnames_file, check_images=False)
    few = sample_checked(data, cfg.shots, cfg.train_cfg.seed, strict=cfg.strict, checks=image_checks(cfg.cache_dir),
                         progress=rep.task("checking images"))
    given, clean = apply_noise(few.labels, few.num_classes, noise, cfg.train_cfg.seed, few.classnames)
    return data, few, given, clean


def tune(cfg: TuneConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Tune ``cfg.method`` on a labeled folder and write the run directory ``cfg.out`` (atomically).

    Returns a summary: run directory, sample counts, final metrics, validation accuracy, time.
    """
    rep = reporter or NullReporter()
    t_start = time.perf_counter()
    inputs = {"the training data": cfg.train, "the validation data": cfg.val}
    out = guard_output(cfg.out, "run directory", inputs, overwrite=cfg.overwrite)
    check_cache_dir(cfg.cache_dir, inputs)
    with output_lock(out):
        return _tune(cfg, out, rep, t_start)


def _tune(cfg: TuneConfig, out: Path, rep: Reporter, t_start: float) -> dict[str, Any]:
    # every check and all the reading comes first: nothing is written at OUT until the tuning itself starts
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite, or choose another --out")
    cfg.validate()  # every value the user gave (the protocol's fill-ins are checked again below)
    build_config(cfg.method, cfg.options)  # unknown method/options fail before any work
    data, few, given, clean = load_tuning_set(cfg, rep)
    val = None
    if cfg.val:
        val = match_classes(few.classnames, load_labeled(cfg.val, strict=cfg.strict,
                                                               checks=image_checks(cfg.cache_dir)), "validation set")

    torch.manual_seed(cfg.train_cfg.seed)
    device = resolve_device(cfg.train_cfg.device)
    backbone = create_backbone(cfg.model, cfg.pretrained, device)
    cache = FeatureCache(backbone, cfg.cache_dir)
    names = [f.name for f in dataclasses.fields(method_config_class(cfg.method))]
    context_note, centre = None, None
    if "class_specific" in names and "class_specific" not in cfg.options and cfg.protocol == "default":
        centre, _ = cache.features(few.paths, None, False, rep.task("encoding train (centre)"))
        pred = zero_shot_logits(backbone, list(few.classnames), centre).argmax(-1).numpy()
        unknown = unknown_names(pred, few.num_classes)
        use_csc = len(unknown) >= AUTO_CSC_SHARE * few.num_classes
        cfg = dataclasses.replace(cfg, method_options={**cfg.options, "class_specific": use_csc})
        context_note = context_choice(unknown, few.classnames, use_csc)
        (log.warning if use_csc else log.info)("%s", context_note)
    cfg = resolve_tune(cfg, image_side(few.paths), names)  # protocol defaults, crop scale from the image size
    cfg.train_cfg.validate()
    method_cfg = build_config(cfg.method, cfg.options)
    method = create_method(cfg.method, backbone, list(few.classnames), **_asdict(method_cfg)).to(device)
    tokens = method.needs_tokens
    aug = AugmentSpec(views=cfg.views, scale=(float(cfg.crop_scale or COOP_CROP), 1.0))
    pooled, tok = cache.features(few.paths, aug, tokens, rep.task("encoding train views"))
    if centre is not None and not tokens:  # read once already, for the choice of context
        eval_pooled, eval_tok = centre, None
    else:
        eval_pooled, eval_tok = cache.features(few.paths, None, tokens, rep.task("encoding train (centre)"))
    val_set = None
    if val is not None:
        vp, vt = cache.features(val.paths, None, tokens, rep.task("encoding validation"))
        val_set = EvalSet(vp, torch.tensor(val.labels), vt)
    train_set = TrainSet(pooled, torch.tensor(given), tok, torch.tensor(few.labels), eval_pooled, eval_tok)

    # what defines the result (the overwrite flag does not, so it never blocks a resume)
    resolved = {k: v for k, v in cfg.to_dict().items() if k != "overwrite"} | {"method_options": _asdict(method_cfg)}
    work = _prepare_workdir(out, resolved, cfg.overwrite)
    tick = rep.task(f"tuning {cfg.method}")
    epochs = int(cfg.train_cfg.epochs or 0) if method.trainable else 0

    def on_epoch(rec: dict[str, Any]) -> None:
        tick(rec["epoch"], epochs, **{k: v for k, v in rec.items() if k in ("loss", "train_acc", "val_acc")})

    start_pred = _predictions(method, train_set)  # the start (the zero-shot prior, with the template init)
    history = fit(method, train_set, cfg.train_cfg, work, val_set, on_epoch) if epochs else []
    verdict = None
    if epochs:
        end_pred, labels = _predictions(method, train_set), train_set.labels.cpu()
        resolved_opts = _asdict(method_cfg)
        verdict = learning_verdict(float((start_pred == labels).float().mean()),
                                   float((end_pred == labels).float().mean()), few.num_classes,
                                   bool(resolved_opts.get("class_specific", False)),
                                   moved=float((start_pred != end_pred).float().mean()),
                                   plain_ce=cfg.method == "coop" and resolved_opts.get("loss") == "ce")
    if verdict:
        log.warning("%s", verdict)
    (work / "checkpoint.pt").unlink(missing_ok=True)
    (work / "metrics.jsonl").touch()
    files = save_state(method, work)
    noise = parse_noise(cfg.noise)
    atomic_write_json(work / SPLIT_FILE, {
        "root": str(few.root.resolve()) if few.root else None,
        "paths": [str(p.resolve()) for p in few.paths],  # absolute: `eval --train` works from any directory
        "given_labels": given,
        "true_labels": list(few.labels),
        "noise": str(noise),
    })
    n_flipped = int(sum(not c for c in clean))
    manifest = Manifest(
        kind="run", method=cfg.method, backbone=backbone.ref, classnames=few.classnames,
        preprocess=backbone.preprocess, logit_scale=backbone.logit_scale, files=files,
        extra={"method_config": _asdict(method_cfg), "noise": str(noise), "shots": cfg.shots, "protocol": cfg.protocol,
               "n_train": len(few), "n_flipped": n_flipped, "seed": cfg.train_cfg.seed},
    )
    manifest.write(work)
    replace_dir(work, out)
    log.info("wrote the run directory %s (%s, %d epochs, lr %g)", out, cfg.method, len(history), cfg.train_cfg.lr)
    final = history[-1] if history else {}
    return {
        "run_dir": str(out), "method": cfg.method, "protocol": cfg.protocol, "model": cfg.model,
        "pretrained": cfg.pretrained, "classes": few.num_classes, "n_train": len(few), "n_flipped": n_flipped,
        "noise": str(noise), "epochs": len(history), "final_loss": final.get("loss"),
        "val_acc": final.get("val_acc"), "skipped_files": len(few.skipped), "warning": verdict,
        "context": context_note,
        "cache": {"hits": cache.hits, "misses": cache.misses, "bytes_read": cache.store.bytes_read,
                  "bytes_used": cache.bytes_used}, "time_s": round(time.perf_counter() - t_start, 2),
    }


def _predictions(method: Any, data: TrainSet) -> torch.Tensor:
    """(N,) top-1 class of ``method`` on the centre views of its tuning samples."""
    return batched_logits(method, data.eval_pooled, data.eval_tokens).argmax(-1).cpu()


# --csc when neither --csc nor --shared-ctx is given (default protocol only; the papers' keeps its shared context):
# a class whose name the zero-shot prompt predicts for fewer than UNKNOWN_NAME_SHARE of its fair share of the tuning
# images is a name the model does not know, and a context shared by all classes cannot rename it (docs/defaults.md,
# "Shared or class-specific context"); when at least AUTO_CSC_SHARE of the classes are such names, each class gets
# its own context. Counting predictions, not correct ones, keeps the rule blind to label noise.
UNKNOWN_NAME_SHARE = 0.25
AUTO_CSC_SHARE = 0.25


def unknown_names(pred: np.ndarray, num_classes: int) -> list[int]:
    """Classes the zero-shot prompt predicts for fewer than UNKNOWN_NAME_SHARE x N / C of the N images."""
    counts = np.bincount(pred, minlength=num_classes)
    return [c for c in range(num_classes) if counts[c] < UNKNOWN_NAME_SHARE * len(pred) / num_classes]


def context_choice(unknown: list[int], classnames: Sequence[str], csc: bool) -> str:
    """The one line that says which context the tune chose, and why."""
    shown = ", ".join(repr(classnames[c]) for c in unknown[:4]) + (" …" if len(unknown) > 4 else "")
    if csc:
        return (f"{len(unknown)} of {len(classnames)} class names look unknown to the model (the zero-shot prompt "
                f"almost never predicts {shown}): using class-specific context, which can learn names "
                f"(--shared-ctx keeps one context)")
    return (f"shared context: the zero-shot prompt predicts {len(classnames) - len(unknown)} of {len(classnames)} "
            f"classes{f' (rarely {shown})' if unknown else ''} (--csc gives each class its own)")


# a tune that changed at least this share of its tuning samples' predictions moved the prompt: if it fits the labels
# no better than its start, the labels disagree with the images (cross-entropy at 75 % noise), not the rate
MOVED_SHARE = 0.1


def learning_verdict(start: float, end: float, num_classes: int, class_specific: bool = False,
                     moved: float = 0.0, plain_ce: bool = True) -> str | None:
    """One line when a tune learned nothing, else None.

    ``start`` and ``end`` are top-1 against the given labels on the centre views of the tuning samples, before and
    after training; ``moved`` the share of those samples whose prediction changed. At chance (under twice 1/C) the
    class names mean nothing to the model and the shared context cannot rename them. No better than the start with
    few predictions changed means the optimiser did not move the prompt (a bounded loss at a small learning rate,
    too few epochs); with many changed, the prompt moved without fitting the labels, which is what labels that
    disagree with their images do (cross-entropy then follows them; a robust method may have gained on the truth,
    which the noisy labels cannot show: at 75 % noise over 20 classes, +10 points of true accuracy is +2 of
    agreement). ``plain_ce``: the run used cross-entropy on every label. What to try: docs/defaults.md.
    """
    chance = 1.0 / num_classes
    if num_classes >= 3 and end < 2 * chance and class_specific:
        return (f"the tuned prompt stayed at chance: {100 * end:.0f} % of its own tuning labels with {num_classes} "
                f"classes (chance {100 * chance:.0f} %), even with a context per class: try more --epochs or a "
                f"larger --lr, and check that the labels match the images")
    if num_classes >= 3 and end < 2 * chance:
        return (f"the tuned prompt stayed at chance: {100 * end:.0f} % of its own tuning labels with {num_classes} "
                f"classes (chance {100 * chance:.0f} %); the class names probably mean nothing to the model: try "
                f"class-specific context, which can learn new names (--csc; with noisy labels --method nlprompt --csc)")
    if end - start >= 0.02 or end >= 0.95:
        return None
    if moved >= MOVED_SHARE:
        return (f"the tuned prompt changed {100 * moved:.0f} % of its predictions but fits its own tuning labels no "
                f"better than its start ({100 * start:.0f} % -> {100 * end:.0f} %): many labels probably disagree "
                f"with their images; check them with `edgeprompt audit`"
                + (" and tune with a noise-robust method (--method nlprompt)" if plain_ce else
                   ", and judge the run on clean labeled images (`edgeprompt eval RUN TEST`): a robust method can "
                   "gain there while the noisy labels cannot show it"))
    return (f"the tuned prompt learned nothing over its start: {100 * start:.0f} % -> {100 * end:.0f} % of its "
            f"own tuning labels; try a larger --lr or more --epochs (robust losses move the prompt slowly)")


def _asdict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def evaluate(run_dir: str | Path, test: str | Path | None = None, *, on_train: bool = False, strict: bool = False,
             cache_dir: str | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Top-1, per-class accuracy and confusion matrix of a run on ``test`` (a labeled folder or CSV).

    With ``on_train``, evaluates on the run's own tuning samples instead and adds accuracy on clean and on flipped
    samples separately (against the true labels).
    """
    rep = reporter or NullReporter()
    if (test is None) == (not on_train):
        raise ConfigError("pass a TEST_DIR, or --train to evaluate on the run's tuning samples (not both)")
    check_cache_dir(cache_dir, {"the test data": test, **run_data(run_dir)})
    run = load_run(run_dir, device=str(resolve_device("auto")))
    classnames = list(run.manifest.classnames)
    given = None
    if on_train:
        split = read_split(run_dir)
        paths = [Path(p) for p in split["paths"]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ArtifactError(f"{len(missing)} tuning image(s) of {run_dir} are gone (first: {missing[0]}): "
                                f"--train needs the images the run was tuned on")
        target, given = np.array(split["true_labels"]), np.array(split["given_labels"])
    else:
        checked = load_labeled(test, strict=strict, checks=image_checks(cache_dir))  # type: ignore[arg-type]
        data = match_classes(classnames, checked, "test set")
        paths, target = list(data.paths), np.array(data.labels)
    cache = FeatureCache(run.backbone, cache_dir)
    pooled, tokens = cache.features(paths, None, run.method.needs_tokens, rep.task("encoding"))
    pred = batched_logits(run.method, pooled, tokens).argmax(-1).numpy()
    report = classification_report(pred, target, classnames)
    report.update(run_dir=str(run_dir), method=run.manifest.method, split="train" if on_train else str(test))
    if given is not None:
        report["noisy"] = noisy_train_report(pred, given, target)
    return report
