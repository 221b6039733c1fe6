"""Loss functions, and DSPT's gradient against its closed form (research/dspt.md §1.3)."""

from __future__ import annotations

import math

import pytest
import torch

from edgeprompt import losses


def _grad(fn, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    z = logits.clone().double().requires_grad_(True)
    (fn(z, target) * len(target)).backward()  # losses are batch means; undo the mean
    return z.grad


@pytest.mark.parametrize("c", [3, 10, 100])
def test_dspt_gradient_matches_closed_form(c: int) -> None:
    torch.manual_seed(c)
    z = torch.randn(16, c, dtype=torch.double) * 5
    y = torch.randint(c, (16,))
    z64 = z.clone().requires_grad_(True)
    p = z64.softmax(-1)
    torch.nn.functional.cross_entropy(p, y, reduction="sum").backward()  # fp64 reference of the same loss
    assert torch.allclose(z64.grad, losses.dspt_grad_closed_form(z, y), atol=1e-10)
    # the library loss (fp32) agrees with the closed form up to fp32 rounding
    zf = z.float().clone().requires_grad_(True)
    (losses.dspt(zf, y) * 16).backward()
    assert torch.allclose(zf.grad.double(), losses.dspt_grad_closed_form(z, y), atol=1e-5)


@pytest.mark.parametrize("c", [10, 100])
def test_dspt_suppresses_confidently_mislabeled_samples(c: int) -> None:
    # CLIP-like logits (scale 100 on cosines): mass on class 1, the given label 0 has p_y < 0.01
    z = torch.zeros(1, c, dtype=torch.double)
    z[0, 1] = 8.0
    z[0, 0] = 2.0
    y = torch.tensor([0])
    p_y = z.softmax(-1)[0, 0].item()
    assert p_y < 0.01
    g_ds = losses.dspt_grad_closed_form(z, y).norm().item()
    g_ce = _grad(losses.ce, z, y).norm().item()
    assert g_ce / g_ds >= 10, (g_ce, g_ds)
    # … while a sample the model agrees with keeps a useful gradient
    z_ok = z.clone()
    z_ok[0, 0] = 8.0
    assert losses.dspt_grad_closed_form(z_ok, y).norm().item() > 0.1 * g_ce


@pytest.mark.parametrize("c", [10, 100])
def test_dspt_loss_lies_in_one_nat_band(c: int) -> None:
    z = torch.randn(512, c) * 30
    y = torch.randint(c, (512,))
    per = losses.dspt(z, y, reduction="none")
    assert per.mean().item() == pytest.approx(losses.dspt(z, y).item())
    lo, hi = math.log(c - 1 + math.e) - 1, math.log(c - 1 + math.e)
    assert per.min() >= lo - 1e-5 and per.max() <= hi + 1e-5


def test_gce_limits_and_mae() -> None:
    z = torch.randn(32, 7)
    y = torch.randint(7, (32,))
    assert torch.allclose(losses.gce(z, y, 1.0), losses.mae(z, y), atol=1e-5)
    assert abs(losses.gce(z, y, 1e-3).item() - losses.ce(z, y).item()) < 0.05
    with pytest.raises(ValueError, match="0 < q <= 1"):
        losses.gce(z, y, 0.0)


def test_get_loss_unknown_name_suggests() -> None:
    from edgeprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'gce'"):
        losses.get_loss("gcee")


def test_gce_and_mae_match_their_published_closed_forms() -> None:
    """GCE (Zhang & Sabuncu, NeurIPS 2018, eq. 6): L_q = (1 - p_y^q) / q, gradient w.r.t. the logits
    -p_y^q (e_y - p); MAE in NLPrompt's form 1 - p_y (half the textbook L1 ||e_y - p||_1 = 2 (1 - p_y))."""
    z = torch.randn(64, 9, dtype=torch.float64, requires_grad=True)
    y = torch.randint(9, (64,))
    p = z.detach().softmax(-1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    onehot = torch.nn.functional.one_hot(y, 9).double()
    for q in (0.3, 0.5, 0.7, 1.0):
        per = losses.gce(z, y, q, reduction="none")
        assert torch.allclose(per.double(), (1 - (p_y + 1e-6) ** q) / q, atol=1e-6)
        (grad,) = torch.autograd.grad(per.sum(), z)
        expected = -((p_y + 1e-6) ** (q - 1) * p_y)[:, None] * (onehot - p)  # dp_y/dz = p_y (e_y - p)
        assert torch.allclose(grad.double(), expected, atol=1e-5)
    l1 = (onehot - p).abs().sum(1)
    assert torch.allclose(losses.mae(z, y, reduction="none").double(), l1 / 2, atol=1e-6)
