"""``edgeprompt export BUNDLE --trt``: build the TensorRT engine on the device from the bundle's ONNX. Torch-free.

A bundle exported on a workstation carries ``model.onnx``, ``manifest.json`` and ``trtexec.sh``. On the target
(a Jetson, a server GPU) this module builds ``model.engine`` with the TensorRT Python API, checks the precision the
engine really has (TensorRT 11 silently builds FP32 when the graph carries no FP16), and records the engine, its
hash and its build settings in the manifest. Every check runs before a file is touched; the engine is built under
a temporary name and renamed into place only when it is complete and has the precision that was asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from edgeprompt.config import TrtProfile
from edgeprompt.errors import ArtifactError, ExportError
from edgeprompt.export.tensorrt import (
    TIMING_CACHE_FILE,
    TRTEXEC_SCRIPT,
    build_engine,
    inspect_engine,
    require_trt_build,
    write_trtexec_script,
)
from edgeprompt.fileio import sha256_file
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, IOSpec, read_bundle_manifest
from edgeprompt.progress import NullReporter, Reporter

log = logging.getLogger(__name__)


def build_engine_into(bundle_dir: str | os.PathLike[str], io: IOSpec, *, fp16: bool, onnx_fp16: bool,
                      profile: TrtProfile = TrtProfile(), int8: bool = False) -> dict[str, Any]:
    """Build ``model.engine`` beside ``model.onnx`` and check its precision; returns what the manifest records.

    Args:
        bundle_dir: Folder holding ``model.onnx`` (and receiving ``model.engine``).
        io: The graph's IOSpec (profile shapes).
        fp16: FP16 was asked for.
        onnx_fp16: The ONNX already carries FP16 (then the build follows the graph's types).
        profile: Batch range and builder workspace.
        int8: The ONNX graph is an INT8 Q/DQ graph: built as explicitly quantized, and it must come out with INT8
            layers.

    Returns:
        ``{'file', 'sha256', 'trt_version', 'precision', 'output_formats', 'profile', 'build_s', ...}``.

    Raises:
        ExportError: The build failed, or FP16 / INT8 was asked for and the engine has no such layer (then no
            engine is left).
    """
    bundle_dir = Path(bundle_dir)
    final, partial = bundle_dir / ENGINE_FILE, bundle_dir / f".{ENGINE_FILE}.partial"
    t0 = time.perf_counter()
    try:
        build_engine(bundle_dir / ONNX_FILE, partial, io, fp16=fp16 or onnx_fp16, profile=profile,
                     timing_cache_path=bundle_dir / TIMING_CACHE_FILE, int8=int8)
        built = inspect_engine(partial)
        if int8 and not built["output_formats"].get("int8"):
            raise ExportError(f"the bundle's graph is INT8 but TensorRT {built['trt_version']} built no INT8 layer: "
                              f"check the Q/DQ graph with `trtexec --onnx=model.onnx --int8 --verbose`")
        if (fp16 or onnx_fp16) and not int8 and built["precision"] == "fp32":
            raise ExportError(f"FP16 was asked for but TensorRT {built['trt_version']} built an FP32 engine (no "
                              f"FP16 layers): re-export the ONNX with --fp16 so the graph carries FP16")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "file": ENGINE_FILE, "sha256": sha256_file(final), "trt_version": built["trt_version"],
        "precision": built["precision"], "output_formats": built["output_formats"], "layers": built["layers"],
        "requested": "int8" if int8 else "fp16" if fp16 or onnx_fp16 else "fp32", "onnx_fp16": onnx_fp16,
        "profile": dataclasses.asdict(profile), "build_s": round(time.perf_counter() - t0, 1),
        "size_mb": round(final.stat().st_size / 1e6, 2),
    }


def build_trt(bundle_dir: str | os.PathLike[str], *, fp16: bool = False, profile: TrtProfile = TrtProfile(),
              verify: bool = True, reporter: Reporter | None = None) -> dict[str, Any]:
    """Build (or rebuild) the TensorRT engine of an exported bundle on this device.

    Args:
        bundle_dir: A bundle from ``edgeprompt export RUN --out BUNDLE``.
        fp16: Ask for FP16. An FP16 bundle (exported with ``--fp16``) is always built as the graph's types say; an
            INT8 bundle always builds explicitly quantized (with FP16 for its float layers on TensorRT 10).
        profile: Batch range (min / opt / max) and builder workspace.
        verify: Check ``model.onnx`` (and its external data) against the manifest's sha256 first.
        reporter: Progress reporting (default: log only).

    Returns:
        A summary: bundle, engine file, TensorRT version, requested and built precision, build time.

    Raises:
        MissingDependencyError: TensorRT is not installed (raised before anything is read or written).
        ExportError: No GPU, or the build failed.
        ArtifactError: Not a bundle, or its ONNX is missing or does not match the manifest.
    """
    profile.validate()
    require_trt_build()
    rep = reporter or NullReporter()
    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    assert manifest.io is not None  # read_bundle_manifest checks it
    if not (bundle_dir / ONNX_FILE).is_file():
        raise ArtifactError(f"{bundle_dir} has no {ONNX_FILE}: re-export it with `edgeprompt export RUN`")
    if verify:
        for name, digest in manifest.files.items():
            if name != ENGINE_FILE and (bundle_dir / name).is_file() and sha256_file(bundle_dir / name) != digest:
                raise ArtifactError(f"{bundle_dir / name} does not match the sha256 in manifest.json: copy the "
                                    f"bundle again")
    onnx_fp16, int8 = manifest.precision == "fp16", manifest.precision == "int8"
    rep.message(f"building the TensorRT engine for {bundle_dir} on this device; this can take minutes "
                f"(a Jetson may show no output for several)")
    tick = rep.task("building TensorRT engine")
    tick(0, 1)
    engine = build_engine_into(bundle_dir, manifest.io, fp16=fp16 and not int8, onnx_fp16=onnx_fp16,
                               profile=profile, int8=int8)
    tick(1, 1)
    script = write_trtexec_script(bundle_dir, manifest.io, fp16=(fp16 or onnx_fp16) and not int8, profile=profile,
                                  onnx_fp16=onnx_fp16, int8=int8)
    files = {**manifest.files, ENGINE_FILE: engine.pop("sha256"), TRTEXEC_SCRIPT: sha256_file(script)}
    dataclasses.replace(manifest, files=files, extra={**manifest.extra, "engine": engine}).write(bundle_dir)
    log.info("engine %s: TensorRT %s, %s (requested %s)", bundle_dir / ENGINE_FILE, engine["trt_version"],
             engine["precision"], engine["requested"])
    return {"bundle": str(bundle_dir), **engine}
