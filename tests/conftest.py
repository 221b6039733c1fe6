"""Shared fixtures: a tiny random-weight open_clip config (never downloads) and small labeled image folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY = "ep-test-tiny"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


TINY_RN = "ep-test-tiny-rn"
TINY_RN_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _register(factory: pytest.TempPathFactory, name: str, cfg: dict) -> str:
    """Write an open_clip model config to a temp dir and register it (open_clip names it after the file)."""
    import open_clip

    path = factory.mktemp("cfg") / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of a tiny ViT CLIP config (random weights) registered with open_clip for this test session."""
    return _register(tmp_path_factory, TINY, TINY_CFG)


@pytest.fixture(scope="session")
def tiny_rn_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny RN50-style CLIP (ModifiedResNet image tower, attention pooling), random weights."""
    return _register(tmp_path_factory, TINY_RN, TINY_RN_CFG)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model: str):  # noqa: ANN201
    import torch

    from edgeprompt.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone(tiny_model, "none")


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def make_folder(root: Path, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """root/<colour>/<n>.png: coloured squares on noisy grey backgrounds."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            s = int(rng.integers(size // 4, size // 2))
            arr[y : y + s, x : x + s] = rgb
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
