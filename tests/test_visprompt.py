"""VisPrompt: Sinkhorn / OT split, the cross-modal block, exact per-image text encoding, frozen backbone, tune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprompt.backbone import cosine_logits
from edgeprompt.methods import FeatureBatch, create_method
from edgeprompt.methods.ot import EpochSplit, class_floor, ot_split, sinkhorn_log, split_quality
from edgeprompt.methods.visprompt import VisPromptConfig, resolve_heads

CLASSES = ["red", "green apple", "blue", "a very long class name with many words"]


# --- OT ---------------------------------------------------------------------------------------------------------
def clip_like(k: int, shots: int = 16, noise: float = 0.5, seed: int = 0, margin: float = 0.03):
    """Synthetic CLIP logits (scale 100, cosines ~0.25 ± 0.01, true class +margin) with symmetric label noise.

    Returns logits (N, K), true labels, given labels; exactly floor(noise * N) samples get another class.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(shots)
    n = len(y)
    cos = 0.25 + 0.01 * torch.randn(n, k, generator=g)
    cos[torch.arange(n), y] += margin
    flip = torch.randperm(n, generator=g)[: int(noise * n)]
    given = y.clone()
    given[flip] = (y[flip] + torch.randint(1, k, (len(flip),), generator=g)) % k  # uniform over the other classes
    return 100 * cos, y, given


def sinkhorn_reference(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Textbook scaling-vector Sinkhorn (only stable for a mild eps): the log-domain solver must agree."""
    kernel = torch.exp(-cost / eps)
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(iters):
        u = a / (kernel @ v)
        v = b / (kernel.t() @ u)
    return u[:, None] * kernel * v[None, :]


def test_sinkhorn_marginals_and_reference() -> None:
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(60, 7, generator=g, dtype=torch.float64)
    a, b = torch.full((60,), 1 / 60, dtype=torch.float64), torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    b = b / b.sum()
    plan, info = sinkhorn_log(cost, a, b, eps=0.05, max_iter=5000, tol=1e-10)
    assert info["converged"] and info["err_rows"] < 1e-9 and info["err_cols"] < 1e-9
    assert torch.allclose(plan.sum(1), a, atol=1e-10) and torch.allclose(plan.sum(0), b, atol=1e-10)
    assert torch.allclose(plan, sinkhorn_reference(cost, a, b, 0.05, 5000), atol=1e-10)


def test_sinkhorn_clip_scale_stays_finite() -> None:
    # eps = 0.01 on costs of tens of nats: the classic kernel underflows, the log-domain plan keeps the marginals
    logits, _, _ = clip_like(20)
    lp = logits.double().log_softmax(-1)
    n, k = lp.shape
    assert (torch.exp(lp / 0.01) == 0).any(), "the test should exercise kernel underflow"
    a, b = torch.full((n,), 1 / n, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64)
    plan, info = sinkhorn_log(-lp, a, b, eps=0.01, max_iter=1000)
    assert torch.isfinite(plan).all() and info["iterations"] <= 1000
    assert info["err_cols"] < 1e-9  # exact after the last column update
    assert info["err_rows"] < 1e-2 and abs(float(plan.sum()) - 1) < 1e-9


@pytest.mark.parametrize("k,seed", [(10, 0), (16, 1), (20, 2)])
def test_global_ot_split_precision_at_half_symmetric_noise(k: int, seed: int) -> None:
    logits, y, given = clip_like(k, seed=seed)
    clean, pseudo, info = ot_split(logits.log_softmax(-1), given, eps=0.01, max_iter=1000)
    q = split_quality(clean, given == y)
    assert q["precision"] >= 0.95, q
    assert q["recall"] >= 0.6, q
    assert float((pseudo == y).float().mean()) >= 0.7
    assert 0.0 < info["clean_frac"] < 0.6


def test_class_floor_recovers_classes_a_swapped_prior_hides() -> None:
    """A prompt that reads classes 0 and 1 the wrong way round (the world's upside-down pairs): the OT split, being
    class-balanced, calls none of their samples clean; the floor gives each back its likeliest samples under the
    given label, which are the truly clean ones, and leaves the other classes and the OT's picks alone."""
    logits, y, given = clip_like(8, noise=0.25, seed=3, margin=0.05)
    swapped = y < 2
    logits[swapped, 1 - y[swapped]] = logits[swapped, y[swapped]] + 5.0  # the other one of the pair wins by 5 nats
    lp = logits.log_softmax(-1)
    raw, _, _ = ot_split(lp, given)
    floored = class_floor(raw, lp, given)
    assert int(torch.bincount(given[raw], minlength=8)[:2].sum()) <= 2  # the swap hides classes 0 and 1
    want = torch.round(torch.bincount(given, minlength=8) * raw.double().mean()).long()  # (K,) the floors
    have = torch.bincount(given[floored], minlength=8)
    assert bool((have >= want).all()) and torch.equal(have[:2], want[:2])  # a hidden class gets exactly its floor
    assert bool((floored | ~raw).all())  # nothing the OT called clean is dropped
    met = (torch.bincount(given[raw], minlength=8) >= want)[given]  # (N,) sample's class already met its floor
    assert torch.equal(floored[met], raw[met])  # those classes are left alone
    added = floored & ~raw
    assert int(added.sum()) >= 14 and float((given[added] == y[added]).double().mean()) >= 0.85  # noise rate: 0.25
    half = class_floor(raw, lp, given, 0.5)  # a share of the floor: half of each class's fair part
    count = torch.bincount(given, minlength=8)
    half_want = torch.round(0.5 * count[:2] * raw.double().mean()).long()
    assert torch.equal(torch.bincount(given[half], minlength=8)[:2], half_want)
    assert torch.equal(class_floor(raw, lp, given, 0.0), raw)


def test_split_quality_counts() -> None:
    q = split_quality(torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([1, 0, 1, 0], dtype=torch.bool))
    assert q["precision"] == 0.5 and q["recall"] == 0.5 and q["accuracy"] == 0.5 and q["noisy_precision"] == 0.5
    assert split_quality(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))["precision"] == 0.0


# --- the method -------------------------------------------------------------------------------------------------
def feats(backbone, b: int = 3, seed: int = 0) -> FeatureBatch:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    size = backbone.preprocess.image_size
    pooled, tokens = backbone.encode_image(torch.randn(b, 3, size, size, generator=g), with_tokens=True)
    return FeatureBatch(pooled, tokens, torch.arange(b))


def test_config_and_heads(tiny_backbone) -> None:  # noqa: ANN001
    from edgeprompt.errors import ConfigError
    from edgeprompt.methods.base import build_config

    assert resolve_heads(512, 8) == 8 and resolve_heads(32, 8) == 4 and resolve_heads(12, 8) == 1
    for bad in ({"kv": "patches"}, {"residual": "gated"}, {"gce_q": 0.0}, {"ot_eps": 0.0}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            build_config("visprompt", bad)
    m = create_method("visprompt", tiny_backbone, CLASSES)
    assert m.needs_tokens and not m.foldable and m.cfg == VisPromptConfig()
    assert not create_method("visprompt", tiny_backbone, CLASSES, kv="pooled").needs_tokens
    with pytest.raises(NotImplementedError):
        m.text_features()


def test_block_shapes_and_identity_start(tiny_backbone) -> None:  # noqa: ANN001
    m = create_method("visprompt", tiny_backbone, CLASSES, zero_init=True).eval()
    batch = feats(tiny_backbone)
    b, mm, d = 3, m.cfg.n_ctx, tiny_backbone.text.width
    ctx, parts = m.block(m.prompt.ctx, m.image_tokens(batch), parts=True)
    assert ctx.shape == (b, mm, d) and parts["gamma"].shape == parts["beta"].shape == (b, mm, d)
    assert parts["gate"].shape == (b, mm, 1) and ((parts["gate"] > 0) & (parts["gate"] < 1)).all()
    assert m.image_tokens(batch).shape == (b, 1 + batch.tokens.shape[1], d)
    # zero-init FiLM / FFN outputs: step 0 is exactly CoOp with the same random context
    coop = create_method("coop", tiny_backbone, CLASSES).eval()
    assert torch.equal(coop.prompt.ctx, m.prompt.ctx)
    assert (m(batch) - coop(batch)).abs().max() <= 1e-5


def _backward(m, batch: FeatureBatch) -> None:  # noqa: ANN001
    m.train()
    m.zero_grad(set_to_none=True)
    out = m.loss(m(batch), torch.tensor([0, 1, 2]), batch)
    out["loss"].backward()


@pytest.mark.parametrize("kv", ["tokens", "pooled"])
def test_query_key_gradient(tiny_backbone, kv: str) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = create_method("visprompt", tiny_backbone, CLASSES, kv=kv, zero_init=False, dropout=0.0)
    _backward(m, feats(tiny_backbone))
    blk = m.block
    for p in (m.prompt.ctx, m.image_project.weight, blk.v_proj.weight, blk.gamma.weight, blk.beta.weight,
              blk.gate.weight, blk.ffn[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    qk = [blk.q_proj.weight, blk.k_proj.weight]
    if kv == "tokens":
        # (the key bias adds the same score to every key of a query, so only the weights are checked)
        assert all(p.grad.abs().sum() > 0 for p in qk)
    else:  # one key: the softmax is identically 1, W_q / W_k (and biases) get exactly zero gradient
        assert all(torch.count_nonzero(p.grad) == 0 for p in qk + [blk.q_proj.bias, blk.k_proj.bias])


def test_zero_init_gradients_flow_after_one_step(tiny_backbone) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = create_method("visprompt", tiny_backbone, CLASSES, dropout=0.0, zero_init=True)
    batch = feats(tiny_backbone)
    _backward(m, batch)
    blk = m.block
    assert blk.beta.weight.grad.abs().sum() > 0 and blk.gamma.weight.grad.abs().sum() > 0
    assert torch.count_nonzero(blk.q_proj.weight.grad) == 0  # behind the zero layers at step 0
    torch.optim.SGD(m.trainable_parameters(), lr=0.1).step()
    _backward(m, batch)
    for p in (blk.q_proj.weight, blk.k_proj.weight, blk.gate.weight, m.image_project.weight):
        assert p.grad.abs().sum() > 0


def test_prefix_shared_equals_plain_77_token_encoding(tiny_backbone) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    bb = tiny_backbone
    m = create_method("visprompt", bb, CLASSES, zero_init=False).eval()
    assert m.prompt.share_prefix
    batch = feats(bb)
    with torch.no_grad():
        ctx = m.context(batch)  # (B, M, D), different for every image
        fast = m.encode_prompts(ctx)  # (B, C, E)
        logits = m(batch)
        # plain path: full 77-token sequences, one per (image, class), context spliced in after [SOS]
        names = [n.replace("_", " ") for n in CLASSES]
        tokens = bb.tokenize([" ".join(["X"] * m.cfg.n_ctx) + f" {n}." for n in names])  # (C, 77)
        eot = bb.eot_positions(tokens)
        emb = bb.embed_tokens(tokens).float()  # (C, 77, D)
        assert (bb.text(emb, eot) - bb.model.encode_text(tokens)).abs().max() <= 1e-5  # same tower as open_clip
        assert torch.equal(emb[:, :1], m.prompt.token_prefix)
        assert torch.equal(emb[:, 1 + m.cfg.n_ctx : m.prompt.token_suffix.shape[1] + 1 + m.cfg.n_ctx],
                           m.prompt.token_suffix)
        plain = []
        for b in range(ctx.shape[0]):
            e = emb.clone()
            e[:, 1 : 1 + m.cfg.n_ctx] = ctx[b]
            plain.append(bb.text(e, eot))  # (C, E), all 77 positions
        plain = torch.stack(plain)
        m.prompt.share_prefix = False  # the truncated, unshared fallback must agree too
        unshared = m.encode_prompts(ctx)
    assert emb.shape[1] == 77 and m.prompt.token_suffix.shape[1] + 1 + m.cfg.n_ctx < 77
    assert (fast - plain).abs().max() <= 1e-5
    assert (unshared - plain).abs().max() <= 1e-5
    assert (logits - cosine_logits(batch.pooled, plain, m.scale)).abs().max() <= 1e-5


def test_backbone_bit_identical_after_steps(tiny_backbone) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = create_method("visprompt", tiny_backbone, CLASSES)
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    backbone_ids = {id(p) for p in tiny_backbone.parameters()}
    params = m.trainable_parameters()
    assert params and not any(id(p) in backbone_ids for p in params)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx0 = m.prompt.ctx.detach().clone()
    batch = feats(tiny_backbone)
    for _ in range(2):
        _backward(m, batch)
        opt.step()
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(ctx0, m.prompt.ctx)


def test_ot_split_drives_the_loss(tiny_backbone) -> None:  # noqa: ANN001
    from edgeprompt.train.trainer import TrainSet

    torch.manual_seed(0)
    m = create_method("visprompt", tiny_backbone, CLASSES[:3], dropout=0.0, noisy_target="auto", gce_q=0.5,
                      ot_scorer="model")
    batch = feats(tiny_backbone, b=6)
    true = torch.tensor([0, 1, 2, 0, 1, 2])
    given = torch.tensor([0, 1, 2, 1, 2, 0])
    data = TrainSet(batch.pooled[:, None], given, batch.tokens[:, None], true, batch.pooled, batch.tokens)
    out = m.epoch_start({"data": data, "device": torch.device("cpu"), "epoch": 0})
    assert m._split is not None
    clean = m._split.clean
    assert clean is not None and clean.shape == (6,) and clean.dtype == torch.bool
    # the logged numbers are the split's, recomputed here from the masks
    truly_clean = true == given
    assert out["ot_clean_frac"] == pytest.approx(float(clean.float().mean()))
    kept = int(clean.sum())
    assert out["ot_precision"] == pytest.approx(int((clean & truly_clean).sum()) / kept if kept else 0.0)
    assert out["ot_recall"] == pytest.approx(int((clean & truly_clean).sum()) / int(truly_clean.sum()))
    assert 1 <= out["ot_iters"] <= m.cfg.ot_iters
    # CE (-log p_y) on OT-clean samples, GCE with q = 0.5, i.e. 2 (1 - sqrt(p_y)), on the others
    m.eval()
    logits = m(batch)
    p_y = logits.softmax(-1).gather(1, given[:, None]).squeeze(1)
    expected = torch.where(clean, -p_y.log(), 2 * (1 - (p_y + 1e-6).sqrt())).mean()
    assert not m._split.by_prototypes  # the model scored the split: GCE towards the given labels
    assert torch.allclose(m.loss(logits, given, batch)["loss"], expected, atol=1e-6)
    # where the labels' prototypes scored the split, noisy_target='auto' trains the rest towards its pseudo-labels;
    # 'given' (default) keeps the given ones
    clean = torch.tensor([True, True, True, False, False, False])
    m._split = EpochSplit(clean, true, by_prototypes=True)
    expected = torch.where(clean, -p_y.log(), 2 * (1 - (p_y + 1e-6).sqrt())).mean()
    p_t = logits.softmax(-1).gather(1, true[:, None]).squeeze(1)
    to_pseudo = torch.where(clean, -p_y.log(), 2 * (1 - (p_t + 1e-6).sqrt())).mean()
    assert torch.allclose(m.loss(logits, given, batch)["loss"], to_pseudo, atol=1e-6)
    assert not torch.allclose(to_pseudo, expected)
    fixed = create_method("visprompt", tiny_backbone, CLASSES[:3], dropout=0.0, gce_q=0.5)
    fixed.load_state_dict(m.state_dict())
    fixed._split = m._split
    assert torch.allclose(fixed.loss(logits, given, batch)["loss"], expected, atol=1e-6)
    mae = create_method("visprompt", tiny_backbone, CLASSES[:3], dropout=0.0, noisy_target="given")  # default q = 1
    mae._split = EpochSplit(clean, true, by_prototypes=True)
    assert torch.allclose(mae.loss(logits, given, batch)["loss"], torch.where(clean, -p_y.log(), 1 - p_y).mean(),
                          atol=1e-5)  # NLPrompt's loss: MAE (1 - p_y) on the rest
    m3 = create_method("visprompt", tiny_backbone, CLASSES[:3], dropout=0.0, ot_scorer="prototypes")
    m3.epoch_start({"data": data, "device": torch.device("cpu"), "epoch": 0})
    assert m3._split is not None and m3._split.by_prototypes  # the flag follows the split's scorer
    m2 = create_method("visprompt", tiny_backbone, CLASSES[:3], ot_warmup=1)
    assert m2.epoch_start({"data": data, "epoch": 0}) == {} and m2._split is None


@pytest.mark.filterwarnings("ignore")  # exporter chatter (TracerWarnings, axis renames)
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_forward_exports_to_onnx_with_dynamic_batch(tiny_backbone, tmp_path: Path, exporter: str) -> None:  # noqa: ANN001
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m = create_method("visprompt", tiny_backbone, CLASSES, zero_init=False).eval()

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return self.m(FeatureBatch(pooled, tokens))

    head = Head().eval()
    batch = feats(tiny_backbone, b=2)
    names = {"input_names": ["pooled", "tokens"], "output_names": ["logits"]}
    path = str(tmp_path / "vp.onnx")
    from edgeprompt.export.onnx import has_dynamo_flag, legacy_flag

    if exporter == "dynamo":
        if not has_dynamo_flag():
            pytest.skip("torch < 2.5 has no dynamo=True export")
        b = torch.export.Dim("batch")
        torch.onnx.export(head, (batch.pooled, batch.tokens), path, dynamic_shapes=({0: b}, {0: b}), dynamo=True,
                          verbose=False, **names)
    else:  # TorchScript tracing: a shape op such as unflatten would freeze the traced batch size into the graph
        axes = {"pooled": {0: "batch"}, "tokens": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(head, (batch.pooled, batch.tokens), path, dynamic_axes=axes, opset_version=17,
                          **legacy_flag(), **names)
    sess = ort.InferenceSession(path)
    other = feats(tiny_backbone, b=5, seed=1)  # another batch size than the traced one
    got = sess.run(None, {"pooled": other.pooled.numpy(), "tokens": other.tokens.numpy()})[0]
    with torch.no_grad():
        want = head(other.pooled, other.tokens).numpy()
    assert abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("kv", ["tokens", "pooled"])
def test_tune_and_evaluate_end_to_end(tiny_model: str, image_folder: Path, cache_dir: Path, tmp_path: Path,
                                      kv: str) -> None:
    from edgeprompt import api
    from edgeprompt.config import TrainConfig, TuneConfig

    out = tmp_path / f"run-{kv}"
    cfg = TuneConfig(train=str(image_folder), out=str(out), method="visprompt", method_options={"kv": kv, "n_ctx": 4},
                     model=tiny_model, pretrained="none", shots=0, noise="sym:0.5", views=2, cache_dir=str(cache_dir),
                     train_cfg=TrainConfig(epochs=2, batch_size=4, device="cpu", eval_every=0))
    summary = api.tune(cfg)
    assert summary["epochs"] == 2 and summary["n_flipped"] == 9
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:  # the split's numbers are counts over the 18 samples (9 truly clean)
        kept = round(r["ot_clean_frac"] * 18)
        assert r["ot_clean_frac"] * 18 == pytest.approx(kept)
        hits = round(r["ot_recall"] * 9)
        assert r["ot_recall"] * 9 == pytest.approx(hits) and r["ot_precision"] == pytest.approx(hits / kept if kept
                                                                                                   else 0.0)
    report = api.evaluate(out, image_folder, cache_dir=str(cache_dir))
    conf = report["confusion"]
    assert report["n"] == 18 == sum(map(sum, conf))
    assert report["top1"] == pytest.approx(sum(conf[i][i] for i in range(3)) / 18)


@pytest.mark.parametrize("shape,eps", [((50, 8), 0.05), ((80, 8), 0.05), ((30, 12), 0.1), ((64, 16), 0.2)])
def test_sinkhorn_matches_pot_log_domain_solver(shape: tuple[int, int], eps: float) -> None:
    """Our solver against POT's log-domain Sinkhorn (``ot.bregman.sinkhorn_log``) on random -log p costs.

    Both run to convergence (row violation < 1e-12) in float64: the plans agree to 1e-9 in every entry and give the
    same split. (The two alternate their dual updates in a different order, so before convergence they differ by
    about the marginal violation: see the next test.)
    """
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(shape[0])
    lp = (torch.randn(*shape, generator=g, dtype=torch.float64) * 3).log_softmax(-1)
    n, k = shape
    a, b = torch.full((n,), 1 / n, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64)
    ours, info = sinkhorn_log(-lp, a, b, eps=eps, max_iter=20_000, tol=1e-12)
    ref, log = ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), (-lp).numpy(), eps, numItermax=20_000, stopThr=1e-13,
                                       log=True, warn=False)
    assert info["converged"] and log["err"][-1] < 1e-12
    assert np.abs(ours.numpy() - ref).max() < 1e-9
    assert np.array_equal(ours.argmax(1).numpy(), ref.argmax(1))


def test_sinkhorn_at_the_training_setting_tracks_pot() -> None:
    """eps = 0.01, 1000 iterations (what VisPrompt runs; neither solver has converged): entries differ by less than
    our reported row violation, and the argmax split agrees on at least 99 % of the samples."""
    ot = pytest.importorskip("ot")
    logits, _, _ = clip_like(20, seed=3)
    lp = logits.double().log_softmax(-1)
    n, k = lp.shape
    a, b = torch.full((n,), 1 / n, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64)
    ours, info = sinkhorn_log(-lp, a, b, eps=0.01, max_iter=1000)
    ref = ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), (-lp).numpy(), 0.01, numItermax=1000, warn=False)
    assert np.abs(ours.numpy() - ref).max() <= info["err_rows"]
    assert (ours.argmax(1).numpy() == ref.argmax(1)).mean() >= 0.99


def test_training_does_not_depend_on_the_feature_cache(tiny_model: str, image_folder: Path, tmp_path: Path) -> None:
    """A cold cache (encoding draws from torch's global generator) and a warm one give the same dropout, so the same
    run: the same loss at every epoch."""
    from edgeprompt import api
    from edgeprompt.config import TrainConfig, TuneConfig

    def losses(out: Path) -> list[float]:
        api.tune(TuneConfig(train=str(image_folder), out=str(out), method="visprompt", model=tiny_model,
                            pretrained="none", shots=0, noise="sym:0.5", views=2, cache_dir=str(tmp_path / "cache"),
                            method_options={"n_ctx": 4, "dropout": 0.5},
                            train_cfg=TrainConfig(epochs=3, batch_size=4, device="cpu", eval_every=0)))
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    cold = losses(tmp_path / "cold")  # every feature is encoded in this call
    warm = losses(tmp_path / "warm")  # every feature is read back
    assert len(cold) == 3 and cold == warm


def test_shift_scale_keeps_the_random_start_at_the_context_scale(tiny_backbone) -> None:  # noqa: ANN001
    """The FiLM shift and the FFN residual come in word-embedding units by default; at unit scale (the released
    code's) a randomly initialised block moves the context by tens of word embeddings, which stalled runs."""
    batch = feats(tiny_backbone)
    moved = {}
    for scale in ("embedding", "none"):
        torch.manual_seed(0)  # the same block weights for both
        m = create_method("visprompt", tiny_backbone, CLASSES, shift_scale=scale, dropout=0.0).eval()
        with torch.no_grad():
            delta = m.context(batch) - m.prompt.ctx  # (B, M, D)
        moved[scale] = float(delta.pow(2).mean().sqrt())
        rms = float(m.prompt.token_suffix.float().pow(2).mean().sqrt())
        assert m.block.unit == (pytest.approx(rms) if scale == "embedding" else 1.0)
    unit = create_method("visprompt", tiny_backbone, CLASSES).block.unit
    assert unit < 0.5 and moved["embedding"] <= 3 * unit  # about one word embedding
    assert moved["none"] >= 0.5 / unit * moved["embedding"]  # the released scale moves it ~1/unit times further


def test_a_run_from_before_an_option_loads_as_it_was_tuned() -> None:
    from edgeprompt.methods.base import stored_options

    assert VisPromptConfig().shift_scale == "embedding"
    old = stored_options("visprompt", {"n_ctx": 4})  # written before shift_scale existed: unit scale, as then
    assert old == {"shift_scale": "none", "n_ctx": 4}
    assert stored_options("visprompt", {"shift_scale": "embedding"}) == {"shift_scale": "embedding"}
    assert stored_options("coop", {"n_ctx": 4}) == {"n_ctx": 4}
