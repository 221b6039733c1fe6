"""Build a TensorRT engine from a bundle's ONNX graph, on the device that will run it. Torch-free.

Two build paths, gated on the TensorRT major version:

- TensorRT <= 10 (Jetson/JetPack 6 ships 10.3): weak typing is still there, so FP16 is a builder flag
  (``BuilderFlag.FP16`` / ``trtexec --fp16``) and TensorRT chooses the precision of each layer.
- TensorRT 11: every network is strongly typed and the precision flags are gone. Reduced precision must already
  be in the ONNX graph (an FP16 export); the build only follows the graph's types. Asking for ``fp16`` with an FP32
  graph is refused, rather than writing an FP32 engine under an FP16 name.
- INT8 bundles carry a Q/DQ graph (explicit quantization): TensorRT 10 builds it with the INT8 and FP16 flags
  (Q/DQ layers in INT8, the float layers free to use FP16), TensorRT 11 strongly typed (float layers FP32, as typed).
  There is no calibrator on the device: the scales are in the graph.

The engine file is the raw serialized plan (no header), so ``trtexec --loadEngine`` and C++ loaders can read it.
Nothing is written unless the build succeeds, and every dependency check runs before any file is touched.
``write_trtexec_script`` always writes the equivalent ``trtexec`` command into the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeprompt._gpu import TRT_MISSING, cuda_gpu_status, tensorrt_status
from edgeprompt.config import TrtProfile
from edgeprompt.errors import ConfigError, ExportError, MissingDependencyError
from edgeprompt.fileio import atomic_write_bytes, atomic_write_text, umask
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, IOSpec

log = logging.getLogger(__name__)

TRTEXEC_SCRIPT = "trtexec.sh"
TIMING_CACHE_FILE = "timing.cache"


Shape = tuple[int, ...]


def trt_status() -> str | None:
    """Why an engine cannot be built here, or None when it can (TensorRT importable and a CUDA GPU visible)."""
    missing = tensorrt_status()
    if missing:
        return missing
    gpu = cuda_gpu_status()
    if gpu is not None:
        return f"{gpu}: TensorRT builds engines on the GPU that will run them; run this on the target device"
    return None


def trt_major(version: str | int) -> int:
    """Major version from '10.3.0.30', 11 or '11'."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ConfigError(f"cannot read a TensorRT major version from {version!r}") from None


def profile_shapes(io: IOSpec, profile: TrtProfile = TrtProfile()) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The optimisation profile: (min, opt, max) shape of every input, varying only the 'batch' axis.

    Args:
        io: The bundle's IOSpec.
        profile: The batch range (min / opt / max).

    Returns:
        Input name -> (min_shape, opt_shape, max_shape).

    Raises:
        ConfigError: Bad batch ordering, or an input with a dynamic axis other than 'batch'.
    """
    profile.validate()
    batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for t in io.inputs:
        if any(isinstance(d, str) and d != "batch" for d in t.shape):
            raise ConfigError(f"input {t.name} has dynamic axes {t.shape}: only 'batch' can be dynamic for TensorRT")
        out[t.name] = tuple(  # type: ignore[assignment]
            tuple(b if d == "batch" else int(d) for d in t.shape) for b in batches)
    return out


def _shape_arg(shapes: dict[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    """trtexec shape syntax: 'pixels:1x3x224x224' (several inputs joined with commas)."""
    return ",".join(f"{name}:{'x'.join(map(str, s[which]))}" for name, s in shapes.items())


def precision_plan(fp16: bool, trt_version: str | int, onnx_fp16: bool = False, int8: bool = False
                   ) -> dict[str, Any]:
    """What a build will do about precision on a given TensorRT version.

    Args:
        fp16: Whether FP16 was requested.
        trt_version: TensorRT version string or major version.
        onnx_fp16: The ONNX graph already carries FP16 tensors (an FP16 export). Then every version builds
            strongly typed and follows the graph's types, whatever ``fp16`` says.
        int8: The ONNX graph is an INT8 Q/DQ graph (an ``--int8`` export); see the module docstring.

    Returns:
        A dict with ``trt_major``, ``requested`` ('fp16'/'fp32'), ``network`` ('weakly-typed'/'strongly-typed'),
        ``builder_flags`` (names of ``trt.BuilderFlag`` to set), ``trtexec_flags``, ``onnx_must_be_fp16`` and a
        human-readable ``note``.
    """
    major = trt_major(trt_version)
    requested = "fp16" if fp16 else "fp32"
    if int8:
        if major <= 10:
            return {
                "trt_major": major, "requested": "int8", "network": "weakly-typed",
                "builder_flags": ["INT8", "FP16"], "trtexec_flags": ["--int8", "--fp16"], "onnx_must_be_fp16": False,
                "note": "explicit quantization: the Q/DQ nodes run in INT8, the float layers may use FP16",
            }
        return {
            "trt_major": major, "requested": "int8", "network": "strongly-typed",
            "builder_flags": [], "trtexec_flags": ["--stronglyTyped"], "onnx_must_be_fp16": False,
            "note": "strongly typed: the Q/DQ nodes run in INT8, the float layers in FP32 as the graph types them",
        }
    if onnx_fp16:
        return {
            "trt_major": major, "requested": requested, "network": "strongly-typed",
            "builder_flags": [], "trtexec_flags": ["--stronglyTyped"], "onnx_must_be_fp16": False,
            "note": "the graph carries FP16 (with its own FP32 casts); the strongly typed build follows it",
        }
    if major <= 10:
        return {
            "trt_major": major, "requested": requested, "network": "weakly-typed",
            "builder_flags": ["FP16"] if fp16 else [], "trtexec_flags": ["--fp16"] if fp16 else [],
            "onnx_must_be_fp16": False,
            "note": ("FP16 by builder flag: TensorRT picks FP16 or FP32 per layer (check accuracy: LayerNorm can "
                     "overflow in FP16)") if fp16 else "FP32 build (the graph's own types)",
        }
    return {
        "trt_major": major, "requested": requested, "network": "strongly-typed",
        "builder_flags": [], "trtexec_flags": ["--stronglyTyped"],
        "onnx_must_be_fp16": fp16,
        "note": ("TensorRT 11 has no FP16 flag: the ONNX graph must already carry FP16 (export with --fp16); "
                 "the engine follows the graph's types") if fp16 else "strongly typed build, FP32 as in the graph",
    }


def trtexec_command(onnx: str | os.PathLike[str], engine: str | os.PathLike[str], io: IOSpec,
                    profile: TrtProfile = TrtProfile(), fp16: bool = False, trt_major: int = 10,
                    timing_cache: str | os.PathLike[str] | None = None, onnx_fp16: bool = False,
                    int8: bool = False) -> list[str]:
    """The ``trtexec`` command equivalent to :func:`build_engine`, as an argv list.

    Args:
        onnx: Path of the ONNX graph.
        engine: Path of the engine to write.
        io: The bundle's IOSpec (input names and shapes).
        profile: Batch range and builder workspace (MiB).
        fp16: Request FP16 (``--fp16`` on TensorRT <= 10; on 11 the ONNX must already be FP16).
        trt_major: TensorRT major version the command is for.
        timing_cache: Timing cache file to read and update (None: none).
        onnx_fp16: The ONNX graph already carries FP16 (see :func:`precision_plan`).
        int8: The ONNX graph is an INT8 Q/DQ graph (see :func:`precision_plan`).

    Returns:
        argv, starting with 'trtexec'.
    """
    shapes = profile_shapes(io, profile)
    cmd = [
        "trtexec", f"--onnx={onnx}", f"--saveEngine={engine}",
        f"--minShapes={_shape_arg(shapes, 0)}", f"--optShapes={_shape_arg(shapes, 1)}",
        f"--maxShapes={_shape_arg(shapes, 2)}",
        f"--memPoolSize=workspace:{int(profile.workspace_mib)}",  # MiB
        *precision_plan(fp16, trt_major, onnx_fp16, int8)["trtexec_flags"],
        "--profilingVerbosity=detailed", "--skipInference",
    ]
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def write_trtexec_script(bundle_dir: str | os.PathLike[str], io: IOSpec, *, fp16: bool = False,
                         profile: TrtProfile = TrtProfile(), onnx_fp16: bool = False, int8: bool = False) -> Path:
    """Write ``trtexec.sh`` into a bundle: builds ``model.engine`` from ``model.onnx`` on the target.

    The script finds trtexec on PATH, in ``$TRTEXEC`` or at JetPack's ``/usr/src/tensorrt/bin/trtexec``, reads the
    TensorRT major version from the Python module (or ``$TRT_MAJOR``), and runs the matching command.

    Args:
        bundle_dir: The bundle directory.
        io: The bundle's IOSpec.
        fp16: Request FP16 (see :func:`precision_plan`).
        profile: Batch range and builder workspace.
        onnx_fp16: The ONNX graph already carries FP16 (see :func:`precision_plan`).
        int8: The ONNX graph is an INT8 Q/DQ graph (see :func:`precision_plan`).

    Returns:
        Path of the written script (executable).
    """
    cmd10, cmd11 = (shlex.join(trtexec_command(ONNX_FILE, ENGINE_FILE, io, profile, fp16=fp16, trt_major=major,
                                               timing_cache=TIMING_CACHE_FILE, onnx_fp16=onnx_fp16,
                                               int8=int8)[1:])
                    for major in (10, 11))
    fp16_11 = ("echo 'note: TensorRT 11 has no --fp16; this builds the types in model.onnx (export with --fp16 for an "
               "FP16 engine)' >&2\n    " if fp16 and not onnx_fp16 and not int8 else "")
    flag = " --int8" if int8 else " --fp16" if fp16 else ""
    text = f"""#!/usr/bin/env bash
# Build model.engine from model.onnx on THIS device (engines are tied to the GPU and TensorRT version).
# Written by edgeprompt; equivalent to `edgeprompt export <bundle> --trt` for this{flag} bundle.
# Environment: TRTEXEC=/path/to/trtexec, TRT_MAJOR=10|11 (when python3 cannot import tensorrt).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
TRT_MAJOR="${{TRT_MAJOR:-$(python3 -c 'import tensorrt; print(tensorrt.__version__.split(".")[0])' 2>/dev/null \\
  || echo 10)}}"
if [ "$TRT_MAJOR" -ge 11 ]; then
    {fp16_11}"$TRTEXEC" {cmd11}
else
    "$TRTEXEC" {cmd10}
fi
"""
    path = atomic_write_text(Path(bundle_dir) / TRTEXEC_SCRIPT, text)
    path.chmod(0o777 & ~umask())  # executable for whoever may read it
    return path


def require_trt_build() -> None:
    """Raise, in one line, when no TensorRT engine can be built on this machine (nothing is touched).

    Raises:
        MissingDependencyError: TensorRT is not installed.
        ExportError: TensorRT is there but no CUDA GPU is visible.
    """
    reason = trt_status()
    if reason == TRT_MISSING:
        raise MissingDependencyError(TRT_MISSING)
    if reason is not None:
        raise ExportError(reason)


def _require_tensorrt() -> ModuleType:
    """Import TensorRT after checking that a build can happen here; one-line errors, nothing written."""
    require_trt_build()
    import tensorrt as trt

    return trt


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool
                ) -> tuple[Any, Any]:
    """Create the network and parse the ONNX file into it; parser errors become one ExportError."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors or 'unknown error'}")
    return network, parser


def _count_half_tensors(trt: ModuleType, network: Any) -> int:
    """Layer outputs typed FP16 in a parsed network (how an FP16 ONNX shows up)."""
    return sum(network.get_layer(i).get_output(j).dtype == trt.DataType.HALF
               for i in range(network.num_layers) for j in range(network.get_layer(i).num_outputs))


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], io: IOSpec, *,
                 fp16: bool = False, profile: TrtProfile = TrtProfile(),
                 timing_cache_path: str | os.PathLike[str] | None = None, int8: bool = False) -> Path:
    """Build a TensorRT engine with the Python API and write it atomically.

    Args:
        onnx_path: The ONNX graph (external weights beside it are found).
        engine_path: Where to write the raw serialized plan.
        io: The bundle's IOSpec (input names and shapes for the profile).
        fp16: Request FP16; see :func:`precision_plan` for what that means per TensorRT version.
        profile: Batch range (min / opt / max) and builder workspace limit in MiB.
        timing_cache_path: Timing cache to load if present and save after the build (speeds up rebuilds).
        int8: The ONNX graph is an INT8 Q/DQ graph (built with the plan of :func:`precision_plan`).

    Returns:
        ``engine_path``.

    Raises:
        MissingDependencyError: TensorRT is not installed.
        ExportError: No GPU, the ONNX cannot be parsed, FP16 requested on TensorRT 11 with an FP32 graph, or the
            build failed. No file is written in any of these cases.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    shapes = profile_shapes(io, profile)  # validates before any heavy work
    trt = _require_tensorrt()
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path} not found: export the ONNX graph first (`edgeprompt export RUN --out BUNDLE`)")
    plan = precision_plan(fp16, trt.__version__, int8=int8)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # the parser owns the weights: keep it alive until the build is done
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, plan["network"] == "strongly-typed")
    half = _count_half_tensors(trt, network)
    if half and plan["network"] == "weakly-typed" and not int8:
        # an FP16 graph under weak typing would be re-typed by TensorRT; build it as typed instead
        plan = precision_plan(fp16, trt.__version__, onnx_fp16=True)
        network, _parser = _parse_onnx(trt, builder, logger, onnx_path, strongly_typed=True)
    if plan["onnx_must_be_fp16"] and half == 0:
        raise ExportError(f"TensorRT {trt.__version__} has no FP16 builder flag and {onnx_path.name} is FP32: "
                          f"re-export the ONNX with --fp16, or build without --fp16")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(profile.workspace_mib) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report per-layer precision
    for flag in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # False: reject a mismatched cache

    log.info("building TensorRT %s engine from %s (%s, %s, batch %d/%d/%d); this can take minutes",
             trt.__version__, onnx_path.name, plan["requested"], plan["network"], profile.min_batch,
             profile.opt_batch, profile.max_batch)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name}: see the "
                          f"TensorRT log above (try a larger --workspace or a smaller --max-batch)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    log.info("wrote %s (%.1f MB) in %.0f s; FP16-typed layer outputs in the graph: %d", engine_path,
             engine_path.stat().st_size / 1e6, time.perf_counter() - t0, half)
    return engine_path


def inspect_engine(engine_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Report the precision an engine was actually built with (from TensorRT's engine inspector).

    Requested and built precision differ silently on TensorRT 11 (and per layer on 10), so record this.

    Args:
        engine_path: A serialized plan.

    Returns:
        ``{'trt_version', 'layers', 'output_formats': {format: count}, 'precision': 'int8' (any INT8 layer) |
        'fp16' | 'fp32' | 'mixed' | 'unknown'}``. The formats are read from the inspector's JSON, whose layout
        differs between versions.
    """
    trt = _require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load {engine_path}: rebuild it on this device")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return _summarise_inspector(json.loads(info), trt.__version__)


def _summarise_inspector(info: dict[str, Any], version: str) -> dict[str, Any]:
    """Count layer-output data types in inspector JSON (``Format/Datatype`` in 10.x, split fields in 11.x)."""
    layers = [lay for lay in info.get("Layers", []) if isinstance(lay, dict)]
    counts: dict[str, int] = {}
    for lay in layers:
        for out in lay.get("Outputs", []):
            text = " ".join(str(v) for k, v in out.items() if "type" in k.lower() or "format" in k.lower()).upper()
            kind = next((p for p, keys in _PRECISIONS if any(key in text for key in keys)), "other")
            counts[kind] = counts.get(kind, 0) + 1
    reduced = counts.get("fp16", 0) + counts.get("int8", 0)
    precision = ("unknown" if not counts else "fp32" if reduced == 0 else "int8" if counts.get("int8", 0)
                 else "fp16" if counts.get("fp32", 0) == 0 else "mixed")
    return {"trt_version": version, "layers": len(layers), "output_formats": counts, "precision": precision}


_PRECISIONS = (("fp16", ("FP16", "HALF", "FLOAT16", "BF16")), ("int8", ("INT8",)), ("fp32", ("FP32", "FLOAT")))
