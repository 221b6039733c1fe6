"""Export: a tuned run becomes a bundle (``manifest.json`` + ``model.onnx`` [+ ``model.engine``]). Torch-free at import.

``export_run`` (workstation, torch) traces the run into one ONNX graph, checks it against torch on real images and
writes the bundle atomically. ``build_trt`` (target device, no torch) builds the TensorRT engine from the bundle's
ONNX. ``export`` dispatches between them by what the path holds (what ``edgeprompt export PATH`` calls). All are
imported lazily from here, so ``import edgeprompt.export`` stays cheap.

>>> from edgeprompt.export import FORMATS
>>> FORMATS["onnx"].file
'model.onnx'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprompt.errors import ConfigError
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE


@dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
        name: Key used by the CLI and API ('onnx', 'trt').
        file: File written into the bundle.
        built_on: 'workstation' (needs torch) or 'target' (needs the device that will run it).
        needs: Python packages that must be importable to produce it.
        gpu: Whether producing it needs a CUDA GPU.
        options: Export options that apply to it.
    """

    name: str
    file: str
    built_on: str
    needs: tuple[str, ...]
    gpu: bool
    options: tuple[str, ...]


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", ONNX_FILE, "workstation", ("torch", "open_clip", "onnx", "onnxruntime"), False,
                   ("opset", "fp16", "exporter", "n_check", "external_data")),
    "trt": Format("trt", ENGINE_FILE, "target", ("tensorrt",), True,
                  ("fp16", "max_batch", "min_batch", "opt_batch", "workspace_mib")),
}


def check_formats(onnx: bool, trt: bool) -> list[str]:
    """The formats an export call produces, in build order; the ONNX graph is always the source of an engine.

    Raises:
        ConfigError: Neither format asked for.
    """
    if not (onnx or trt):
        raise ConfigError("nothing to export: pass --onnx and/or --trt")
    return ["onnx", "trt"] if trt else ["onnx"]


def default_bundle_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where ``edgeprompt export RUN_DIR`` writes without ``--out``: ``RUN_DIR-bundle`` beside the run."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}-bundle")


def export(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, onnx: bool = True,
           trt: bool = False, fp16: bool = False, opset: int = 17, max_batch: int = 32, n_check: int = 32,
           overwrite: bool = False, reporter: Any = None) -> dict[str, Any]:
    """``edgeprompt export PATH``: a run directory becomes a bundle; a bundle gets its TensorRT engine built here.

    Args:
        path: A run directory (from ``tune``) or a bundle (from an earlier ``export``).
        out: Bundle to create from a run (default :func:`default_bundle_dir`); not used for a bundle.
        onnx: Export the ONNX graph (runs only; it is always written).
        trt: Build ``model.engine`` (needs TensorRT and a GPU).
        fp16: FP16 graph (runs) / FP16 engine (bundles).
        opset: ONNX opset (runs).
        max_batch: TensorRT profile maximum batch.
        n_check: Parity-gate images (runs).
        overwrite: Replace an existing bundle (runs).
        reporter: A :class:`edgeprompt.progress.Reporter`.

    Returns:
        The summary dict of :func:`edgeprompt.export.bundle.export_run` or :func:`edgeprompt.export.target.build_trt`.

    Raises:
        ConfigError: A bundle without ``trt`` (nothing to do), or bad options.
    """
    from edgeprompt.manifest import Manifest

    kind = Manifest.read(path).kind
    if kind == "bundle":
        if not trt:
            raise ConfigError(f"{path} is already an exported bundle: pass --trt to build its TensorRT engine on "
                              f"this device")
        from edgeprompt.export.target import build_trt

        return build_trt(path, fp16=fp16, max_batch=max_batch, reporter=reporter)
    from edgeprompt.export.bundle import export_run

    return export_run(path, out if out is not None else default_bundle_dir(path), onnx=onnx, trt=trt, fp16=fp16,
                      opset=opset, max_batch=max_batch, n_check=n_check, overwrite=overwrite, reporter=reporter)


def __getattr__(name: str) -> Any:
    """Lazy access to the entry points, so importing the package imports no torch."""
    if name == "export_run":
        from edgeprompt.export.bundle import export_run

        return export_run
    if name == "build_trt":
        from edgeprompt.export.target import build_trt

        return build_trt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "Format", "build_trt", "check_formats", "default_bundle_dir", "export", "export_run"]
