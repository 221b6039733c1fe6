"""A procedural world of coloured shapes on textured backgrounds, with captions (numpy + PIL, no torch).

Two domains share the same objects:

- ``pretrain``: clean renders; captions use the pretraining vocabulary. The tiny CLIP is trained on these.
- ``downstream``: the labeled folders users tune on. Every image is **upside down** (turned 180 degrees, as from a
  camera mounted on a ceiling) and drawn in the neon look (``STYLE``: a dark backdrop, lit shapes with a glow);
  pretraining shows each look on a quarter of its images and those captions name it. Four shapes are another shape
  turned over (``PAIRS``: an upside-down triangle is a yield sign), so the zero-shot template, which names no look,
  reads each pair the wrong way round, and one learned context ("upside down") reads every pair right. A few class
  names are words the captions rarely or never use (``RENAMED``: "rhombus" for diamond, "plus sign" for cross), as
  with real datasets: a shared context cannot teach those, a class-specific one can. Why this world and not the
  others tried: ``docs/world.md``.

Everything is a pure function of a seed: ``ImageSpec`` holds every random choice, ``render`` draws it.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgeprompt.errors import ConfigError
from edgeprompt.registry import suggest

# fmt: off
TASKS = ("shape", "color", "shape-color")
DOMAINS = ("pretrain", "downstream")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "pentagon", "heart", "crescent",
          "ring", "arrow", "oval", "yield", "trapezoid", "semicircle", "bucket", "chevron", "bowl", "caret")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 215, 30), "green": (35, 165, 55),
    "cyan": (30, 200, 210), "blue": (35, 70, 215), "purple": (135, 50, 185), "pink": (245, 115, 185),
}
TEXTURES = {"pretrain": ("flat", "stripes", "checker", "noise", "gradient"),
            "downstream": ("flat", "stripes", "checker", "noise", "gradient", "dots")}
# Shape radius / canvas side. World v3 draws larger shapes than v2 (0.19-0.40): at the model's 32 px a 6-pixel
# radius left a tiny ViT unable to tell a hexagon from a pentagon, and its frozen features capped a 16-shot probe
# near 69 % (docs/world.md).
SIZES: dict[str, tuple[float, float]] = {"small": (0.27, 0.32), "medium": (0.32, 0.37), "large": (0.37, 0.42)}
# Downstream label words that pretraining captions rarely (RARE_IN_PRETRAIN) or never contain: the text-side part
# of the domain gap. Five of the twenty shapes are renamed, two of them to words pretraining never uses; the look
# (FLIP_P), not the names, is what keeps zero-shot a prior in world v3.1 (docs/world.md).
RENAMED: dict[str, str] = {"diamond": "rhombus", "cross": "plus sign", "ring": "donut", "crescent": "half moon",
                           "oval": "ellipse", "purple": "violet", "cyan": "teal"}
# Pretraining captions name these downstream words only now and then (probability per caption of that shape).
RARE_IN_PRETRAIN: dict[str, float] = {"rhombus": 0.05, "donut": 0.05, "ellipse": 0.05}
# The first downstream look: every downstream image is drawn in neon (a dark backdrop, lit shapes with a glow).
# Pretraining shows the same look on a quarter of its images, and those captions name it; a caption that names no look
# describes a plain picture. So "a photo of a {}" is the wrong description downstream, and a prompt can learn the
# right one.
STYLE, STYLE_P = "neon", 0.25
STYLE_PHRASES = {"neon": (" in neon", " glowing in neon")}
# The second downstream look: every downstream image is upside down (a camera mounted on a ceiling). Pretraining
# shows it on a quarter of its images and those captions say so. Four shapes are another shape turned 180 degrees
# (triangle / yield, trapezoid / bucket, semicircle / bowl, chevron / caret), so "a photo of a triangle" matches
# the upside-down triangles of the downstream folders worse than "a photo of a yield" does: a look whose cost sits
# in pairs of classes that swap, which one shared context ("upside down") undoes for every pair at once.
FLIP_P = 0.25
FLIP_PREFIX, FLIP_SUFFIX = ("upside down ",), (" upside down", " turned upside down")
# Caption words per attribute value; synonyms make the text side less brittle.
_SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"), "large": ("large", "big")}
_TEXTURE_WORDS = {"flat": ("plain", "flat"), "stripes": ("striped",), "checker": ("checkered", "checkerboard"),
                  "noise": ("noisy", "mottled"), "gradient": ("gradient", "shaded"), "dots": ("dotted",)}
_TEMPLATES = (
    "{shape}", "a {shape}", "a photo of a {shape}", "an image of a {shape}", "a {shape} shape",
    "a picture of a {shape}", "{color} {shape}", "a {color} {shape}", "a photo of a {color} {shape}",
    "a drawing of a {color} {shape}", "a {size} {shape}", "a {size} {color} {shape}",
    "a photo of a {size} {color} {shape}", "a {color} {shape} on a {texture} background",
    "a {size} {color} {shape} on a {texture} background", "a {shape} on a {texture} background",
    "a {texture} background with a {color} {shape}", "there is a {color} {shape} in the picture",
    "a {color} shape", "something {color}", "a photo of a {color} object", "a {size} shape",
    "a shape on a {texture} background",
)
# fmt: on
_SS = 4  # supersampling factor for anti-aliased shape edges


@dataclass(frozen=True)
class ImageSpec:
    """Every random choice behind one image; lengths are fractions of the canvas so any size renders it."""

    shape: str
    color: str
    size: str  # caption bucket of ``radius``: small / medium / large
    texture: str
    domain: str
    radius: float  # shape radius / canvas side
    cx: float  # shape centre / canvas side
    cy: float
    angle: float  # degrees, counter-clockwise
    rgb: tuple[int, int, int]  # the colour's RGB after jitter
    bg: tuple[tuple[int, int, int], tuple[int, int, int]]  # the texture's two colours
    period: float  # texture period / canvas side
    tex_angle: float  # texture orientation, degrees
    seed: int  # drives the noise texture
    style: str = "plain"  # plain | neon: a whole-image look that captions name (STYLE_PHRASES)
    orient: str = "upright"  # upright | flipped (turned 180 degrees; captions say "upside down")


class PretrainBatch(NamedTuple):
    """One contrastive batch: ``match[i, j]`` is True when caption j is a true description of image i."""

    images: np.ndarray  # (n, size, size, 3) uint8
    captions: list[str]
    match: np.ndarray  # (n, n) bool; the diagonal is always True


def _check(task: str | None = None, domain: str | None = None) -> None:
    for value, choices, what in ((task, TASKS, "task"), (domain, DOMAINS, "domain")):
        if value is not None and value not in choices:
            raise ConfigError(
                f"unknown {what} {value!r}.{suggest(value, list(choices))} Use one of: {', '.join(choices)}"
            )


def label_word(value: str, domain: str) -> str:
    """The word a domain uses for a shape or colour value (``diamond`` is called ``rhombus`` downstream)."""
    _check(domain=domain)
    return RENAMED.get(value, value) if domain == "downstream" else value


def class_attributes(task: str, domain: str = "downstream") -> dict[str, dict[str, str]]:
    """Folder name -> the attributes it fixes, as ``sample_spec`` keywords: ``{"rhombus": {"shape": "diamond"}}``."""
    _check(task, domain)
    out = {}
    for shape in SHAPES if task != "color" else (None,):
        for color in COLORS if task != "shape" else (None,):
            words = " ".join(label_word(v, domain) for v in (color, shape) if v)
            out[words.replace(" ", "_")] = {k: v for k, v in (("shape", shape), ("color", color)) if v}
    return dict(sorted(out.items()))


def classnames(task: str, domain: str = "downstream") -> list[str]:
    """Class-folder names of a task in a domain, sorted as a folder scan lists them.

    Args:
        task: one of ``TASKS``.
        domain: one of ``DOMAINS``; ``downstream`` uses the renamed label words.

    Returns:
        Folder names with underscores for spaces (``plus_sign``, ``red_circle``); prompts use them with spaces.
    """
    return list(class_attributes(task, domain))


# ----------------------------------------------------------------------------------------------- geometry


def _ngon(n: int, r: float = 1.0, phase: float = -np.pi / 2, inner: float | None = None) -> np.ndarray:
    """Regular polygon (or a star when ``inner`` is given) of radius ``r``; image y points down."""
    k = 2 * n if inner else n
    t = phase + 2 * np.pi * np.arange(k) / k
    rad = np.where(np.arange(k) % 2, inner, r) if inner else np.full(k, r)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y - 2.5], 1) / 16.0


_A, _W = 1.0, 0.34  # cross arm length and half-width
# Each shape is polygons drawn in order with a fill (255 adds, 0 cuts a hole); radius about 1.
# fmt: off
_GEOMETRY: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_ngon(48), 255)],
    "square": [(_ngon(4, 1.2, np.pi / 4), 255)],
    "triangle": [(_ngon(3, 1.2) + [0.0, 0.2], 255)],
    "diamond": [(np.array([[0, -1.15], [0.62, 0], [0, 1.15], [-0.62, 0]]), 255)],
    "star": [(_ngon(5, 1.15, inner=0.47), 255)],
    "cross": [(np.array([[-_W, -_A], [_W, -_A], [_W, -_W], [_A, -_W], [_A, _W], [_W, _W], [_W, _A],
                         [-_W, _A], [-_W, _W], [-_A, _W], [-_A, -_W], [-_W, -_W]]), 255)],
    "hexagon": [(_ngon(6, 1.05, 0.0), 255)],
    "pentagon": [(_ngon(5, 1.08), 255)],
    "heart": [(_heart() * 1.1, 255)],
    "crescent": [(_ngon(48), 255), (_ngon(48, 0.85) + [0.45, -0.25], 0)],
    "ring": [(_ngon(48), 255), (_ngon(48, 0.55), 0)],
    "arrow": [(np.array([[-1, -0.28], [0.15, -0.28], [0.15, -0.7], [1.05, 0], [0.15, 0.7], [0.15, 0.28],
                         [-1, 0.28]]), 255)],
    "oval": [(_ngon(48) * [1.15, 0.6], 255)],
    "trapezoid": [(np.array([[-0.5, -0.75], [0.5, -0.75], [1.15, 0.75], [-1.15, 0.75]]), 255)],
    "semicircle": [(_ngon(48, 1.15)[12:37] + [0.0, -0.5], 255)],
    "chevron": [(np.array([[-1.0, -0.7], [0.0, 0.1], [1.0, -0.7], [1.0, -0.05], [0.0, 0.75], [-1.0, -0.05]]), 255)],
}
# The partners: each is its shape turned 180 degrees, exactly (an upside-down triangle is a yield, pixel for pixel).
PAIRS = (("triangle", "yield"), ("trapezoid", "bucket"), ("semicircle", "bowl"), ("chevron", "caret"))
for _a, _b in PAIRS:
    _GEOMETRY[_b] = [(-poly, fill) for poly, fill in _GEOMETRY[_a]]
# fmt: on
# Rotation range per shape: small where a larger turn would make another class (square -> diamond, cross -> x), and
# at most MAX_TURN for every shape (v3: shapes stand roughly upright, like icons; a full turn made the shapes far
# slower to learn for the tiny model, docs/world.md).
MAX_TURN = 30.0
_MAX_TURN = {
    "square": 20.0,
    "diamond": 20.0,
    "cross": 20.0,
    "heart": 30.0,
    "triangle": 20.0,  # a triangle turned 60 degrees is a yield: keep the two ranges apart
    "yield": 20.0,
    "trapezoid": 30.0,
    "bucket": 30.0,
    "semicircle": 40.0,
    "bowl": 40.0,
    "chevron": 30.0,
    "caret": 30.0,
}


def _mask(shape: str, radius: float, cx: float, cy: float, angle: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape (size, size)."""
    big = size * _SS
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # counter-clockwise with y down
    for poly, fill in _GEOMETRY[shape]:
        pts = (poly @ rot.T) * radius * big + [cx * big, cy * big]
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    return np.mgrid[0:size, 0:size].astype(np.float32) / size


def _background(spec: ImageSpec, size: int) -> np.ndarray:
    """(size, size, 3) float32 texture in 0..255."""
    yy, xx = _grid(size)
    a = np.deg2rad(spec.tex_angle)
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    p = spec.period
    if spec.texture == "flat":
        t = np.zeros_like(u)
    elif spec.texture == "stripes":
        t = (np.floor(u / p) % 2).astype(np.float32)
    elif spec.texture == "checker":
        t = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    elif spec.texture == "gradient":
        t = np.clip(u * 0.7 + 0.15, 0, 1)
    elif spec.texture == "dots":
        du, dv = (u / p) % 1 - 0.5, (v / p) % 1 - 0.5
        t = (du**2 + dv**2 < 0.09).astype(np.float32)
    else:  # noise: a coarse random grid, smoothly upsampled
        g = max(2, round(1 / p))
        grid = np.random.default_rng(spec.seed).random((g, g)).astype(np.float32) * 255
        t = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32) / 255
    c1, c2 = (np.array(c, np.float32) for c in spec.bg)
    return c1 + t[..., None] * (c2 - c1)


def render(spec: ImageSpec, size: int = 64) -> Image.Image:
    """Draw ``spec`` as a ``size`` x ``size`` RGB image (deterministic)."""
    img = _background(spec, size)
    if spec.style == "neon":  # a dark backdrop, the shapes stay lit
        img = img * 0.16
    angle = spec.angle + (180.0 if spec.orient == "flipped" else 0.0)
    m = _mask(spec.shape, spec.radius, spec.cx, spec.cy, angle, size)[..., None]
    img = img * (1 - m) + np.array(spec.rgb, np.float32) * m
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if spec.style == "neon":  # the glow: a blurred copy added on top
        glow = np.asarray(out.filter(ImageFilter.GaussianBlur(0.05 * size)), np.float32)
        out = Image.fromarray(np.clip(np.asarray(out, np.float32) + 0.8 * glow + 0.5, 0, 255).astype(np.uint8))
    return out


# ----------------------------------------------------------------------------------------------- sampling


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _place(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    room = max(0.0, 0.5 - radius * 1.15 - 0.02)  # keep the whole shape on the canvas
    return float(0.5 + rng.uniform(-room, room)), float(0.5 + rng.uniform(-room, room))


def sample_spec(
    rng: np.random.Generator, domain: str = "pretrain", shape: str | None = None, color: str | None = None
) -> ImageSpec:
    """Draw one random image description.

    Args:
        rng: the source of every random choice.
        domain: ``pretrain`` (clean) or ``downstream`` (shifted image statistics).
        shape: fix the shape (a key of ``SHAPES``, pretraining vocabulary); random when None.
        color: fix the colour (a key of ``COLORS``); random when None.

    Returns:
        A frozen ``ImageSpec``; ``render(spec, size)`` draws it.
    """
    _check(domain=domain)
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    color = color or list(COLORS)[rng.integers(len(COLORS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    radius = float(rng.uniform(*SIZES[size]))
    cx, cy = _place(rng, radius)
    turn = _MAX_TURN.get(shape, MAX_TURN)
    textures = TEXTURES[domain]
    texture = textures[rng.integers(len(textures))]
    grey = rng.uniform(60, 200)  # muted backgrounds, so every saturated shape colour stands out by hue
    c1 = _jitter(rng, (int(grey),) * 3, 22)
    step = rng.choice([-1, 1]) * rng.uniform(18, 45)  # texture contrast: mostly a change of lightness
    c2 = _jitter(rng, tuple(int(np.clip(c + step, 0, 255)) for c in c1), 10)
    # fmt: off
    base = dict(shape=shape, color=color, size=size, texture=texture, domain=domain, radius=radius, cx=cx, cy=cy,
                angle=float(rng.uniform(-turn, turn)), rgb=_jitter(rng, COLORS[color], 18), bg=(c1, c2),
                period=float(rng.uniform(0.08, 0.2)), tex_angle=float(rng.uniform(0, 180)),
                seed=int(rng.integers(2**31)))
    # fmt: on
    if domain == "pretrain":
        style = STYLE if rng.random() < STYLE_P else "plain"
        orient = "flipped" if rng.random() < FLIP_P else "upright"
        return ImageSpec(**base, style=style, orient=orient)
    return ImageSpec(**base, style=STYLE, orient="flipped")


# ----------------------------------------------------------------------------------------------- captions


def _caption_and_mentions(spec: ImageSpec, rng: np.random.Generator) -> tuple[str, frozenset[tuple[str, str]]]:
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    shape_word = label_word(spec.shape, spec.domain)
    rare = RENAMED.get(spec.shape)
    if spec.domain == "pretrain" and rare in RARE_IN_PRETRAIN and rng.random() < RARE_IN_PRETRAIN[rare]:
        shape_word = rare  # a word the pretraining captions use only now and then
    words = {
        "shape": shape_word,
        "color": label_word(spec.color, spec.domain),
        "size": rng.choice(_SIZE_WORDS[spec.size]),
        "texture": rng.choice(_TEXTURE_WORDS[spec.texture]),
    }
    text = template.format(**{k: words[k] for k in fields})
    mentions = {(f, getattr(spec, f)) for f in fields}
    if spec.style != "plain":
        phrases = STYLE_PHRASES[spec.style]
        text += phrases[rng.integers(len(phrases))]
        mentions.add(("style", spec.style))
    else:
        mentions.add(("style", "plain"))  # a caption that names no look describes a plain picture
    if spec.orient == "flipped":
        if rng.random() < 0.5:
            text = FLIP_PREFIX[rng.integers(len(FLIP_PREFIX))] + text
        else:
            text += FLIP_SUFFIX[rng.integers(len(FLIP_SUFFIX))]
    mentions.add(("orient", spec.orient))  # no phrase: an upright picture
    if rng.random() < 0.7:  # mostly grammatical articles; sometimes "a arrow", as a fixed prompt template writes it
        text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    if rng.random() < 0.5:
        text += "."
    return text, frozenset(mentions)


def caption_words(domain: str = "pretrain") -> list[str]:
    """Every word (and '.') a caption in ``domain`` can contain, sorted; pretraining trains exactly these."""
    _check(domain=domain)
    words = {w for t in _TEMPLATES for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t))} | {"an", "."}
    for v in (*SHAPES, *COLORS):
        words.update(label_word(v, domain).split())
    if domain == "pretrain":
        for w in RARE_IN_PRETRAIN:
            words.update(w.split())
    for phrases in (*STYLE_PHRASES.values(), FLIP_PREFIX, FLIP_SUFFIX):
        for ph in phrases:
            words.update(re.findall(r"[a-z]+", ph))
    for table in (_SIZE_WORDS, _TEXTURE_WORDS):
        words.update(w for k, ws in table.items() if k in SIZES or k in TEXTURES[domain] for w in ws)
    return sorted(words)


def caption(spec: ImageSpec, rng: np.random.Generator) -> str:
    """A random caption for ``spec`` that mentions some of its attributes, e.g. 'a small blue circle.'."""
    return _caption_and_mentions(spec, rng)[0]


def pretrain_batch(rng: np.random.Generator, n: int, size: int = 64, domain: str = "pretrain") -> PretrainBatch:
    """``n`` fresh images with one caption each, plus which captions describe which images.

    Args:
        rng: the source of every random choice.
        n: batch size.
        size: image side in pixels.
        domain: the image domain; pretraining uses ``pretrain``.

    Returns:
        A ``PretrainBatch``; ``match`` gives the multi-positive targets for a contrastive loss ("a hexagon" is
        true of every hexagon in the batch, not only of the image it was written for).
    """
    specs = [sample_spec(rng, domain) for _ in range(n)]
    caps = [_caption_and_mentions(s, rng) for s in specs]
    keys = ("shape", "color", "size", "texture", "style", "orient")
    have = np.array([[getattr(s, k) for k in keys] for s in specs])  # (n, 6) attribute values
    want = np.array([[dict(m).get(k, "") for k in keys] for _, m in caps])  # "" = not mentioned
    match = ((have[:, None] == want[None]) | (want[None] == "")).all(-1)
    images = np.stack([np.asarray(render(s, size)) for s in specs])
    return PretrainBatch(images, [c for c, _ in caps], match)


# ----------------------------------------------------------------------------------------------- folders


def write_dataset(
    out: str | Path,
    task: str = "shape",
    per_class: int = 32,
    domain: str = "downstream",
    seed: int = 0,
    image_size: int = 64,
    val_per_class: int = 8,
    test_per_class: int = 40,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``OUT/{train,val,test}/<class_folder>/<nnnnn>.png`` (built in a temp dir, renamed when complete).

    Image k of class c in a split depends only on (seed, split, c, k), so a larger ``per_class`` keeps the
    first images and the splits never share an image.

    Args:
        out: the dataset folder to create.
        task: ``shape``, ``color`` or ``shape-color``: what the class folders separate.
        per_class: training images per class.
        domain: ``downstream`` (default, shifted) or ``pretrain``.
        seed: dataset seed.
        image_size: side of the square PNGs.
        val_per_class: validation images per class (0 leaves the split out).
        test_per_class: test images per class (0 leaves the split out).
        overwrite: replace an existing ``out``.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        Summary: path, task, domain, seed, image_size, classes, and image counts per split.
    """
    from edgeprompt.fileio import atomic_dir, atomic_write_json, guard_output, output_lock

    _check(task, domain)
    counts = {"train": per_class, "val": val_per_class, "test": test_per_class}
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be a whole number in 0..{2**32 - 1}, got {seed!r}")
    if any(n < 0 for n in counts.values()) or per_class < 1 or not 8 <= image_size <= 1024:
        raise ConfigError("per-class must be >= 1, val/test counts >= 0 and image size within 8..1024")
    out = guard_output(out, "generated dataset", {}, overwrite=overwrite)
    classes = class_attributes(task, domain)
    total, done = sum(counts.values()) * len(classes), 0
    with output_lock(out), atomic_dir(out, overwrite=overwrite) as tmp:
        for si, (split, n) in enumerate(counts.items()):
            for ci, (name, attrs) in enumerate(classes.items() if n else ()):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for k in range(n):
                    rng = np.random.default_rng([seed, si, ci, k])
                    render(sample_spec(rng, domain, **attrs), image_size).save(folder / f"{k:05d}.png")
                    done += 1
                    if progress:
                        progress(done, total)
        # fmt: off
        summary = {"path": str(out), "task": task, "domain": domain, "seed": seed, "image_size": image_size,
                   "classes": list(classes), "images": {s: n * len(classes) for s, n in counts.items() if n}}
        # fmt: on
        # the folder's own record leaves out where it was written, so the same seed gives the same bytes anywhere
        atomic_write_json(tmp / "world.json", {k: v for k, v in summary.items() if k != "path"})
    return summary
