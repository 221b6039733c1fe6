"""The offline world: the shapes generator (determinism, layout, captions, domains) and the shipped tiny CLIP."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.errors import ConfigError
from edgeprompt.world import shapes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shapes_is_torch_free() -> None:
    code = "import sys, edgeprompt.world.shapes, edgeprompt.world.tiny; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_world_is_rich_enough() -> None:
    assert len(shapes.SHAPES) >= 10 and len(shapes.COLORS) >= 8 and len(shapes.TEXTURES["pretrain"]) >= 4
    assert len(shapes.classnames("shape")) == len(shapes.SHAPES)
    assert len(shapes.classnames("color")) == len(shapes.COLORS)
    assert len(shapes.classnames("shape-color")) == len(shapes.SHAPES) * len(shapes.COLORS)


def test_classnames_are_folder_names_and_domains_rename() -> None:
    down, pre = shapes.classnames("shape"), shapes.classnames("shape", "pretrain")
    assert down == sorted(down) and "plus_sign" in down and "rhombus" in down and "cross" not in down
    assert "cross" in pre and "diamond" in pre and "plus_sign" not in pre
    assert shapes.class_attributes("shape")["plus_sign"] == {"shape": "cross"}
    assert "violet_rhombus" in shapes.classnames("shape-color")
    # the renamed words are rare (RARE_IN_PRETRAIN) or absent in pretraining captions: the text-side gap
    renamed = {w for v in shapes.RENAMED.values() for w in v.split()}
    rare = set(shapes.RARE_IN_PRETRAIN)
    assert len(renamed) >= 5 and len(shapes.classnames("shape")) >= 20
    assert renamed & set(shapes.caption_words("pretrain")) == rare
    assert renamed <= set(shapes.caption_words("downstream"))
    rng = np.random.default_rng(0)
    caps = [shapes.pretrain_batch(rng, 64, 16).captions for _ in range(20)]
    share = sum(bool(rare & set(re.findall(r"[a-z]+", c))) for batch in caps for c in batch) / (20 * 64)
    assert 0 < share < 0.02  # 3 of 20 shapes, each named by its rare word in 5 % of its captions


def test_unknown_names_raise_config_error_with_hint() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'shape'"):
        shapes.classnames("shapes")
    with pytest.raises(ConfigError, match="downstream"):
        shapes.sample_spec(np.random.default_rng(0), "downstrem")


def test_write_dataset_layout_and_determinism(tmp_path: Path) -> None:
    kw = dict(task="shape", per_class=2, val_per_class=1, test_per_class=1, seed=3, image_size=32)
    ticks: list[tuple[int, int]] = []
    summary = shapes.write_dataset(tmp_path / "a", progress=lambda d, t: ticks.append((d, t)), **kw)
    shapes.write_dataset(tmp_path / "b", **kw)
    names = shapes.classnames("shape")
    n = len(names)
    assert summary["classes"] == names and summary["images"] == {"train": 2 * n, "val": n, "test": n}
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == names
    assert (tmp_path / "a" / "train" / "plus_sign" / "00001.png").is_file()
    assert ticks[-1] == (4 * n, 4 * n)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b  # same seed, same bytes
    from PIL import Image

    with Image.open(tmp_path / "a" / "test" / "hexagon" / "00000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    other = _files(Path(shapes.write_dataset(tmp_path / "c", **{**kw, "seed": 4})["path"]))
    assert other.keys() == a.keys() and other != a
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    with pytest.raises(ConfigError, match="already exists"):
        shapes.write_dataset(tmp_path / "a", **kw)


def test_captions_mention_attributes_and_match_matrix() -> None:
    rng = np.random.default_rng(0)
    vocab = set(shapes.caption_words("pretrain"))
    for _ in range(200):
        spec = shapes.sample_spec(rng, "pretrain")
        text, mentions = shapes._caption_and_mentions(spec, rng)
        assert mentions and set(text.replace(".", " .").replace("-", " ").split()) <= vocab | {"sized"}
        if ("shape", spec.shape) in mentions:  # by its name, or now and then by its rare downstream word
            rare = shapes.RENAMED.get(spec.shape, "")
            assert spec.shape in text or (rare in shapes.RARE_IN_PRETRAIN and rare in text)
        if ("color", spec.color) in mentions:
            assert spec.color in text
    assert "a photo of a" in " ".join(shapes.caption(shapes.sample_spec(rng), rng) for _ in range(200))
    batch = shapes.pretrain_batch(np.random.default_rng(1), 32, 32)
    assert batch.images.shape == (32, 32, 32, 3) and batch.images.dtype == np.uint8
    assert batch.match.diagonal().all() and batch.match.sum() > 32  # multi-positive: captions fit other images too


def test_domains_differ() -> None:
    pre = [shapes.sample_spec(np.random.default_rng(i), "pretrain") for i in range(40)]
    down = [shapes.sample_spec(np.random.default_rng(i), "downstream") for i in range(40)]
    # every downstream image has the neon look; pretraining shows it on about a quarter, and captions name it
    assert all(s.style == shapes.STYLE for s in down) and 0 < sum(s.style == shapes.STYLE for s in pre) < 20
    assert "neon" in shapes.caption_words("pretrain")
    a = np.asarray(shapes.render(pre[0], 48), np.float32)
    b = np.asarray(shapes.render(down[0], 48), np.float32)
    assert a.shape == b.shape == (48, 48, 3) and np.abs(a - b).mean() > 5
    assert shapes.render(down[0], 48).tobytes() == shapes.render(down[0], 48).tobytes()


def test_upside_down_look_swaps_each_pair_pixel_for_pixel() -> None:
    """Downstream images are turned 180 degrees; four shapes are another turned, so a turned triangle is an upright
    yield exactly, and a caption that names no orientation describes an upright picture."""
    from dataclasses import replace

    down = [shapes.sample_spec(np.random.default_rng(i), "downstream") for i in range(40)]
    pre = [shapes.sample_spec(np.random.default_rng(i), "pretrain") for i in range(200)]
    assert all(s.orient == "flipped" for s in down) and 20 < sum(s.orient == "flipped" for s in pre) < 80
    for a, b in shapes.PAIRS:
        spec = shapes.sample_spec(np.random.default_rng(5), "downstream", shape=a)
        upright = replace(spec, shape=b, orient="upright")
        assert shapes.render(spec, 48).tobytes() == shapes.render(upright, 48).tobytes()
        assert shapes.render(spec, 48).tobytes() != shapes.render(replace(spec, orient="upright"), 48).tobytes()
    rng = np.random.default_rng(3)
    for spec in pre:
        text, mentions = shapes._caption_and_mentions(spec, rng)
        assert ("orient", spec.orient) in mentions and (("upside down" in text) == (spec.orient == "flipped"))


# ------------------------------------------------------------------------------------------------ tiny CLIP


def test_checkpoint_is_small() -> None:
    from edgeprompt.world import tiny

    assert tiny.tiny_weights_path("edgeprompt-tiny", "shapes").stat().st_size <= 10 * 2**20


def test_unknown_tiny_names() -> None:
    from edgeprompt.world import tiny

    with pytest.raises(ConfigError, match="shapes"):
        tiny.tiny_weights_path("edgeprompt-tiny", "shape")
    with pytest.raises(ConfigError, match="edgeprompt-tiny"):
        tiny.load_tiny_state_dict("edgeprompt-tiyn", "shapes")


def test_embedding_init_is_exact_and_portable() -> None:
    from edgeprompt.world import tiny

    t = tiny.embedding_init(1000, 16, seed=0)
    assert t.dtype == np.float32 and t.shape == (1000, 16)
    assert np.array_equal(t, tiny.embedding_init(1000, 16, seed=0))
    assert abs(float(t.std()) - tiny.EMBED_STD) < 1e-3 and not np.array_equal(t, tiny.embedding_init(1000, 16, 1))
    # pinned bits: a change here would silently change every untrained embedding row of the shipped model
    assert t[0, :3].tobytes().hex() == "208dd93c8f729bbb646306bd"


def test_tiny_loads_strict_and_encodes() -> None:
    import open_clip
    import torch

    from edgeprompt.world import tiny
    from edgeprompt.world.pretrain import encode_with_noise_prefix

    tiny.register()
    tiny.register()  # idempotent
    assert open_clip.list_models().count("edgeprompt-tiny") == 1
    model = open_clip.create_model("edgeprompt-tiny", pretrained=None)
    state = tiny.load_tiny_state_dict("edgeprompt-tiny", "shapes")
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model.load_state_dict(state, strict=True)
    model.eval()
    again = tiny.load_tiny_state_dict("edgeprompt-tiny", "shapes")
    assert all(torch.equal(state[k], again[k]) for k in state)  # deterministic rebuild
    meta = tiny.checkpoint_metadata()
    vocab, width = state["token_embedding.weight"].shape
    init = torch.from_numpy(tiny.embedding_init(vocab, width, int(meta["embedding_seed"])))
    untouched = (state["token_embedding.weight"] == init).all(1)
    assert untouched.sum() > vocab - 1000  # only caption words were trained

    tok = open_clip.get_tokenizer("edgeprompt-tiny")
    absent = [w for v in shapes.RENAMED.values() for w in v.split() if w not in shapes.RARE_IN_PRETRAIN]
    for word in absent:  # the downstream-only words cannot be spelled from pretrained tokens alone ("trapezium"
        ids = tok([word])[0]  # shares its first piece with "trapezoid", as real sub-words do)
        assert untouched[ids[(ids > 0) & (ids < tok.sot_token_id)]].any(), word
    rare = tok([" ".join(shapes.RARE_IN_PRETRAIN)])[0]
    assert not untouched[rare[(rare > 0) & (rare < tok.sot_token_id)]].any()  # the rare ones were trained
    ids = tok(["a photo of a plus sign.", "a red star"])
    assert ids.shape == (2, 77)
    with torch.no_grad():
        text = model.encode_text(ids)
        assert text.shape == (2, 128)
        none = torch.zeros(2, dtype=torch.long)
        plain = encode_with_noise_prefix(model, ids, model.token_embedding(ids), none, torch.zeros(2, 0, 128))
        assert torch.allclose(plain, text, atol=1e-5)
        size = tiny.model_config()["vision_cfg"]["image_size"]
        assert model.encode_image(torch.zeros(3, 3, size, size)).shape == (3, 128)


def test_pretrain_smoke_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import open_clip

    from edgeprompt.world import pretrain, tiny

    out = tmp_path / "w.safetensors"
    metrics = pretrain.pretrain(out, steps=2, batch_size=8, warmup=1, eval_every=0, eval_per_class=1, threads=None)
    assert out.is_file() and not list(tmp_path.glob("*.resume.pt")) and 0 <= metrics["zeroshot_shape_pretrain"] <= 1
    from safetensors.torch import safe_open

    with safe_open(str(out), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    model = open_clip.create_model("edgeprompt-tiny", pretrained=None)
    model.load_state_dict(tiny.unpack_state_dict(tensors, meta), strict=True)
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    assert "--steps" in capsys.readouterr().out
