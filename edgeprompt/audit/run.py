"""``edgeprompt audit``: which labels of a folder are wrong, what they should be, and how noisy the set is.

No ground truth is needed. Every sample gets an out-of-sample class distribution: the set is split into K
stratified folds, a robust prompt (DSPT by default) is tuned on the other K - 1 folds from the cached frozen
features and predicts the held-out fold, so a sample's own given label never shapes its own score; the zero-shot
prior (which sees no labels at all) is mixed in. Confident learning (Northcutt et al., "Confident Learning:
Estimating Uncertainty in Dataset Labels", JAIR 2021, through ``cleanlab``) then flags the likely label issues,
estimates the joint of (given, true) labels, hence the noise rate and the class-to-class noise matrix. Why these
choices, and how well they work on the offline world: docs/audit.md.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprompt._optional import install_hint, require
from edgeprompt.artifact import run_data
from edgeprompt.backbone import create_backbone, resolve_device
from edgeprompt.config import AuditConfig, TrainConfig, resolve_tune
from edgeprompt.data import load_labeled
from edgeprompt.data.folder import LabeledSet, image_side
from edgeprompt.errors import ConfigError, MissingDependencyError
from edgeprompt.features.cache import AugmentSpec, FeatureCache, check_cache_dir, image_checks
from edgeprompt.fileio import check_not_inside, check_writable_parent, guard_output, output_lock
from edgeprompt.methods import create_method
from edgeprompt.methods.base import batched_logits, build_config, method_config_class, stored_options
from edgeprompt.methods.zeroshot import zero_shot_logits
from edgeprompt.progress import NullReporter, Reporter
from edgeprompt.train.trainer import TrainSet, fit


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in 0..k-1: each class's samples are shuffled and dealt round-robin, so folds are balanced."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + offset) % k  # the offset spreads small classes over all folds
        offset += len(idx)
    return folds


@dataclasses.dataclass
class Features:
    """Cached frozen features of every sample: views (N, V, E) [+ tokens] for tuning, centre (N, E) [+ tokens]."""

    views: torch.Tensor
    centre: torch.Tensor
    view_tokens: torch.Tensor | None
    centre_tokens: torch.Tensor | None


def out_of_sample_probs(cfg: AuditConfig, data: LabeledSet, feats: Features, backbone: Any, method_opts: dict,
                        train_cfg: TrainConfig, rep: Reporter, folds: np.ndarray | None = None) -> np.ndarray:
    """(N, C) probabilities, each row from a prompt tuned without that sample (K-fold cross-fitting).

    ``folds`` (N,) fold indices; default :func:`stratified_folds` of the given labels.
    """
    given = torch.tensor(data.labels)
    if folds is None:
        folds = stratified_folds(given.numpy(), cfg.folds, cfg.seed)
    probs = np.zeros((len(data), data.num_classes), dtype=np.float64)
    tick = rep.task(f"tuning {cfg.method} on {cfg.folds} folds")
    for k in range(cfg.folds):
        held, kept = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        torch.manual_seed(cfg.seed + k)
        method = create_method(cfg.method, backbone, list(data.classnames), **method_opts)
        sub = TrainSet(feats.views[kept], given[kept], feats.view_tokens[kept] if feats.view_tokens is not None
                       else None, None, feats.centre[kept],
                       feats.centre_tokens[kept] if feats.centre_tokens is not None else None)
        with tempfile.TemporaryDirectory(prefix="edgeprompt-audit-") as work:
            fit(method, sub, dataclasses.replace(train_cfg, seed=cfg.seed + k), Path(work))
        tok = feats.centre_tokens[held] if feats.centre_tokens is not None else None
        probs[held] = batched_logits(method, feats.centre[held], tok).softmax(-1).double().numpy()
        tick(k + 1, cfg.folds)
    return probs


def _unit_centre(feats: Features) -> np.ndarray:
    """(N, E) centre-view features at unit norm, as CLIP compares them (what every probe is fitted on)."""
    return torch.nn.functional.normalize(feats.centre.float(), dim=-1).numpy()


def _probe(c: float, seed: int) -> Any:
    """An unfitted multinomial logistic regression (scikit-learn's solver, not ours: it is the reference)."""
    LogisticRegression = require("sklearn.linear_model", "audit", "the audit's probe").LogisticRegression  # noqa: N806
    return LogisticRegression(C=c, max_iter=3000, random_state=seed)


def probe_probs(feats: Features, given: np.ndarray, folds: np.ndarray, c: float, seed: int,
                rep: Reporter | None = None) -> np.ndarray:
    """(N, C) out-of-sample probabilities of a logistic-regression probe on the frozen features (CLIPCleaner's view).

    For each fold, a multinomial logistic regression is fitted on the other folds' centre views with their given
    labels and predicts the held-out fold's centre views; features are unit-normalised, as CLIP compares them. Why a
    probe: at few shots it is the strongest classifier the frozen features allow (a prompt is a far more constrained
    one), and the audit can only flag a label when its classifier is more often right than the labels are
    (docs/audit.md). Centre views, not the augmented ones: fitted on the cropped views the probe was less precise
    on world v3 (0.88 against 0.94 at 25 % noise, data seed 0), the views being another distribution than the
    centre views it scores.
    """
    centre = _unit_centre(feats)
    k_classes = int(given.max()) + 1 if len(given) else 0
    probs = np.zeros((len(centre), k_classes), dtype=np.float64)
    tick = rep.task(f"fitting the probe on {folds.max() + 1} folds") if rep else None
    for k in range(int(folds.max()) + 1):
        held, kept = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        clf = _probe(c, seed).fit(centre[kept], given[kept])
        p = np.zeros((len(held), k_classes))
        p[:, clf.classes_] = clf.predict_proba(centre[held])
        probs[held] = p
        if tick:
            tick(k + 1, int(folds.max()) + 1)
    return probs


def probe_agreement(feats: Features, given: np.ndarray, folds: np.ndarray, c: float, seed: int) -> float:
    """How often two probes fitted on disjoint halves of the other folds agree on each held-out fold (no labels
    of the scored samples are used, and none are compared with)."""
    centre = _unit_centre(feats)
    same, total = 0, 0
    for k in range(int(folds.max()) + 1):
        held, kept = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        halves = [kept[(np.arange(len(kept)) % 2) == h] for h in (0, 1)]
        if any(len(np.unique(given[h])) < 2 for h in halves):
            continue
        preds = [_probe(c, seed).fit(centre[h], given[h]).predict(centre[held]) for h in halves]
        same += int((preds[0] == preds[1]).sum())
        total += len(held)
    return same / total if total else 0.0


def self_assessment(agreement: float, joint: np.ndarray) -> dict[str, Any]:
    """Whether the audit's classifier is strong enough to judge these labels.

    Confident learning can call a label wrong only when its classifier is right more often than the labels are.
    The labels' accuracy is 1 minus the estimated noise rate. The classifier's is estimated without any label:
    two probes fitted on disjoint halves of the data agree on a held-out sample with probability about
    c^2 + (1 - c)^2 / (K - 1) when each is right with probability c (errors spread over the other classes), so c is
    read off their agreement. It estimates a half-data probe, a lower bound for the audit's own. A model that does
    not know the data gives probes that disagree; label noise, being the same for both halves, moves them less.
    The audit is *reliable* when c beats the labels' accuracy by ``MARGIN`` (or, for labels that look clean, when
    c is at least ``STRONG``: then there is nothing for it to beat).
    """
    k = joint.shape[0]
    q = 1.0 / max(k - 1, 1)
    # (1 + q) c^2 - 2 q c + q - agreement = 0, the root above chance
    disc = max(q * q - (1 + q) * (q - agreement), 0.0)
    est = float(np.clip((q + disc**0.5) / (1 + q), 0.0, 1.0))
    label_acc = float(np.trace(joint))
    return {"classifier_accuracy_est": round(est, 4), "label_accuracy_est": round(label_acc, 4),
            "probe_agreement": round(agreement, 4), "reliable": bool(est >= min(label_acc + MARGIN, STRONG))}


MARGIN = 0.05  # the classifier must beat the labels by this much for its flags and noise rate to be trusted
STRONG = 0.95  # ... or be at least this accurate (labels that look clean leave nothing to beat)


# candidate weights of the zero-shot prior (--prior-weight unset). On world v3.1 the prior reads four pairs of
# classes the wrong way round, confidently: a fixed 0.5 flagged 267 of 640 clean labels there (docs/audit.md)
PRIOR_WEIGHTS = (0.0, 0.1, 0.25, 0.5)


def choose_prior_weight(fold_probs: np.ndarray, prior: np.ndarray, given: np.ndarray,
                        fixed: float | None = None) -> tuple[float, dict[float, float]]:
    """The prior's weight: ``fixed`` when given, else the candidate whose mixture's top-1 agrees most with the given
    labels (ties: the smaller weight), and each candidate's agreement.

    Both parts are out of sample (the fold predictions never saw the sample's label, the prior saw none), so the
    agreement ranks the mixtures as classifiers of unseen labels. With symmetric noise at rate eta over C classes the
    expected agreement is eta / (C - 1) + acc * (1 - eta C / (C - 1)), increasing in the classifier's accuracy while
    the labels are better than chance, so noisy labels do not change the ranking. Top-1 agreement, not likelihood:
    the likelihood of a noisy label rewards any smoothing, a wrong prior's too.
    """
    candidates = PRIOR_WEIGHTS if fixed is None else (float(fixed),)
    agreement = {w: float((((1 - w) * fold_probs + w * prior).argmax(1) == given).mean()) for w in candidates}
    best = max(candidates, key=lambda w: (agreement[w], -w))
    return best, agreement


def zero_shot_probs(backbone: Any, data: LabeledSet, centre: torch.Tensor) -> np.ndarray:
    """(N, C) zero-shot probabilities: the prior that has seen no label."""
    return zero_shot_logits(backbone, list(data.classnames), centre).softmax(-1).double().numpy()


def confident_learning(given: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Flags, label-quality scores and the (given, true) joint from ``cleanlab`` (confident learning).

    Returns:
        ``flagged`` (N,) bool, ``quality`` (N,) in [0, 1] (low = likely wrong), ``joint`` (C, C) with rows the
        given label and columns the true one, summing to 1.
    """
    try:
        from cleanlab.count import estimate_joint
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as e:
        raise MissingDependencyError(f"the label audit needs cleanlab: {install_hint('audit')}") from e
    probs = np.clip(probs, 1e-12, None)
    probs = probs / probs.sum(1, keepdims=True)
    flagged = find_label_issues(given, probs, filter_by="prune_by_noise_rate")
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    joint = estimate_joint(given, probs)
    return {"flagged": np.asarray(flagged, bool), "quality": np.asarray(quality, float), "joint": joint}


def recipe_from_run(cfg: AuditConfig, run_dir: str | Path) -> AuditConfig:
    """``cfg`` with the backbone, method, options and protocol of a tuned run (the audit still re-fits per fold)."""
    from edgeprompt.manifest import Manifest

    manifest = Manifest.read(run_dir)
    if manifest.kind != "run":
        from edgeprompt.errors import ArtifactError

        raise ArtifactError(f"--run {run_dir} is a {manifest.kind}, not a run directory from `edgeprompt tune`")
    return dataclasses.replace(cfg, model=manifest.backbone.model, pretrained=manifest.backbone.pretrained or "none",
                               method=manifest.method,
                               method_options=stored_options(manifest.method, manifest.extra.get("method_config", {})),
                               protocol=manifest.extra.get("protocol", cfg.protocol))


def audit(cfg: AuditConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Score every label of ``cfg.train`` and write the report folder ``cfg.out`` (see the module docstring).

    Returns:
        The summary: sample and class counts, estimated noise rate, flagged count, the top issues, the noise
        matrix, file paths, time.
    """
    from edgeprompt.audit.report import write_report

    rep = reporter or NullReporter()
    t0 = time.perf_counter()
    cfg.validate()
    if cfg.run is not None:
        cfg = recipe_from_run(cfg, cfg.run)
    inputs = {"the audited data": cfg.train, **(run_data(cfg.run) if cfg.run else {})}
    out = guard_output(cfg.out, "audit report", inputs, overwrite=cfg.overwrite)
    check_cache_dir(cfg.cache_dir, inputs)
    if cfg.write_fixed:
        check_not_inside(cfg.write_fixed, inputs, "--write-fixed")
        check_writable_parent(Path(cfg.write_fixed), "--write-fixed")
        if Path(cfg.write_fixed).exists() and not cfg.overwrite:
            raise ConfigError(f"{cfg.write_fixed} already exists: pass --overwrite, or choose another --write-fixed")
    build_config(cfg.method, cfg.options)
    data = load_labeled(cfg.train, strict=cfg.strict, progress=rep.task("checking images"),
                        checks=image_checks(cfg.cache_dir))
    if min(data.counts()) < cfg.folds:
        raise ConfigError(f"a class has only {min(data.counts())} images, fewer than --folds {cfg.folds}: lower "
                          f"--folds or add images")
    names = [f.name for f in dataclasses.fields(method_config_class(cfg.method))]
    from edgeprompt.config import TuneConfig

    tune_view = resolve_tune(TuneConfig(train=cfg.train, out=cfg.out, method=cfg.method,
                                        method_options=cfg.method_options, protocol=cfg.protocol,
                                        crop_scale=cfg.crop_scale,
                                        train_cfg=TrainConfig(epochs=cfg.epochs, seed=cfg.seed, eval_every=0)),
                             image_side(data.paths), names)
    train_cfg = tune_view.train_cfg
    method_opts = dataclasses.asdict(build_config(cfg.method, tune_view.options))

    device = resolve_device(cfg.device)
    backbone = create_backbone(cfg.model, cfg.pretrained, device)
    method = create_method(cfg.method, backbone, list(data.classnames), **method_opts)
    cache = FeatureCache(backbone, cfg.cache_dir)
    centre, ctok = cache.features(data.paths, None, method.needs_tokens, rep.task("encoding (centre)"))
    views, vtok = centre[:, None], ctok[:, None] if ctok is not None else None  # the probe needs no crops
    if cfg.scorer == "prompt":  # a prompt tunes on augmented views, as tune does
        aug = AugmentSpec(views=cfg.views, scale=(float(tune_view.crop_scale or 0.08), 1.0))
        views, vtok = cache.features(data.paths, aug, method.needs_tokens, rep.task("encoding views"))
    feats = Features(views, centre, vtok, ctok)

    given = np.asarray(data.labels)
    folds = stratified_folds(given, cfg.folds, cfg.seed)
    if cfg.scorer == "probe":
        fold_probs = probe_probs(feats, given, folds, cfg.probe_c, cfg.seed, rep)
    else:
        fold_probs = out_of_sample_probs(cfg, data, feats, backbone, method_opts, train_cfg, rep, folds)
    prior = zero_shot_probs(backbone, data, centre)
    weight, agreement = choose_prior_weight(fold_probs, prior, given, cfg.prior_weight)
    probs = (1 - weight) * fold_probs + weight * prior
    cl = confident_learning(given, probs)
    cl["prior_weight"], cl["prior_agreement"] = weight, agreement
    cl["assessment"] = self_assessment(probe_agreement(feats, given, folds, cfg.probe_c, cfg.seed), cl["joint"])
    with output_lock(out):
        return write_report(cfg, data, probs, cl, train_cfg, time.perf_counter() - t0, rep)
