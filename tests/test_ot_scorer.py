"""What scores an OT split (``ot_scorer``): the prompt, or the given labels' leave-one-out class prototypes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from edgeprompt.errors import ConfigError
from edgeprompt.methods import create_method
from edgeprompt.methods.ot import check_ot_options, epoch_split, ot_split, prototype_log_probs
from edgeprompt.train.trainer import TrainSet


@dataclasses.dataclass(frozen=True)
class Opts:
    ot_eps: float = 0.01
    ot_iters: int = 1000
    ot_warmup: int = 0
    ot_floor: float = 0.0
    ot_views: str = "centre"
    ot_scorer: str = "auto"


class Prior(nn.Module):
    """A fixed cosine classifier over class directions: the zero-shot prompt at its start."""

    def __init__(self, directions: torch.Tensor, scale: float = 50.0) -> None:
        super().__init__()
        self.register_buffer("w", nn.functional.normalize(directions, dim=-1))
        self.scale = scale

    def forward(self, batch) -> torch.Tensor:  # noqa: ANN001
        return self.scale * nn.functional.normalize(batch.pooled, dim=-1) @ self.w.T


def world(k: int = 6, shots: int = 20, noise: float = 0.25, seed: int = 0):
    """Clustered features (N, 32) around k class centres, symmetric noise; returns centres, TrainSet, true, given."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 32, generator=g)
    y = torch.arange(k).repeat_interleave(shots)
    x = centres[y] + 0.6 * torch.randn(len(y), 32, generator=g)
    given = y.clone()
    flip = torch.randperm(len(y), generator=g)[: int(noise * len(y))]
    given[flip] = (y[flip] + torch.randint(1, k, (len(flip),), generator=g)) % k
    return centres, TrainSet(x[:, None], given, None, y, x, None), y, given


def test_prototypes_are_leave_one_out_class_means() -> None:
    """The (K, E)-sum formula equals building every sample's class means without it; a lone sample's class scores 0."""
    g = torch.Generator().manual_seed(1)
    x, given = torch.randn(12, 5, generator=g), torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 1])
    got = prototype_log_probs(x, given, 5, scale=10.0)
    unit = nn.functional.normalize(x.double(), dim=-1)
    want = torch.zeros(12, 5, dtype=torch.float64)
    for i in range(12):
        for c in range(5):
            keep = (given == c) & (torch.arange(12) != i)
            if keep.any():
                want[i, c] = 10.0 * nn.functional.cosine_similarity(unit[i], unit[keep].sum(0), dim=0)
    assert torch.allclose(got, want.log_softmax(-1), atol=1e-9)
    assert got[10].exp()[3] == pytest.approx(got[10].exp()[4])  # class 3's only sample: 0, as the empty class 4


def test_a_swapped_prior_is_outvoted_by_the_labels() -> None:
    """The zero-shot prompt reads classes 0 and 1 the wrong way round. The paper's split (``model``) then calls none
    of their correctly labelled samples clean; ``auto`` sees that the labels' prototypes agree with the labels more
    than the prompt does, scores the split with them and recovers those classes, at every epoch after the warm-up."""
    centres, data, y, given = world()
    swapped = centres.clone()
    swapped[[0, 1]] = centres[[1, 0]]
    prior = Prior(swapped)
    ctx = {"data": data, "device": torch.device("cpu"), "epoch": 0}
    truly = y == given
    paper = epoch_split(prior, ctx, Opts(ot_scorer="model"))
    assert paper is not None and not paper.by_prototypes and "ot_scorer_prototypes" not in paper.metrics
    hidden = truly & (given < 2)
    assert int(paper.clean[hidden].sum()) == 0  # the swap hides the correctly labelled samples of 0 and 1
    for epoch in (0, 7):
        auto = epoch_split(prior, {**ctx, "epoch": epoch}, Opts())
        assert auto is not None
        clean, metrics = auto.clean, auto.metrics
        assert auto.by_prototypes and metrics["ot_scorer_prototypes"] == 1.0
        assert metrics["ot_agree_prototypes"] > metrics["ot_agree_model"]
        assert float(clean[hidden].double().mean()) >= 0.8  # most truly clean samples of 0 and 1 are clean now
        assert float(truly[clean].double().mean()) >= 0.9  # and the split stays precise
    warm = Opts(ot_scorer="prototypes", ot_warmup=2)  # no split before the warm-up ends
    assert epoch_split(prior, {**ctx, "epoch": 1}, warm) is None
    assert epoch_split(prior, {**ctx, "epoch": 2}, warm).by_prototypes  # type: ignore[union-attr]


def test_a_prompt_better_than_the_labels_keeps_the_first_split() -> None:
    """At 75 % noise a correct prompt agrees with the labels more than their prototypes do: ``auto`` keeps the
    prompt's split, the very OT solve of its log-probabilities."""
    centres, data, _, given = world(noise=0.75, seed=2)
    prior = Prior(centres)
    split = epoch_split(prior, {"data": data, "epoch": 0}, Opts())
    assert split is not None
    clean, metrics = split.clean, split.metrics
    assert metrics["ot_scorer_prototypes"] == 0.0
    raw, _, _ = ot_split(prior(type("B", (), {"pooled": data.eval_pooled})()).log_softmax(-1).double(), given)
    assert torch.equal(clean, raw)


def test_ot_scorer_is_checked(tiny_backbone) -> None:  # noqa: ANN001
    from edgeprompt.methods.base import build_config

    with pytest.raises(ConfigError, match="ot_scorer must be one of auto, model, prototypes"):
        check_ot_options(Opts(ot_scorer="labels"))
    assert build_config("nlprompt", {}).ot_scorer == "auto"
    # VisPrompt scores its splits as NLPrompt since its block shifts in embedding units (docs/visprompt.md)
    assert build_config("visprompt", {}).ot_scorer == "auto"
    for method in ("nlprompt", "visprompt"):
        with pytest.raises(ConfigError, match="ot_scorer"):
            create_method(method, tiny_backbone, ["a", "b"], ot_scorer="first")
