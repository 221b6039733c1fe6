"""The fast text paths (truncation, prefix sharing) equal open_clip's plain 77-token encoder (≤ 1e-5, fp32)."""

from __future__ import annotations

import pytest
import torch

from edgeprompt.errors import ConfigError
from edgeprompt.methods import create_method
from edgeprompt.methods.prompt_learner import PromptLearner

NAMES = ["red", "dark green", "sea or lake", "golden retriever puppy", "x"]
TOL = 1e-5


def test_plain_equals_open_clip_encode_text(tiny_backbone) -> None:  # noqa: ANN001
    tok = tiny_backbone.tokenize([f"a photo of a {n}." for n in NAMES])
    ref = tiny_backbone.model.encode_text(tok)
    out = tiny_backbone.text(tiny_backbone.embed_tokens(tok), tiny_backbone.eot_positions(tok))
    assert (ref - out).abs().max().item() <= TOL


def _plain_reference(learner: PromptLearner, backbone) -> torch.Tensor:  # noqa: ANN001
    """Untruncated 77-token prompts with the learned context, through the plain encoder."""
    full = learner.assemble()  # truncated (C, L, D)
    pad = backbone.embed_tokens(torch.zeros(full.shape[0], 77, dtype=torch.long))[:, full.shape[1] :]
    return backbone.text(torch.cat([full, pad], dim=1), learner.eot)


@pytest.mark.parametrize("position,csc", [("end", False), ("middle", False), ("front", False), ("end", True)])
def test_prompt_learner_fast_path_equals_plain(tiny_backbone, position: str, csc: bool) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    learner = PromptLearner(tiny_backbone, NAMES, n_ctx=4, position=position, class_specific=csc)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5)  # a context far from init, so a wrong mask or position would show
    assert learner.share_prefix == (position == "end" and not csc)
    diff = (learner() - _plain_reference(learner, tiny_backbone)).abs().max().item()
    assert diff <= TOL, diff
    assert learner.assemble().shape[1] < 77  # truncated


def test_prefix_sharing_equals_plain_on_vit_b32() -> None:
    """The same check on a real-size text tower (ViT-B-32 config, random weights, 16 context tokens)."""
    from edgeprompt.backbone import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("ViT-B-32", "none")
    learner = PromptLearner(bb, NAMES, n_ctx=16)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.1)
    assert learner.share_prefix
    diff = (learner() - _plain_reference(learner, bb)).abs().max().item()
    assert diff <= TOL, diff


def test_ctx_init_from_words(tiny_backbone) -> None:  # noqa: ANN001
    m = create_method("coop", tiny_backbone, NAMES, ctx_init="a photo of a", n_ctx=4)
    assert m.prompt.n_ctx == 4
    # initialised from the words alone, the prompt equals the hand-written template exactly
    ref = tiny_backbone.encode_text([f"a photo of a {n}." for n in NAMES])
    assert (m.text_features() - ref).abs().max().item() <= TOL
    # the default: 16 vectors whose last 4 are the template's words, the rest CoOp's N(0, 0.02) draw
    d = create_method("coop", tiny_backbone, NAMES)
    words = tiny_backbone.embed_tokens(tiny_backbone.tokenize(["a photo of a"]))[0, 1:5]
    assert d.prompt.n_ctx == 16 and torch.equal(d.prompt.ctx[12:], words.float())
    assert 0.01 < d.prompt.ctx[:12].std().item() < 0.03
    paper = create_method("coop", tiny_backbone, NAMES, ctx_init="")
    assert torch.equal(paper.prompt.ctx[:12], d.prompt.ctx[:12]) and not torch.equal(paper.prompt.ctx, d.prompt.ctx)
    with pytest.raises(ConfigError, match="more than --n-ctx"):
        create_method("coop", tiny_backbone, NAMES, ctx_init="a photo of a", n_ctx=2)


def test_prefix_sharing_on_a_one_block_tower(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With a single block the suffix is still shared when the EOT-only last block runs: it must broadcast."""
    from edgeprompt.backbone import create_backbone
    from tests.conftest import TINY_CFG, _register

    cfg = {**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "layers": 1}}
    bb = create_backbone(_register(tmp_path_factory, "ep-test-one-block", cfg), "none")
    learner = PromptLearner(bb, NAMES, n_ctx=3)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.1)
        assert learner.share_prefix
        shared = learner()
        batch = bb.text.forward_shared(torch.cat([learner.token_prefix[:1], learner.ctx[None]], 1).repeat(3, 1, 1),
                                       learner.token_suffix, learner.eot)
    assert (shared - _plain_reference(learner, bb)).abs().max().item() <= TOL
    assert batch.shape == (3, len(NAMES), shared.shape[-1]) and torch.allclose(batch[2], shared, atol=TOL)
