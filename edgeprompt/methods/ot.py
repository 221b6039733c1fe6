"""Optimal-transport sample selection (NLPrompt / VisPrompt): log-domain Sinkhorn and the clean/noisy split.

Pure functions on tensors, no module state. Everything runs in float64: with the entropic regulariser
``eps = 0.01`` and costs ``-log p`` of tens of nats, the Gibbs kernel ``exp(-cost / eps)`` underflows to zero for
whole columns in the classic (scaling-vector) Sinkhorn, which then returns a plan that silently breaks the
marginals (research/visprompt.md §2.4). The log-domain iteration below works on the potentials instead and never
forms the kernel.

The split: with uniform marginals (every sample carries mass 1/N, every class receives mass 1/K), the plan's row
argmax is a pseudo-label that respects class balance; a sample is *clean* when that pseudo-label equals its given
(possibly noisy) label.

The class floor (ours; an option of NLPrompt and VisPrompt, off by default): the OT's class balance
does not stop a prompt that reads two classes the wrong way round (a swap is balanced); then no sample given either
label is called clean, cross-entropy on the rest teaches the prompt never to predict them, and the run stays at its
prior (DKAF's "endogenous confirmation bias", research/robust-tuning.md T4). :func:`class_floor` tops the clean set
up so every given class keeps at least a share of the overall clean fraction of its samples, taking those the model
finds likeliest under their given label (CLIPCleaner keeps a per-class minimum for the same reason).

What scores a split (ours, ``ot_scorer``; default ``auto``): the papers score every split with the prompt being tuned,
which at its start is the zero-shot prior (for VisPrompt, the prior through a randomly initialised block). Where that
prior reads classes the wrong way round, no split calls their samples clean, and the run stays there. The labels
know better as soon as most of each class is labelled right: the given labels' leave-one-out class prototypes
(:func:`prototype_log_probs`) score a split instead whenever they agree with the given labels more often than the
prompt does. Both are out of sample (the prompt is not tuned on the label it is compared with at the start, and a
sample's own feature is left out of its class mean), and under symmetric noise the expected agreement rises with a
scorer's true accuracy, so the more accurate one scores (the audit chooses its prior weight by the same rule,
audit/run.py). The choice is made again before every epoch: a prompt needs many epochs of right labels to undo a
swap, and handing the split back after the first one returns it to the prior's verdicts. On world v3.1 the
prototypes score at 25-50 % and asymmetric noise, the prompt at 75 % (docs/defaults.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


def sinkhorn_log(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Entropic OT plan ``argmin <T, cost> - eps * H(T)`` s.t. ``T 1 = a``, ``T^T 1 = b``, in the log domain.

    Alternating exact updates of the (eps-scaled) dual potentials ``f`` (rows) and ``g`` (columns):
    ``f = log a - LSE_k(g_k - C_ik / eps)``, ``g = log b - LSE_i(f_i - C_ik / eps)``. After a ``g`` update the
    column marginals are exact, so convergence is measured on the rows.

    Args:
        cost: (N, K) cost matrix (any float dtype; computed in float64).
        a: (N,) row marginal, positive, summing to the same total as ``b``.
        b: (K,) column marginal, positive.
        eps: entropic regularisation (POT's ``reg``).
        max_iter: iteration cap (POT's ``numItermax``).
        tol: stop when the L1 norm of the row-marginal violation falls below this (POT checks an L2 norm).
        check_every: iterations between convergence checks (each check costs one extra log-sum-exp, as in POT).

    Returns:
        ``(plan (N, K) float64, info)``; ``info`` has ``iterations``, ``err_rows`` and ``err_cols`` (L1 marginal
        violations of the returned plan) and ``converged``.
    """
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise ValueError(f"cost must be a non-empty (N, K) matrix, got shape {tuple(cost.shape)}")
    if eps <= 0 or max_iter < 1:
        raise ValueError(f"need eps > 0 and max_iter >= 1, got eps={eps}, max_iter={max_iter}")
    m = -cost.to(torch.float64) / eps  # (N, K) log-kernel
    a64, b64 = a.to(m), b.to(m)
    if a64.shape != m.shape[:1] or b64.shape != m.shape[1:] or (a64 <= 0).any() or (b64 <= 0).any():
        raise ValueError("marginals must be positive with shapes (N,) and (K,) matching the cost")
    log_a, log_b = a64.log(), b64.log()
    f = torch.zeros_like(log_a)  # (N,)
    g = torch.zeros_like(log_b)  # (K,)
    converged, it, err = False, 0, float("inf")
    for it in range(1, max_iter + 1):
        f = log_a - torch.logsumexp(m + g[None, :], dim=1)
        g = log_b - torch.logsumexp(m + f[:, None], dim=0)
        if it % check_every == 0 or it == max_iter:
            rows = torch.logsumexp(m + f[:, None] + g[None, :], dim=1).exp()
            err = float((rows - a64).abs().sum())
            if err < tol:
                converged = True
                break
    plan = (m + f[:, None] + g[None, :]).exp()
    info = {
        "iterations": it,
        "err_rows": float((plan.sum(1) - a64).abs().sum()),
        "err_cols": float((plan.sum(0) - b64).abs().sum()),
        "converged": converged,
    }
    return plan, info


def ot_split(
    log_probs: torch.Tensor,
    given: torch.Tensor,
    eps: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Split samples into clean / noisy by one global OT over the model's log-probabilities.

    Cost ``-log p`` (the model's negative log-likelihood of each class; no ``+1e-8`` floor is needed in the
    log domain), uniform marginals ``a = 1/N`` and ``b = 1/K``, pseudo-label = row argmax of the plan.

    Args:
        log_probs: (N, K) log-softmax of the model's logits.
        given: (N,) given (possibly noisy) labels.
        eps: entropic regularisation.
        max_iter: Sinkhorn iteration cap.
        tol: Sinkhorn tolerance on the row marginals.

    Returns:
        ``(clean (N,) bool, pseudo (N,) int64, info)``; ``info`` is Sinkhorn's plus ``clean_frac``.
        Outputs live on ``log_probs``' device.
    """
    n, k = log_probs.shape
    if given.shape != (n,):
        raise ValueError(f"given labels must have shape ({n},), got {tuple(given.shape)}")
    lp = log_probs.to(torch.float64)
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=lp.device)
    b = torch.full((k,), 1.0 / k, dtype=torch.float64, device=lp.device)
    plan, info = sinkhorn_log(-lp, a, b, eps=eps, max_iter=max_iter, tol=tol)
    pseudo = plan.argmax(dim=1)
    clean = pseudo == given.to(pseudo.device)
    info["clean_frac"] = float(clean.double().mean())
    return clean, pseudo, info


OT_VIEWS = ("centre", "augmented")
OT_SCORERS = ("auto", "model", "prototypes")


class OTOptions(Protocol):
    """The OT split's options, as fields of NLPrompt's and VisPrompt's configs (one set of names for both)."""

    @property
    def ot_eps(self) -> float: ...  # Sinkhorn's entropic regularisation
    @property
    def ot_iters(self) -> int: ...  # Sinkhorn's iteration cap
    @property
    def ot_warmup(self) -> int: ...  # epochs before the first split (the method's own loss on every sample)
    @property
    def ot_floor(self) -> float: ...  # class_floor's share (0: the papers' split)
    @property
    def ot_views(self) -> str: ...  # OT_VIEWS
    @property
    def ot_scorer(self) -> str: ...  # OT_SCORERS: what scores each split


def check_ot_options(cfg: OTOptions) -> None:
    """Refuse bad OT options with one line naming the option (NLPrompt's and VisPrompt's ``validate``)."""
    from edgeprompt.errors import ConfigError

    if cfg.ot_views not in OT_VIEWS:
        raise ConfigError(f"ot_views must be one of {', '.join(OT_VIEWS)}, got {cfg.ot_views!r}")
    if cfg.ot_scorer not in OT_SCORERS:
        raise ConfigError(f"ot_scorer must be one of {', '.join(OT_SCORERS)}, got {cfg.ot_scorer!r}")
    if cfg.ot_eps <= 0 or cfg.ot_iters < 1 or cfg.ot_warmup < 0:
        raise ConfigError("need ot_eps > 0, ot_iters >= 1 and ot_warmup >= 0")
    if not 0.0 <= cfg.ot_floor <= 1.0:
        raise ConfigError(f"ot_floor is a share of each class's fair part of the clean set, in [0, 1]; got "
                          f"{cfg.ot_floor}")


def prototype_log_probs(features: torch.Tensor, given: torch.Tensor, num_classes: int,
                        scale: float) -> torch.Tensor:
    """(N, K) log-probabilities of leave-one-out class prototypes of the given labels.

    Sample i scores class c by ``scale * cos(x_i, m_c)``, where ``m_c`` sums the unit features labelled c other than
    x_i itself, so no sample's own label shapes its own score. Computed from (K, E) class sums and their norms, never
    an (N, K, E) tensor: ``|S_c - x_i|^2 = |S_c|^2 - 2 x_i.S_c + 1`` for unit x_i. A class with no other sample
    scores 0.

    Args:
        features: (N, E) frozen image features (normalised here).
        given: (N,) int64 given labels.
        num_classes: K.
        scale: the logit scale (CLIP's inverse temperature), so the OT sees costs of the prompt's magnitude.
    """
    x = torch.nn.functional.normalize(features.double(), dim=-1)  # (N, E)
    onehot = torch.nn.functional.one_hot(given.to(x.device), num_classes).double()  # (N, K)
    sums = onehot.T @ x  # (K, E)
    dots = x @ sums.T  # (N, K): x_i . S_c
    own = onehot  # 1 where S_c contains x_i
    num = dots - own  # x_i . (S_c - x_i) = x_i . S_c - 1
    norm_sq = (sums * sums).sum(-1)[None, :] - own * (2 * dots - 1)  # |S_c - [c = y_i] x_i|^2
    cos = torch.where(norm_sq > 1e-12, num / norm_sq.clamp(min=1e-12).sqrt(), torch.zeros_like(num))
    return (scale * cos).log_softmax(-1)


def agreement(log_probs: torch.Tensor, given: torch.Tensor) -> float:
    """How often a scorer's top-1 equals the given label."""
    return float((log_probs.argmax(-1) == given.to(log_probs.device)).double().mean())


def class_floor(clean: torch.Tensor, log_probs: torch.Tensor, given: torch.Tensor, share: float = 1.0) -> torch.Tensor:
    """Top up ``clean`` so every given class keeps at least ``share`` times the overall clean fraction of its samples.

    A class c with n_c samples and fewer than ``round(share * frac * n_c)`` of them clean (``frac`` =
    ``clean.mean()``) gets its missing ones from its other samples, likeliest first under their given label.
    Nothing is removed.

    Args:
        clean: (N,) bool, the OT split.
        log_probs: (N, K) the model's log-probabilities.
        given: (N,) int64 given labels.
        share: 1.0 = the class's fair share of the clean set; 0.0 adds nothing.

    Returns:
        (N,) bool, a superset of ``clean``.
    """
    n, k = log_probs.shape
    given = given.to(log_probs.device)
    count = torch.bincount(given, minlength=k)  # (K,)
    have = torch.bincount(given[clean], minlength=k)
    want = torch.round(share * count.double() * clean.double().mean()).long()
    deficit = (want - have).clamp(min=0)  # (K,) samples each class still needs
    if not bool(deficit.any()):
        return clean
    score = log_probs.gather(1, given[:, None]).squeeze(1).double()  # (N,) log p(given)
    # candidates: the not-yet-clean, ranked before the clean ones even where log p is -inf
    score = torch.where(clean, torch.full_like(score, -torch.inf), score.clamp(min=torch.finfo(score.dtype).min))
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(given[order], stable=True)]  # by class, likeliest first within each
    start = torch.cumsum(count, 0) - count  # (K,) first position of each class in ``order``
    rank = torch.arange(n, device=given.device) - start[given[order]]  # rank within its class
    take = order[rank < deficit[given[order]]]
    out = clean.clone()
    out[take] = True
    return out


@dataclass(frozen=True)
class EpochSplit:
    """One epoch's OT split of the training set (:func:`epoch_split`)."""

    clean: torch.Tensor  # (N,) bool: the plan's label equals the given one
    pseudo: torch.Tensor  # (N,) int64: the plan's labels
    by_prototypes: bool = False  # the given labels' prototypes scored it (else the prompt)
    metrics: dict[str, float] = field(default_factory=dict)  # what the trainer logs


def epoch_split(method: Any, ctx: dict[str, Any], cfg: OTOptions) -> EpochSplit | None:
    """The per-epoch OT split of the whole training set under ``method``'s current prompt (NLPrompt, VisPrompt).

    Args:
        method: a :class:`~edgeprompt.methods.base.PromptMethod`; scored in eval mode.
        ctx: the trainer's epoch context (``data``: the TrainSet, ``device``, ``epoch``).
        cfg: the method's config (:class:`OTOptions`): ``ot_views`` ``centre`` scores the centre views (ours),
            ``augmented`` one random cached view per sample, as the released code scores its augmented training
            loader; ``ot_scorer`` what scores the split (module docstring); Sinkhorn's ``ot_eps`` and
            ``ot_iters``; :func:`class_floor`'s ``ot_floor`` (0: the papers' split).

    Returns:
        None during the warm-up (epoch < ``ot_warmup``), else the :class:`EpochSplit`; with known true labels its
        metrics include the split's precision and recall against the truly clean samples.
    """
    from edgeprompt.methods.base import batched_logits

    epoch = int(ctx.get("epoch", 0))
    if epoch < cfg.ot_warmup:
        return None
    data = ctx["data"]
    tokens_needed = bool(getattr(method, "needs_tokens", False))
    if cfg.ot_views == "centre" and data.eval_pooled is not None:
        pooled, tokens = data.eval_pooled, data.eval_tokens if tokens_needed else None
    else:
        g = torch.Generator().manual_seed(epoch)
        view = torch.randint(data.pooled.shape[1], (len(data.pooled),), generator=g)
        rows = torch.arange(len(data.pooled))
        pooled = data.pooled[rows, view]
        tokens = data.tokens[rows, view] if tokens_needed and data.tokens is not None else None
    logits = batched_logits(method, pooled, tokens)  # (N, C), eval mode
    device = ctx.get("device") or logits.device
    given = data.labels.to(device)
    log_probs = logits.to(device).log_softmax(-1).double()
    metrics: dict[str, float] = {}
    by_prototypes = False
    if cfg.ot_scorer != "model":  # the given labels' prototypes score the split where they agree with them more
        centre = data.eval_pooled if data.eval_pooled is not None else data.pooled.mean(1)
        proto = prototype_log_probs(centre.to(device), given, log_probs.shape[1], float(method.scale))
        ours, theirs = agreement(log_probs, given), agreement(proto, given)
        by_prototypes = cfg.ot_scorer == "prototypes" or theirs > ours
        metrics.update(ot_scorer_prototypes=float(by_prototypes), ot_agree_model=ours, ot_agree_prototypes=theirs)
        if by_prototypes:
            log_probs = proto
    clean, pseudo, info = ot_split(log_probs, given, cfg.ot_eps, cfg.ot_iters)
    if cfg.ot_floor > 0:
        clean = class_floor(clean, log_probs, given, cfg.ot_floor)
    frac = float(clean.double().mean())
    metrics.update(ot_clean_frac=frac, ot_floor_added=frac - info["clean_frac"], ot_iters=float(info["iterations"]),
                   ot_converged=float(info["converged"]), ot_err=info["err_rows"])
    if data.true_labels is not None:
        true = data.true_labels.to(device)
        q = split_quality(clean, true == given)
        metrics.update(ot_precision=q["precision"], ot_recall=q["recall"], ot_noisy_precision=q["noisy_precision"],
                       ot_noisy_recall=q["noisy_recall"], ot_pseudo_acc=float((pseudo == true).double().mean()))
    return EpochSplit(clean, pseudo, by_prototypes, metrics)


def split_quality(clean_mask: torch.Tensor, true_clean_mask: torch.Tensor) -> dict[str, float]:
    """How well a predicted clean mask matches the truly clean samples (given label == true label).

    Args:
        clean_mask: (N,) bool, predicted clean.
        true_clean_mask: (N,) bool, truly clean.

    Returns:
        ``precision`` / ``recall`` / ``f1`` of the clean set, ``noisy_precision`` / ``noisy_recall`` of the noisy
        set, ``accuracy`` of the split, ``clean_frac`` and ``true_clean_frac``. An empty denominator gives 0.0.
    """
    pred = torch.as_tensor(clean_mask).bool().reshape(-1).cpu()
    true = torch.as_tensor(true_clean_mask).bool().reshape(-1).cpu()
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(true.shape)}")

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        d = int(den.sum())
        return int(num.sum()) / d if d else 0.0

    precision, recall = ratio(pred & true, pred), ratio(pred & true, true)
    n = max(len(pred), 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "noisy_precision": ratio(~pred & ~true, ~pred),
        "noisy_recall": ratio(~pred & ~true, ~true),
        "accuracy": int((pred == true).sum()) / n,
        "clean_frac": int(pred.sum()) / n,
        "true_clean_frac": int(true.sum()) / n,
    }
