"""Backbone creation: local checkpoints, unknown names, offline hub tags, frozen state, preprocessing spec."""

from __future__ import annotations

import pytest
import torch

from edgeprompt.backbone import create_backbone, weights_fingerprint
from edgeprompt.errors import ConfigError


def test_local_checkpoint_loads_identical_weights(tiny_model, tiny_backbone, tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    state = {k: v.clone() + 0.5 for k, v in tiny_backbone.model.state_dict().items() if v.is_floating_point()}
    state.update({k: v for k, v in tiny_backbone.model.state_dict().items() if not v.is_floating_point()})
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(state, pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    a, b = create_backbone(tiny_model, str(pt)), create_backbone(tiny_model, str(st))
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model) != tiny_backbone.ref.weights_sha256
    assert a.ref.pretrained == str(pt) and len(a.ref.weights_sha256) == 64
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone(tiny_model, str(tmp_path / "missing.pt"))


def test_random_weights_are_reproducible(tiny_model, tiny_backbone) -> None:  # noqa: ANN001
    from edgeprompt.backbone import _build_open_clip

    torch.manual_seed(123)  # the global RNG state must not matter
    assert weights_fingerprint(_build_open_clip(tiny_model, "none")) == tiny_backbone.ref.weights_sha256


def test_unknown_names_and_tags(tiny_model) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="unknown model 'ViT-B-17'.*Did you mean"):
        create_backbone("ViT-B-17", "none")
    with pytest.raises(ConfigError, match="unknown pretrained tag 'opanai'.*Did you mean 'openai'"):
        create_backbone("ViT-B-32", "opanai")


def test_hub_tag_without_network_says_to_pass_a_local_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    from edgeprompt import backbone

    monkeypatch.setattr(open_clip, "create_model", offline)
    monkeypatch.setattr(backbone, "_network_ok", lambda *a, **k: True)  # the host answers, the download fails
    with pytest.raises(ConfigError, match="could not download weights ViT-B-32/openai .* local checkpoint path"):
        create_backbone("ViT-B-32", "openai")


def test_frozen_and_stays_in_eval(tiny_backbone) -> None:  # noqa: ANN001
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.model.training
    spec = tiny_backbone.preprocess
    assert spec.image_size == 32 and spec.interpolation == "bicubic" and len(spec.mean) == 3


def test_patch_tokens_live_in_the_embedding_space(tiny_backbone) -> None:  # noqa: ANN001
    x = torch.randn(2, 3, 32, 32)
    pooled, tokens = tiny_backbone.encode_image(x, with_tokens=True)
    assert pooled.shape == (2, 32) and tokens.shape == (2, 16, 32)  # (32/8)^2 patches, projected to embed_dim
    assert torch.equal(pooled, tiny_backbone.encode_image(x))
