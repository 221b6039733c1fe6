"""The images an INT8 export calibrates on, the held-out images it is gated on, and the gate (docs/int8.md).

- **Calibration**: ``--calib DIR`` (any images), or by default the run's own tuning images, preprocessed exactly as
  the device will (the centre view: resize, centre crop), at most ``calib_n`` spread evenly over the set.
- **Held-out**: never a calibration image. ``--int8-check DIR`` (a labeled folder), or by default the images of the
  run's training folder that the run did not tune on, then the tuning images left out of calibration, at most
  ``n_check`` spread evenly. Labels come from the folders (and the run's true labels for its own images).
- **Gate**: INT8 and FP32 run on the same held-out pixels with the deployment runtime. INT8 top-1 accuracy under
  ``min_accuracy`` (0.99) of FP32's refuses the bundle (MLPerf's rule for reduced precision: accuracy, not
  agreement, since INT8 may flip near-ties both ways without costing accuracy); ``min_agreement`` adds the stricter
  agreement bar when asked for. Held-out images without a label fall back to agreement >= ``min_accuracy``.
  A refusal is one line naming the next option to try.

Workstation side: :func:`edgeprompt.export.bundle.export_run` calls it between the FP32 export and the bundle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.config import INT8_FLOAT_GROUPS, Int8Config
from edgeprompt.errors import DataError, ExportError
from edgeprompt.manifest import IOSpec, PreprocessSpec

log = logging.getLogger(__name__)

MIN_HOLDOUT = 8  # fewer held-out images cannot say anything about a 99 % agreement
ADVISED_CALIB = 500  # NVIDIA's advice for the number of calibration images (docs/int8.md)


@dataclass(frozen=True)
class ImageSet:
    """Paths with labels (-1 where unknown) and where they came from."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    source: str
    available: int  # images the source had before the cap

    def __len__(self) -> int:
        return len(self.paths)


def spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` items evenly spaced over ``items`` (so every class of a sorted folder shows up)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def _split(run_dir: Path) -> dict[str, Any]:
    from edgeprompt.artifact import read_split
    from edgeprompt.errors import ArtifactError

    try:
        return read_split(run_dir)
    except ArtifactError as e:
        raise ExportError(f"{str(e).split(': re-run')[0]}: --int8 needs the run's tuning split, or pass --calib DIR "
                          f"and --int8-check DIR") from None


def calibration_set(run_dir: str | os.PathLike[str], cfg: Int8Config) -> ImageSet:
    """The calibration images (see the module docstring).

    Raises:
        ExportError: No calibration image can be read here.
    """
    from edgeprompt.data.folder import list_images

    if cfg.calib is not None:
        try:
            paths = list_images([cfg.calib])
        except DataError as e:
            raise ExportError(f"--calib {cfg.calib}: {e}") from None
        source = f"folder {Path(cfg.calib).resolve()}"
    else:
        paths = [Path(p) for p in _split(Path(run_dir)).get("paths", []) if Path(p).is_file()]
        source = "run tuning images (centre views)"
    if not paths:
        raise ExportError(f"no calibration images: {source} has none readable here; pass --calib DIR")
    chosen = spread([p.resolve() for p in paths], cfg.calib_n)
    if len(chosen) < ADVISED_CALIB:
        log.warning("calibrating INT8 on %d images (%s); NVIDIA advises >= %d", len(chosen), source, ADVISED_CALIB)
    return ImageSet(tuple(chosen), (-1,) * len(chosen), source, len(paths))


def holdout_set(run_dir: str | os.PathLike[str], classnames: tuple[str, ...], calib: ImageSet,
                cfg: Int8Config) -> ImageSet:
    """Labeled images for the gate, none of them a calibration image (see the module docstring).

    Raises:
        ExportError: Fewer than ``MIN_HOLDOUT`` such images.
    """
    from edgeprompt.data import load_labeled
    from edgeprompt.data.folder import match_classes

    taken = set(calib.paths)
    pool: dict[Path, int] = {}
    if cfg.check is not None:
        ds = match_classes(list(classnames), load_labeled(cfg.check), "--int8-check folder")
        pool.update((p.resolve(), y) for p, y in zip(ds.paths, ds.labels, strict=True))
        source = f"folder {Path(cfg.check).resolve()}"
    else:
        split = _split(Path(run_dir))
        tuned = {Path(p).resolve(): int(y) for p, y in zip(split.get("paths", []), split.get("true_labels", []),
                                                           strict=False)}
        root = split.get("root")
        if root and Path(root).is_dir():
            ds = match_classes(list(classnames), load_labeled(root), "training folder")
            pool.update((p.resolve(), y) for p, y in zip(ds.paths, ds.labels, strict=True)
                        if p.resolve() not in tuned)
        pool.update((p, y) for p, y in tuned.items() if p.is_file())
        source = "run training folder (images not used to calibrate)"
    items = [(p, y) for p, y in pool.items() if p not in taken]
    if len(items) < MIN_HOLDOUT:
        raise ExportError(f"only {len(items)} held-out images that are not calibration images (need >= {MIN_HOLDOUT}):"
                          f" pass --int8-check DIR (labeled), or a smaller --calib-n")
    chosen = spread(items, cfg.n_check)
    if len(chosen) < 100:
        log.warning("the INT8 gate sees %d held-out images: one flip moves agreement by %.1f %%", len(chosen),
                    100 / len(chosen))
    return ImageSet(tuple(p for p, _ in chosen), tuple(y for _, y in chosen), source, len(items))


def _next_option(cfg: Int8Config, calib: ImageSet) -> str:
    """The one thing to try after a refusal: more images, then more float layers, then a calibrator, then the bar."""
    if len(calib) < calib.available and len(calib) < ADVISED_CALIB:
        return f"more calibration images (--calib-n {min(calib.available, 2 * len(calib))})"
    rest = [g for g in INT8_FLOAT_GROUPS if g not in cfg.keep_float]
    if rest:
        return f"more layers left in float (--int8-float {','.join([*cfg.keep_float, rest[0]])})"
    nxt = {"minmax": "percentile", "percentile": "entropy"}.get(cfg.calib_method)
    if nxt:
        return f"another calibrator (--calib-method {nxt})"
    return "a lower bar if the top-1 change is acceptable (--int8-min-accuracy, --int8-min-agreement)"


def gate(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, cfg: Int8Config,
         calib: ImageSet, source: str = "") -> dict[str, Any]:
    """INT8 vs FP32 on held-out images: accuracy ratio, agreement; raise when either is under its bar.

    Args:
        fp32_logits: (N, C) logits of the FP32 graph.
        int8_logits: (N, C) logits of the INT8 graph on the same pixels.
        labels: (N,) class indices, -1 where unknown (accuracy uses the labeled ones).
        cfg: ``min_agreement`` and what was used (for the next-option hint).
        calib: The calibration set (for the hint).
        source: Where the held-out images came from.

    Returns:
        ``n``, ``top1_agreement``, ``top1_fp32``, ``top1_int8``, ``top1_change`` (INT8 - FP32, a fraction),
        ``flipped``, ``median_flip_margin`` (FP32 top-1 minus runner-up logit on the flipped images: small
        means near-ties), ``mean_abs_logit_diff``, ``max_abs_logit_diff``, ``accuracy_ratio`` (INT8 / FP32 top-1;
        None without labels), ``min_accuracy``, ``min_agreement``, ``passed``.

    Raises:
        ExportError: INT8 accuracy under ``cfg.min_accuracy`` of FP32's (agreement, without labels), agreement under
            ``cfg.min_agreement``, or non-finite INT8 output (one line).
    """
    ref, got = fp32_logits.astype(np.float64), int8_logits.astype(np.float64)
    finite = bool(np.isfinite(got).all())
    same = ref.argmax(-1) == got.argmax(-1)
    known = labels >= 0
    top = np.sort(ref, -1)
    margin = top[:, -1] - top[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    acc32 = float((ref.argmax(-1) == labels)[known].mean()) if known.any() else None
    acc8 = float((got.argmax(-1) == labels)[known].mean()) if known.any() else None
    numbers: dict[str, Any] = {
        "n": int(len(ref)), "source": source, "top1_agreement": float(same.mean()),
        "top1_fp32": acc32, "top1_int8": acc8,
        "top1_change": None if acc32 is None or acc8 is None else acc8 - acc32,
        "labeled": int(known.sum()), "flipped": int((~same).sum()),
        "median_flip_margin": float(np.median(margin[~same])) if (~same).any() else None,
        "mean_abs_logit_diff": float(np.abs(got - ref).mean()) if finite else float("nan"),
        "max_abs_logit_diff": float(np.abs(got - ref).max()) if finite else float("nan"),
        "min_agreement": float(cfg.min_agreement), "min_accuracy": float(cfg.min_accuracy),
    }
    ratio = None if not acc32 or acc8 is None else acc8 / acc32  # FP32 at 0 %: nothing to keep, use agreement
    numbers["accuracy_ratio"] = ratio
    # the bar, less one held-out image's worth (at most half a point): on a few hundred images a single image moves
    # top-1 by 0.4 %, which is sampling, not quantization
    slack = min(1.0 / max(numbers["labeled"], 1), 0.005)
    accurate = (numbers["top1_agreement"] >= cfg.min_accuracy if ratio is None or acc8 is None or acc32 is None
                else acc8 >= cfg.min_accuracy * acc32 - slack - 1e-12)
    agrees = numbers["top1_agreement"] >= cfg.min_agreement
    numbers["passed"] = finite and accurate and agrees
    log.info("INT8 gate on %d held-out images: top-1 agreement %.4f, top-1 change %s", numbers["n"],
             numbers["top1_agreement"], "n/a" if numbers["top1_change"] is None else f"{numbers['top1_change']:+.4f}")
    if not numbers["passed"]:
        agreement = f"agrees with FP32 on {100 * numbers['top1_agreement']:.1f} % of {numbers['n']} held-out images"
        if not finite:
            what = "gives non-finite logits"
        elif not accurate and ratio is not None and acc8 is not None and acc32 is not None:
            what = (f"keeps {100 * ratio:.1f} % of FP32's held-out top-1 ({100 * acc8:.1f} % vs {100 * acc32:.1f} % "
                    f"on {numbers['labeled']} labeled images; < {100 * cfg.min_accuracy:g} %)")
        elif not accurate:
            what = f"{agreement} (< {100 * cfg.min_accuracy:g} %; no labels to measure accuracy)"
        else:
            change = "" if numbers["top1_change"] is None else f", top-1 change {100 * numbers['top1_change']:+.1f} pt"
            what = f"{agreement} (< {100 * cfg.min_agreement:g} % --int8-min-agreement{change})"
        raise ExportError(f"the INT8 graph ({cfg.quantizer}, {cfg.calib_method}, {len(calib)} calibration images) "
                          f"{what}; no bundle was written; try {_next_option(cfg, calib)}")
    return numbers


def build_int8(fp32: Path, out: Path, run_dir: Path, classnames: tuple[str, ...], spec: PreprocessSpec, io: IOSpec,
               cfg: Int8Config, threads: int | None = None) -> dict[str, Any]:
    """Calibrate, quantize ``fp32`` into ``out`` and gate it; returns the manifest's ``int8`` section.

    Args:
        fp32: The FP32 graph (already through the torch parity gate).
        out: Where the Q/DQ graph goes.
        run_dir: The tuned run (its tuning split and training folder).
        classnames: The run's classes (held-out labels are matched to them).
        spec: The deployment preprocessing (normalisation in the graph).
        io: The graph's inputs and outputs.
        cfg: Calibration, quantizer, keep-float groups, gate.
        threads: onnxruntime intra-op threads for the gate.

    Raises:
        ExportError: No calibration or held-out images, quantization failed, or the gate refused the graph.
    """
    from edgeprompt.export.quantize import quantize_int8
    from edgeprompt.export.verify import ort_outputs
    from edgeprompt.manifest import OUTPUT_LOGITS
    from edgeprompt.preprocess import preprocess_batch

    calib = calibration_set(run_dir, cfg)
    held = holdout_set(run_dir, classnames, calib, cfg)
    graph = quantize_int8(fp32, out, preprocess_batch([str(p) for p in calib.paths], spec).astype(np.float32), cfg)
    pixels = preprocess_batch([str(p) for p in held.paths], spec).astype(np.float32)
    ref = ort_outputs(fp32, io, pixels, threads=threads)[OUTPUT_LOGITS]
    got = ort_outputs(out, io, pixels, threads=threads)[OUTPUT_LOGITS]
    numbers = gate(ref, got, np.asarray(held.labels), cfg, calib, held.source)
    return {
        "quantizer": cfg.quantizer, "calibrator": cfg.calib_method, "keep_float": list(cfg.keep_float),
        "calibration": {"source": calib.source, "n": len(calib), "available": calib.available,
                        "images": [str(p) for p in calib.paths]},
        "gate": numbers, "graph": graph,
        "weights": "int8, symmetric, per output channel", "activations": "int8, symmetric, per tensor",
    }
