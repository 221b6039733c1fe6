"""The feature cache at dataset scale: shards written by several processes read as one cache, a cheap freshness
check, damaged shards recomputed, parallel decoding equal to serial."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprompt.errors import ConfigError
from tests.conftest import make_folder


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def test_shards_from_several_writers_read_as_one_cache(tiny_backbone, tmp_path: Path) -> None:  # noqa: ANN001
    from edgeprompt.config import parse_shard
    from edgeprompt.features.cache import AugmentSpec, FeatureCache

    paths = _paths(make_folder(tmp_path / "d", per_class=6))
    aug = AugmentSpec(views=2, scale=(0.5, 1.0))
    ref, _ = FeatureCache(tiny_backbone, tmp_path / "ref", workers=0).features(paths, aug)
    shared = tmp_path / "shared"
    for rank in range(3):  # three "processes" (each its own writer id) take every third image
        cache = FeatureCache(tiny_backbone, shared, workers=1)
        cache.features([p for i, p in enumerate(paths) if i % 3 == rank], aug)
    reader = FeatureCache(tiny_backbone, shared, workers=0)
    got, _ = reader.features(paths, aug)
    assert reader.misses == 0 and reader.hits == len(paths)
    assert torch.equal(got, ref)  # parallel decoding in workers gives the serial features exactly
    assert len(list(reader.dir.glob("shards/*/*.safetensors"))) == 3
    assert parse_shard("2/4") == (2, 4)
    os.environ.update(RANK="1", WORLD_SIZE="8")
    try:
        assert parse_shard(None) == (1, 8)  # torchrun
    finally:
        del os.environ["RANK"], os.environ["WORLD_SIZE"]
    for bad in ("4/4", "1-2", "a/b", "-1/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_warm_cache_does_not_rehash_and_notices_changes(tiny_backbone, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeprompt.features.shards as shards
    from edgeprompt.features.cache import FeatureCache

    paths = _paths(make_folder(tmp_path / "d", per_class=3))
    first, _ = FeatureCache(tiny_backbone, tmp_path / "c", workers=0).features(paths)
    calls: list[str] = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p: calls.append(str(p)) or real(p))
    warm = FeatureCache(tiny_backbone, tmp_path / "c", workers=0)
    again, _ = warm.features(paths)
    assert calls == [] and warm.misses == 0 and torch.equal(again, first)
    # new content (and so a new size or mtime): re-hashed and re-encoded; a mere touch: re-hashed, still a hit
    from PIL import Image

    Image.new("RGB", (40, 40), (250, 250, 0)).save(paths[0])
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = FeatureCache(tiny_backbone, tmp_path / "c", workers=0)
    out, _ = changed.features(paths)
    assert sorted(calls) == sorted(str(p.resolve()) for p in paths[:2])
    assert changed.misses == 1 and not torch.equal(out[0], first[0]) and torch.equal(out[1:], first[1:])


def test_damaged_shard_is_recomputed_and_tokens_are_cached_apart(tiny_backbone, tmp_path: Path) -> None:  # noqa: ANN001
    from edgeprompt.features.cache import FeatureCache

    paths = _paths(make_folder(tmp_path / "d", per_class=2))
    cache = FeatureCache(tiny_backbone, tmp_path / "c", workers=0)
    pooled, _ = cache.features(paths)
    (shard,) = cache.dir.glob("shards/eval/*.safetensors")
    shard.write_bytes(b"PK\x03\x04 broken")
    fresh = FeatureCache(tiny_backbone, tmp_path / "c", workers=0)
    again, _ = fresh.features(paths)
    assert fresh.misses == len(paths) and torch.allclose(again, pooled)
    with_tok, tokens = fresh.features(paths, with_tokens=True)  # pooled-only entries do not satisfy a tokens request
    assert tokens is not None and tokens.shape[:2] == (len(paths), 16) and fresh.misses == 2 * len(paths)
    assert torch.allclose(with_tok, pooled, atol=1e-6)


def test_extract_command_fills_the_cache_for_tune(tiny_model: str, tmp_path: Path) -> None:
    from edgeprompt.config import ExtractConfig, TrainConfig, TuneConfig
    from edgeprompt.features.extract import extract
    from edgeprompt.train.run import tune

    data = make_folder(tmp_path / "d", per_class=4)
    cache = tmp_path / "c"
    parts = [extract(ExtractConfig(data=str(data), model=tiny_model, pretrained="none", views=2, shard=f"{i}/2",
                                   workers=0, cache_dir=str(cache))) for i in range(2)]
    assert sum(p["images"] for p in parts) == 12 and all(p["images_per_s"] for p in parts)
    res = tune(TuneConfig(train=str(data), out=str(tmp_path / "run"), method="coop", model=tiny_model,
                          pretrained="none", shots=0, views=2, cache_dir=str(cache), method_options={"n_ctx": 4},
                          train_cfg=TrainConfig(epochs=1, batch_size=4, eval_every=0)))
    # views and centre of all 12 images (the choice of context reads the centre views, the tune reuses them)
    assert res["cache"]["misses"] == 0 and res["cache"]["hits"] == 24
    assert np.isfinite(res["final_loss"])


def test_a_damaged_cache_heals(tiny_backbone, image_folder, tmp_path, caplog) -> None:  # noqa: ANN001
    """A foreign freshness table is rebuilt, a damaged shard is removed and recomputed, each with one warning."""
    import logging

    from edgeprompt.features.cache import FeatureCache

    cache = FeatureCache(tiny_backbone, tmp_path / "c")
    paths = sorted(image_folder.rglob("*.png"))
    first, _ = cache.features(paths)
    db = cache.hashes.db
    db.write_bytes(b"this is not a database at all" * 20)
    (shard,) = list(cache.dir.rglob("*.safetensors"))
    shard.write_bytes(b"PK\x03\x04 damaged")
    with caplog.at_level(logging.WARNING, logger="edgeprompt"):
        again, _ = FeatureCache(tiny_backbone, tmp_path / "c").features(paths)
    assert torch.equal(first, again)
    assert "index" in caplog.text and "damaged" in caplog.text and "removing damaged feature shard" in caplog.text
    assert not shard.exists() and db.stat().st_size > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeprompt"):
        FeatureCache(tiny_backbone, tmp_path / "c").features(paths)
    assert "damaged" not in caplog.text  # healed: no warning the second time


def test_shard_reads_touch_only_the_rows_asked_and_old_npz_shards_still_read(tmp_path: Path) -> None:
    import io

    from edgeprompt.features.shards import ShardStore

    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((100, 8)).astype(np.float32)
    tokens = rng.standard_normal((100, 4, 8)).astype(np.float16)
    shas = [f"{i:064x}" for i in range(100)]
    store = ShardStore(tmp_path)
    (shard,) = store.write("eval", shas, pooled, tokens)
    assert shard.suffix == ".safetensors"
    reader = ShardStore(tmp_path)  # a fresh process: the index comes from the files
    want = [3, 97, 4, 50, 3]
    places = reader.lookup("eval", [shas[i] for i in want], with_tokens=True)
    got_p, got_t = reader.read(places, with_tokens=True)  # type: ignore[arg-type]
    assert all(np.array_equal(g, pooled[i]) for g, i in zip(got_p, want, strict=True))
    assert all(np.array_equal(g, tokens[i]) for g, i in zip(got_t, want, strict=True))
    row_bytes = pooled[0].nbytes + tokens[0].nbytes
    assert reader.bytes_read == 4 * row_bytes  # rows 3, 4, 50, 97: not the shard's 100
    # a shard written by an earlier version (.npz) is found and read beside the new ones
    old = {"shas": np.asarray([f"{i:064x}" for i in range(100, 103)]), "pooled": pooled[:3]}
    buf = io.BytesIO()
    np.savez(buf, **old)
    (tmp_path / "shards" / "eval" / "old-00001.npz").write_bytes(buf.getvalue())
    again = ShardStore(tmp_path)
    (place,) = again.lookup("eval", [f"{101:064x}"], with_tokens=False)
    assert place is not None and np.array_equal(again.read([place], with_tokens=False)[0][0], pooled[1])


def test_an_extract_rank_checks_and_hashes_only_its_share(tiny_model: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import edgeprompt.features.shards as shards
    from edgeprompt.config import ExtractConfig
    from edgeprompt.data import folder as folder_mod
    from edgeprompt.features.extract import extract, path_rank

    data = make_folder(tmp_path / "d", per_class=6)
    hashed: list[str] = []
    decoded: list[str] = []
    real_sha, real_check = shards.sha256_file, folder_mod.check_image
    monkeypatch.setattr(shards, "sha256_file", lambda p: hashed.append(str(p)) or real_sha(p))
    monkeypatch.setattr(folder_mod, "check_image", lambda p: decoded.append(str(p)) or real_check(p))
    share = sorted(str(p.resolve()) for p in data.rglob("*.png") if path_rank(p, 3) == 1)
    assert 0 < len(share) < 18
    res = extract(ExtractConfig(data=str(data), model=tiny_model, pretrained="none", views=0, shard="1/3",
                                workers=0, cache_dir=str(tmp_path / "c")))
    assert res["images"] == len(share) and sorted(hashed) == share and sorted(decoded) == share
