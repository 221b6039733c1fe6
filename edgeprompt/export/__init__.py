"""Export: a tuned run becomes a bundle (``manifest.json`` + ``model.onnx`` [+ ``model.engine``]). Torch-free at import.

``export_run`` (workstation, torch) traces the run into one ONNX graph, checks it against torch on real images and
writes the bundle atomically. ``build_trt`` (target device, no torch) builds the TensorRT engine from the bundle's
ONNX. ``write_repository`` (anywhere, no torch) turns a bundle into a Triton Inference Server model. ``export``
dispatches between them by what the path holds (what ``edgeprompt export PATH`` calls). All are imported lazily
from here, so ``import edgeprompt.export`` stays cheap.

>>> from edgeprompt.export import FORMATS
>>> FORMATS["onnx"].file
'model.onnx'

``FORMATS`` is what ``check_formats`` validates a request against: it names, per format, the packages that must be
importable and whether a GPU is needed, so a missing piece is one line before any file is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprompt.config import ExportConfig
from edgeprompt.errors import ConfigError, MissingDependencyError
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE


@dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
        name: Key used by the CLI and API ('onnx', 'trt').
        file: File written into the bundle.
        built_on: 'workstation' (needs torch) or 'target' (needs the device that will run it).
        needs: Python packages (import names) that must be importable to produce it.
        extra: The pip extra that installs them.
        gpu: Whether producing it needs a CUDA GPU.
    """

    name: str
    file: str
    built_on: str
    needs: tuple[str, ...]
    extra: str
    gpu: bool


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", ONNX_FILE, "workstation", ("torch", "open_clip", "onnx", "onnxscript", "onnxruntime"),
                   "export", False),
    "trt": Format("trt", ENGINE_FILE, "target", ("tensorrt",), "trt", True),
}


def check_formats(names: list[str]) -> list[str]:
    """Check that every format in ``names`` can be produced here; returns them in build order.

    Only the packages are checked here (without importing them); the GPU for ``trt`` is checked by the
    TensorRT build itself, with its own one-line message.

    Raises:
        ConfigError: An unknown format.
        MissingDependencyError: A package a format needs is not installed (names the pip extra).
    """
    from edgeprompt._gpu import TRT_MISSING
    from edgeprompt._optional import available, install_hint

    for name in names:
        if name not in FORMATS:
            raise ConfigError(f"unknown export format {name!r}: choose from {', '.join(FORMATS)}")
        fmt = FORMATS[name]
        missing = [m for m in fmt.needs if not available(m)]
        if missing:
            if name == "trt":
                raise MissingDependencyError(TRT_MISSING)
            raise MissingDependencyError(f"exporting {name} needs {', '.join(missing)}: {install_hint(fmt.extra)}")
    return [n for n in FORMATS if n in names]


def default_bundle_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where ``edgeprompt export RUN_DIR`` writes without ``--out``: ``RUN_DIR-bundle`` beside the run."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}-bundle")


def export(cfg: ExportConfig, reporter: Any = None) -> dict[str, Any]:
    """``edgeprompt export PATH``: a run directory becomes a bundle; a bundle gets its TensorRT engine built here,
    or a Triton model repository written from it (``cfg.triton``), or both.

    Args:
        cfg: What to export (see :class:`edgeprompt.config.ExportConfig`).
        reporter: A :class:`edgeprompt.progress.Reporter`.

    Returns:
        The summary dict of :func:`edgeprompt.export.bundle.export_run` or :func:`edgeprompt.export.target.build_trt`,
        with the Triton summary under ``triton``; only the Triton summary when that is all there was to do.

    Raises:
        ConfigError: A bundle without ``trt`` or ``triton`` (nothing to do), or bad options.
    """
    import dataclasses

    from edgeprompt.export.triton import model_dir, write_repository
    from edgeprompt.manifest import Manifest

    cfg.validate()
    kind = Manifest.read(cfg.source).kind
    if cfg.deepstream is not None:  # before a minutes-long export or engine build, like the Triton checks below
        from edgeprompt.fileio import guard_output

        guard_output(cfg.deepstream, "DeepStream folder", {"the source": cfg.source, "the bundle": cfg.out},
                     overwrite=cfg.overwrite, flag="--deepstream")
    if kind == "bundle":
        if not cfg.trt and cfg.triton is None and cfg.deepstream is None:
            raise ConfigError(f"{cfg.source} is already an exported bundle: pass --trt to build its TensorRT engine "
                              f"on this device, --triton REPO to write a Triton model repository, or "
                              f"--deepstream DIR to write DeepStream nvinfer files")
        if cfg.out is not None:
            raise ConfigError("--out is for exporting a run; the engine of a bundle is built inside the bundle")
        bundle = Path(cfg.source)
        if cfg.triton is not None:  # the checks that can fail before a (minutes-long) engine build
            model_dir(cfg.triton, bundle, cfg.overwrite, {"the bundle": bundle})
        result: dict[str, Any] = {}
        if cfg.trt:
            check_formats(["trt"])
            from edgeprompt.export.target import build_trt

            result = build_trt(cfg.source, fp16=cfg.fp16, profile=cfg.profile, reporter=reporter)
    else:
        from edgeprompt.export.bundle import export_run

        if cfg.out is None:
            cfg = dataclasses.replace(cfg, out=str(default_bundle_dir(cfg.source)))
        bundle = Path(str(cfg.out))
        if cfg.triton is not None:
            from edgeprompt.artifact import run_data

            model_dir(cfg.triton, bundle, cfg.overwrite,
                      {"the run directory": cfg.source, "the bundle": bundle, **run_data(cfg.source)})
        result = export_run(cfg, reporter)
    if cfg.deepstream is not None:
        from edgeprompt.export.deepstream import write_deepstream

        result = {**result, "deepstream": write_deepstream(bundle, cfg.deepstream, batch_size=cfg.profile.opt_batch,
                                                           scaling=cfg.deepstream_scaling, overwrite=cfg.overwrite)}
    if cfg.triton is None:
        return result
    triton = write_repository(bundle, cfg.triton, overwrite=cfg.overwrite)
    return {**result, "triton": triton} if result else triton


def __getattr__(name: str) -> Any:
    """Lazy access to the entry points, so importing the package imports no torch."""
    if name == "export_run":
        from edgeprompt.export.bundle import export_run

        return export_run
    if name == "build_trt":
        from edgeprompt.export.target import build_trt

        return build_trt
    if name == "write_repository":
        from edgeprompt.export.triton import write_repository

        return write_repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "Format", "build_trt", "check_formats", "default_bundle_dir", "export", "export_run",
           "write_repository"]
