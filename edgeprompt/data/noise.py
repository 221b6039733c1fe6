"""Seeded label noise, as in the NLPrompt / VisPrompt protocol (``DatasetWrapper``).

Exactly ``floor(rate * N)`` samples, chosen by a global shuffle (not per class), get a wrong label:

- ``sym``: uniform over the other C-1 classes;
- ``asym``: y -> (y + 1) mod C, the next class *index* (what the public code does; not semantic pairs);
- ``map``: a user-given class -> class flip map (JSON ``{"cat": "dog", …}`` or CSV ``from,to`` lines); samples
  whose class has no entry are never chosen, so the count is ``floor(rate * N_mappable)``.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeprompt.errors import ConfigError, DataError

NOISE_KINDS = ("none", "sym", "asym", "map")


@dataclass(frozen=True)
class NoiseSpec:
    """``kind`` in NOISE_KINDS, ``rate`` in [0, 1), and for ``map`` the flip-map file."""

    kind: str = "none"
    rate: float = 0.0
    map_file: str | None = None

    def __str__(self) -> str:
        if self.kind == "none" or self.rate == 0:
            return "none"
        return f"map:{self.map_file}:{self.rate:g}" if self.kind == "map" else f"{self.kind}:{self.rate:g}"


def parse_noise(text: str) -> NoiseSpec:
    """Parse ``none``, ``sym:R``, ``asym:R`` or ``map:FILE:R`` (R a fraction like 0.5, or a percentage like 50%)."""
    text = text.strip()
    if text in ("", "none", "0"):
        return NoiseSpec()
    if text.startswith("none:"):
        raise ConfigError(f"noise {text!r}: 'none' takes no rate; use none, or sym:R / asym:R / map:FILE:R")
    kind, _, rest = text.partition(":")
    if kind not in NOISE_KINDS:
        from edgeprompt.registry import suggest

        hint = suggest(kind, list(NOISE_KINDS))
        raise ConfigError(f"unknown noise {text!r}.{hint} Use none, sym:R, asym:R or map:FILE:R")
    if kind == "map":
        file, _, r = rest.rpartition(":")
        if not file:
            raise ConfigError(f"noise {text!r}: expected map:FILE:RATE, e.g. map:flips.json:0.3")
        return NoiseSpec("map", _parse_rate(r, text), file)
    return NoiseSpec(kind, _parse_rate(rest, text))


def _parse_rate(r: str, text: str) -> float:
    try:
        rate = float(r[:-1]) / 100 if r.endswith("%") else float(r)
    except ValueError:
        raise ConfigError(f"noise {text!r}: rate {r!r} is not a number (use e.g. sym:0.5 or sym:50%)") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"noise {text!r}: rate must be in [0, 1), got {rate}")
    return rate


def read_flip_map(path: str | Path, classnames: Sequence[str]) -> dict[int, int]:
    """Read a class -> class flip map (JSON object or ``from,to`` CSV) into label indices."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"flip-map file {p} does not exist")
    try:
        if p.suffix.lower() == ".json":
            table = json.loads(p.read_text(encoding="utf-8-sig"))
            if not isinstance(table, dict):
                raise DataError(f"flip map {p} must be a JSON object {{\"from class\": \"to class\", …}}")
            pairs = list(table.items())
        else:
            with p.open(newline="", encoding="utf-8-sig") as f:
                pairs = [(r[0], r[1]) for r in csv.reader(f) if len(r) >= 2 and r[0].strip()]
    except (ValueError, csv.Error, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"flip map {p} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:80]}): "
                        f"use a JSON object or 'from,to' CSV lines") from None
    if not pairs:
        raise DataError(f"flip map {p} has no 'from -> to' pairs")
    index = {n: i for i, n in enumerate(classnames)}
    index.update({n.replace(" ", "_"): i for i, n in enumerate(classnames)})
    out: dict[int, int] = {}
    for a, b in pairs:
        a, b = str(a).strip(), str(b).strip()
        for name in (a, b):
            if name not in index:
                raise DataError(f"flip map {p}: unknown class {name!r}; known: {', '.join(classnames)}")
        if index[a] == index[b]:
            raise DataError(f"flip map {p}: {a!r} maps to itself")
        out[index[a]] = index[b]
    return out


def apply_noise(
    labels: Sequence[int], num_classes: int, spec: NoiseSpec, seed: int, classnames: Sequence[str] | None = None
) -> tuple[list[int], list[bool]]:
    """Corrupt ``labels`` per ``spec``; returns ``(noisy_labels, clean_mask)`` where clean_mask[i] = label unchanged."""
    noisy = list(labels)
    n = len(noisy)
    if spec.kind == "none" or spec.rate == 0 or n == 0:
        return noisy, [True] * n
    if num_classes < 2:
        raise DataError("label noise needs at least 2 classes")
    rng = random.Random(seed)
    if spec.kind == "map":
        flips = read_flip_map(spec.map_file or "", classnames or [str(i) for i in range(num_classes)])
        candidates = [i for i in range(n) if noisy[i] in flips]
    else:
        candidates = list(range(n))
    rng.shuffle(candidates)
    chosen = candidates[: int(spec.rate * len(candidates))]
    for i in chosen:
        y = noisy[i]
        if spec.kind == "sym":
            new = rng.randrange(num_classes - 1)
            noisy[i] = new if new < y else new + 1  # uniform over the other C-1 classes
        elif spec.kind == "asym":
            noisy[i] = (y + 1) % num_classes
        else:
            noisy[i] = flips[y]
    clean = [a == b for a, b in zip(noisy, labels, strict=True)]
    return noisy, clean
