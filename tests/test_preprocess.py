"""Runtime preprocessing (numpy + PIL) against open_clip's eval transform, and unreadable-image errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeprompt.errors import DataError
from edgeprompt.manifest import PreprocessSpec
from edgeprompt.preprocess import (
    center_crop_box,
    load_image,
    normalize,
    preprocess,
    preprocess_batch,
    resized_size,
)

TOL = 1e-5


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, hard-edged shapes and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), 0.5 + 0.5 * np.sin((xx + yy) / 7.0)], -1) * 255
    base += rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.ellipse([x0, y0, x0 + w // 3, y0 + h // 4], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def _cases() -> list[tuple[str, Image.Image]]:
    rgba = _photo(333, 517, 1).convert("RGBA")
    alpha = np.random.default_rng(2).integers(0, 256, (517, 333), dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return [
        ("rgb-landscape", _photo(640, 480)),
        ("rgba-alpha", rgba),
        ("L-grey", _photo(500, 375, 3).convert("L")),
        ("P-palette", _photo(301, 999, 4).convert("P", palette=Image.Palette.ADAPTIVE)),
        ("LA", _photo(260, 240, 5).convert("LA")),
        ("CMYK", _photo(300, 250, 6).convert("CMYK")),
        ("tall", _photo(97, 1203, 7)),
        ("wide", _photo(1601, 229, 8)),
        ("smaller-than-target", _photo(37, 61, 9)),
        ("tiny-1px-high", _photo(50, 1, 10)),
        ("exact-size", _photo(224, 224, 11)),
        ("odd-margin", _photo(224, 257, 12)),
    ]


def _open_clip_transform(spec: PreprocessSpec) -> Callable[[Image.Image], Any]:
    """open_clip's eval transform (a torchvision Compose) for the same spec."""
    open_clip = pytest.importorskip("open_clip")
    return open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std,
                                     resize_mode=spec.resize, interpolation=spec.interpolation)


@pytest.mark.parametrize("name,img", _cases(), ids=[n for n, _ in _cases()])
@pytest.mark.parametrize("spec", [PreprocessSpec(224), PreprocessSpec(32), PreprocessSpec(224, resize="squash"),
                                  PreprocessSpec(96, interpolation="bilinear")],
                         ids=["224", "32", "squash", "bilinear"])
def test_matches_open_clip(name: str, img: Image.Image, spec: PreprocessSpec) -> None:
    ref = _open_clip_transform(spec)(img).numpy()
    ours = normalize(preprocess(img, spec), spec)
    assert ours.shape == ref.shape == (3, spec.image_size, spec.image_size)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= TOL


def test_pixels_are_unnormalised_in_unit_range() -> None:
    x = preprocess(_photo(300, 200), PreprocessSpec(64))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_files_match_open_clip_on_the_rgb_image(tmp_path: Path) -> None:
    """From disk: load_image (RGB, like the training loader) then preprocess == open_clip on the same RGB image."""
    spec = PreprocessSpec(224)
    transform = _open_clip_transform(spec)
    for i, (name, img) in enumerate(_cases()[:6]):
        # JPEG for CMYK (PNG cannot hold it) and for the first case, so a lossy decode is covered too
        path = tmp_path / f"{i}-{name}.{'jpg' if img.mode == 'CMYK' or i == 0 else 'png'}"
        img.save(path)
        with Image.open(path) as im:
            ref = transform(im.convert("RGB")).numpy()
        assert np.abs(normalize(preprocess(load_image(path), spec), spec) - ref).max() <= TOL


def test_batch_mixes_paths_and_images(tmp_path: Path) -> None:
    spec = PreprocessSpec(32)
    a, b = _photo(100, 80, 1), _photo(80, 100, 2)
    a.save(tmp_path / "a.png")
    batch = preprocess_batch([tmp_path / "a.png", b], spec)
    assert batch.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(batch[0], preprocess(a, spec))
    np.testing.assert_array_equal(batch[1], preprocess(b, spec))


def test_normalize_batched_matches_single() -> None:
    spec = PreprocessSpec(16)
    x = preprocess_batch([_photo(40, 30, i) for i in range(3)], spec)
    for i in range(3):
        np.testing.assert_array_equal(normalize(x, spec)[i], normalize(x[i], spec))


def test_torchvision_size_and_crop_arithmetic() -> None:
    assert resized_size(480, 640, 224) == (224, 298)  # int(224 * 640 / 480) = 298 (truncated)
    assert resized_size(1203, 97, 224) == (2778, 224)  # 224 * 1203 / 97 = 2778.06
    assert center_crop_box(257, 224, 224) == (0, 16, 224, 240)  # round(16.5) = 16: half to even
    assert center_crop_box(259, 224, 224) == (0, 18, 224, 242)  # round(17.5) = 18


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    _photo(200, 150).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.jpg"
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(path)


def test_garbage_jpeg_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.jpg"
    path.write_bytes(_jpeg_bytes()[:16] + b"\x00not a jpeg" * 40)
    with pytest.raises(DataError, match="garbage.jpg"):
        load_image(path)


def test_text_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match="notes.txt") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_batch_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent.png"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg"):
        preprocess_batch([_photo(20, 20), tmp_path / "bad.jpg"], PreprocessSpec(16))


def test_unknown_spec_values_raise() -> None:
    from edgeprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="resize"):
        preprocess(_photo(20, 20), PreprocessSpec(16, resize="longest-ish"))
    with pytest.raises(ConfigError, match="interpolation"):
        preprocess(_photo(20, 20), PreprocessSpec(16, interpolation="lanczos"))


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """16-bit PNGs and float TIFFs read as the picture they hold (PIL's convert would give white and black)."""
    import numpy as np
    from PIL import Image

    from edgeprompt.preprocess import load_image

    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "wide.png")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "float.tiff")
    Image.fromarray((ramp * 255).astype(np.uint8), "L").save(tmp_path / "eight.png")
    want = np.asarray(load_image(tmp_path / "eight.png"), np.int16)
    for name in ("wide.png", "float.tiff"):
        got = np.asarray(load_image(tmp_path / name), np.int16)
        assert got.shape == (64, 64, 3) and np.abs(got - want).max() <= 1, name
