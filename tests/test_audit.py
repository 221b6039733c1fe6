"""``edgeprompt audit``: out-of-sample scores, confident learning, the report folder, the corrected manifest."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.config import AuditConfig
from tests.conftest import make_folder


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file()}


def _cfg(data: Path, out: Path, model: str, cache: Path, **kw: object) -> AuditConfig:
    return AuditConfig(train=str(data), out=str(out), model=model, pretrained="none", folds=2, epochs=2, views=1,
                       method_options={"n_ctx": 4}, cache_dir=str(cache), **kw)  # type: ignore[arg-type]


def test_stratified_folds_balance_every_class() -> None:
    from edgeprompt.audit.run import stratified_folds

    labels = np.repeat([0, 1, 2], [7, 4, 9])
    folds = stratified_folds(labels, 3, seed=0)
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1  # each class spread over the folds as evenly as it can be
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=0))


def test_a_samples_own_label_never_shapes_its_score(tiny_model: str, tmp_path: Path, cache_dir: Path) -> None:
    """Out of sample: flip one sample's given label and its probabilities stay exactly the same."""
    from edgeprompt.audit.run import Features, out_of_sample_probs, stratified_folds
    from edgeprompt.backbone import create_backbone
    from edgeprompt.config import TrainConfig
    from edgeprompt.data import load_labeled
    from edgeprompt.features.cache import AugmentSpec, FeatureCache
    from edgeprompt.progress import NullReporter

    data = load_labeled(make_folder(tmp_path / "d", per_class=4))
    bb = create_backbone(tiny_model, "none")
    cache = FeatureCache(bb, cache_dir)
    views, _ = cache.features(data.paths, AugmentSpec(views=1))
    centre, _ = cache.features(data.paths)
    feats = Features(views, centre, None, None)
    cfg = _cfg(Path("d"), Path("o"), tiny_model, cache_dir, method="coop")
    folds = stratified_folds(np.asarray(data.labels), 2, 0)
    opts = {"n_ctx": 4}
    train = TrainConfig(epochs=2, batch_size=4, eval_every=0, lr=0.002)  # resolved, as audit() passes it
    ref = out_of_sample_probs(cfg, data, feats, bb, opts, train, NullReporter(), folds)
    i = 0
    flipped = dataclasses.replace(data, labels=((data.labels[0] + 1) % 3, *data.labels[1:]))
    got = out_of_sample_probs(cfg, flipped, feats, bb, opts, train, NullReporter(), folds)
    assert np.array_equal(got[i], ref[i])  # its fold's prompt never saw sample 0's label
    other = folds != folds[i]
    assert not np.allclose(got[other], ref[other])  # the samples that did see it are scored by a changed prompt


def test_confident_learning_finds_planted_flips() -> None:
    from edgeprompt.audit.run import confident_learning

    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(4), 50)
    probs = np.full((200, 4), 0.05) + np.eye(4)[true] * 0.8 + rng.random((200, 4)) * 0.05
    probs /= probs.sum(1, keepdims=True)
    given = true.copy()
    flip = rng.choice(200, 40, replace=False)
    given[flip] = (given[flip] + 1) % 4
    cl = confident_learning(given, probs)
    assert set(np.flatnonzero(cl["flagged"])) == set(flip.tolist())
    assert cl["joint"].sum() == pytest.approx(1.0) and 1 - np.trace(cl["joint"]) == pytest.approx(0.2, abs=0.02)
    assert (cl["quality"][flip].max() < np.delete(cl["quality"], flip).min())


def test_the_prior_weight_drops_a_confidently_wrong_prior_and_keeps_a_helpful_one() -> None:
    """World v3.1's zero-shot prior reads pairs of classes the wrong way round: mixed at a fixed 0.5 it outvoted a
    97 %-accurate probe and flagged 267 of 640 clean labels. The chosen weight must drop such a prior, keep one
    that repairs a weak classifier, and leave a weight the user gave alone."""
    from edgeprompt.audit.run import choose_prior_weight, confident_learning

    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(8), 40)
    given = true.copy()
    flip = rng.choice(len(true), 80, replace=False)  # 25 % symmetric noise
    given[flip] = (given[flip] + rng.integers(1, 8, len(flip))) % 8
    probe = np.full((len(true), 8), 0.02) + np.eye(8)[true] * 0.86  # strong, fairly confident
    swapped = true ^ 1  # classes 0<->1, 2<->3, ...: the prior reads every pair backwards
    prior = np.where(true[:, None] < 4, np.eye(8)[swapped] * 0.97 + 0.03 / 8, np.eye(8)[true] * 0.5 + 0.5 / 8)
    w, agreement = choose_prior_weight(probe, prior, given)
    assert w == 0.0 and agreement[0.5] < agreement[0.0]
    flagged = confident_learning(given, probe)["flagged"]
    wrong = confident_learning(given, 0.5 * probe + 0.5 * prior)["flagged"]
    assert (flagged == (given != true)).mean() > 0.95 and (wrong == (given != true)).mean() < 0.8  # why it matters
    weak = np.full((len(true), 8), 1 / 8) + rng.normal(0, 0.05, (len(true), 8))  # a classifier near chance
    good_prior = np.eye(8)[true] * 0.6 + 0.4 / 8
    w, _ = choose_prior_weight(np.clip(weak, 0, None), good_prior, given)
    assert w > 0.0
    assert choose_prior_weight(probe, prior, given, 0.5)[0] == 0.5  # --prior-weight 0.5 is kept


def test_audit_report_fixed_manifest_and_untouched_data(tiny_model: str, tmp_path: Path, cache_dir: Path) -> None:
    from edgeprompt.audit.run import audit
    from edgeprompt.config import TrainConfig, TuneConfig
    from edgeprompt.train.run import tune

    data = make_folder(tmp_path / "d", per_class=6)
    before = _tree(data)
    fixed = tmp_path / "fixed.csv"
    # a random-weight model cannot judge labels: the audit says so and writes no "fixed" manifest on its own
    weak = audit(_cfg(data, tmp_path / "weak", tiny_model, cache_dir, method="coop", write_fixed=str(fixed)))
    assert not weak["reliable"] and weak["fixed"] is None and not fixed.exists()
    assert weak["verdict"].startswith("the audit cannot judge these labels")
    assert weak["verdict"] in (tmp_path / "weak" / "report.md").read_text().replace("**", "").lower() or \
        "cannot judge" in (tmp_path / "weak" / "report.md").read_text()
    res = audit(_cfg(data, tmp_path / "rep", tiny_model, cache_dir, method="coop", write_fixed=str(fixed),
                     force_fixed=True))
    assert _tree(data) == before  # the user's folder is never written
    rep = tmp_path / "rep"
    assert {"issues.csv", "audit.json", "report.md", "contact_sheet.png", "noise_matrix.png"} <= \
        {p.name for p in rep.iterdir()}
    rows = list(csv.DictReader((rep / "issues.csv").open()))
    assert len(rows) == 18 and [r["flagged"] for r in rows] == sorted((r["flagged"] for r in rows), reverse=True)
    flagged = [float(r["score"]) for r in rows if r["flagged"] == "True"]
    assert flagged == sorted(flagged, reverse=True) and {r["given"] for r in rows} == {"red", "green", "blue"}
    summary = json.loads((rep / "audit.json").read_text())["summary"]
    m = np.array(summary["noise_matrix"])
    assert m.shape == (3, 3) and np.allclose(m.sum(1)[m.sum(1) > 0], 1.0, atol=1e-3)
    assert 0.0 <= summary["estimated_noise_rate"] <= 1.0 and summary["flagged"] == res["flagged"]
    fixed_rows = list(csv.DictReader(fixed.open()))
    assert len(fixed_rows) == 18 - res["fixed"]["dropped"]
    # the loop: audit -> fix -> tune again, on the corrected manifest like any CSV
    out = tune(TuneConfig(train=str(fixed), out=str(tmp_path / "run"), method="coop", model=tiny_model,
                          pretrained="none", shots=0, views=1, cache_dir=str(cache_dir), method_options={"n_ctx": 4},
                          train_cfg=TrainConfig(epochs=1, batch_size=4, eval_every=0)))
    assert out["n_train"] == len(fixed_rows)


def test_audit_cli_on_real_looking_problems(tiny_model: str, tmp_path: Path, cache_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import run_cli

    data = make_folder(tmp_path / "d", per_class=4)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "purple").mkdir()
    before = _tree(data)
    args = ["audit", str(data), "--out", str(tmp_path / "rep"), "--model", tiny_model, "--pretrained", "none",
            "--folds", "2", "--epochs", "1", "--cache-dir", str(cache_dir), "--opt", "n_ctx=4", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "Traceback" not in err and "broken.jpg" in err and "purple" in err
    assert json.loads(out.strip().splitlines()[-1])["n"] == 12 and _tree(data) == before
    code, out, err = run_cli(args[:3] + [str(data / "rep")] + args[4:], capsys)  # a report inside the data
    assert code == 2 and "overlaps the audited data" in err and not (data / "rep").exists()
    code, _, err = run_cli(args + ["--folds", "5", "--overwrite"], capsys)
    assert code == 2 and "fewer than --folds 5" in err


def test_probe_scores_are_out_of_sample_and_the_audit_knows_its_strength() -> None:
    import torch

    from edgeprompt.audit.run import Features, probe_agreement, probe_probs, self_assessment, stratified_folds

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 3
    labels = np.repeat(np.arange(4), 12)
    views = torch.tensor(centres[labels][:, None] + rng.standard_normal((48, 3, 16)), dtype=torch.float32)
    feats = Features(views, views.mean(1), None, None)
    folds = stratified_folds(labels, 4, 0)
    probs = probe_probs(feats, labels, folds, 10.0, 0)
    assert probs.shape == (48, 4) and np.allclose(probs.sum(1), 1) and (probs.argmax(1) == labels).mean() > 0.9
    flipped = labels.copy()
    flipped[5] = (labels[5] + 1) % 4  # a sample's own label never shapes its own row
    assert np.array_equal(probe_probs(feats, flipped, folds, 10.0, 0)[5], probs[5])
    # two half-data probes on well-separated features agree: the audit knows it is strong, without any label
    agree = probe_agreement(feats, labels, folds, 10.0, 0)
    assert agree > 0.95
    joint = np.diag([0.225] * 4) + 0.025 / 3 * (1 - np.eye(4))  # labels 90 % right
    strong = self_assessment(agree, joint)
    assert strong["reliable"] and strong["label_accuracy_est"] == pytest.approx(0.9)
    # agreement a = c^2 + (1 - c)^2 / 3 is read back as c
    c = 0.6
    weak = self_assessment(c * c + (1 - c) ** 2 / 3, joint)
    assert weak["classifier_accuracy_est"] == pytest.approx(c, abs=1e-4) and not weak["reliable"]
    clean = self_assessment(agree, np.eye(4) / 4)  # labels that look clean: a strong classifier is enough
    assert clean["reliable"] and not self_assessment(0.5, np.eye(4) / 4)["reliable"]


def test_a_missing_scikit_learn_names_the_audit_extra(monkeypatch) -> None:  # noqa: ANN001
    import sys

    from edgeprompt.audit.run import _probe
    from edgeprompt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    with pytest.raises(MissingDependencyError, match=r'the audit\'s probe\): pip install "edgeprompt\[audit\]"'):
        _probe(1.0, 0)
