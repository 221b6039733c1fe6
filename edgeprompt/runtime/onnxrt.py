"""onnxruntime backend: one InferenceSession over ``model.onnx`` with the TensorRT, CUDA or CPU execution provider.

Torch-free; onnxruntime is imported inside the functions. onnxruntime-gpu falls back to the CPU provider with only
a log line when CUDA, cuDNN or TensorRT libraries cannot be loaded, so after creating the session we read back
``session.get_providers()`` and refuse (or, for ``backend='auto'``, warn about) a fallback instead of benchmarking
the CPU under a GPU label.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt._gpu import cuda_gpu_status
from edgeprompt._optional import available, install_hint
from edgeprompt.errors import ArtifactError, ConfigError, MissingDependencyError
from edgeprompt.manifest import IOSpec
from edgeprompt.runtime.base import check_pixels

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

# backend -> providers in priority order; later ones take the nodes the first cannot run
PROVIDERS: dict[str, tuple[str, ...]] = {
    "ort-cpu": (CPU,),
    "ort-cuda": (CUDA, CPU),
    "ort-trt": (TENSORRT, CUDA, CPU),
}

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_status(backend: str) -> str | None:
    """Why an onnxruntime backend cannot run here, or None when it should.

    Args:
        backend: 'ort-cpu', 'ort-cuda' or 'ort-trt'.

    Returns:
        None, or a short reason such as "onnxruntime-gpu not installed".
    """
    if backend not in PROVIDERS:
        raise ConfigError(f"unknown onnxruntime backend {backend!r}: use one of {sorted(PROVIDERS)}")
    if not available("onnxruntime"):
        return f"onnxruntime not installed: {install_hint('ort')} (or {install_hint('ort-gpu')})"
    if backend == "ort-cpu":
        return None
    import onnxruntime as ort

    provider = PROVIDERS[backend][0]
    if provider not in ort.get_available_providers():
        if backend == "ort-cuda":
            return "onnxruntime-gpu not installed (this onnxruntime has no CUDAExecutionProvider)"
        return "this onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu)"
    gpu = cuda_gpu_status()
    if gpu is not None:
        return gpu
    if backend == "ort-trt" and not _tensorrt_libs_present():
        return "TensorRT libraries (libnvinfer) not found for onnxruntime's TensorRT provider"
    return None


def _tensorrt_libs_present() -> bool:
    """libnvinfer on the loader path (JetPack, tar install) or from the pip wheels."""
    return ctypes.util.find_library("nvinfer") is not None or available("tensorrt_libs") or available("tensorrt")


def _trt_provider_options(io: IOSpec, cache_dir: Path, fp16: bool, max_batch: int) -> dict[str, str]:
    """Options for onnxruntime's TensorRT provider: an engine cache and an explicit batch profile.

    Without an explicit profile the provider rebuilds the engine whenever a new batch size shows up.
    """
    def shapes(batch: int) -> str:
        # 'pixels:1x3x224x224' (several inputs are joined with commas)
        return ",".join(f"{t.name}:" + "x".join(str(batch if d == "batch" else d) for d in t.shape) for t in io.inputs)

    # onnxruntime passes provider options through as strings
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": str(bool(fp16)),
        "trt_profile_min_shapes": shapes(1),
        "trt_profile_opt_shapes": shapes(1),
        "trt_profile_max_shapes": shapes(max_batch),
    }


class OrtRuntime:
    """A :class:`~edgeprompt.runtime.base.Runtime` over an onnxruntime InferenceSession.

    Args:
        model_path: ``model.onnx`` (external weights ``model.onnx.data`` are found beside it).
        io: The bundle's IOSpec; the session's input and output names must match it.
        backend: 'ort-cpu', 'ort-cuda' or 'ort-trt'.
        threads: intra-op threads for the CPU provider (None: ``--threads`` / ``$EDGEPROMPT_THREADS`` when set, else
            onnxruntime's default, all cores).
        strict: Raise when a GPU backend silently fell back to the CPU; otherwise log a warning.
        trt_fp16: Let onnxruntime's TensorRT provider use FP16 kernels ('ort-trt' only).
        trt_cache_dir: Where that provider caches engines (default: ``ort-trt-cache`` beside the model).
        max_batch: Largest batch of the TensorRT provider's profile ('ort-trt' only).

    Raises:
        MissingDependencyError: onnxruntime or the requested provider is not available, or it fell back (strict).
        ArtifactError: The ONNX file is missing, cannot be loaded, or does not match the IOSpec.
    """

    def __init__(self, model_path: str | os.PathLike[str], io: IOSpec, backend: str = "ort-cpu", *,
                 threads: int | None = None, strict: bool = True, trt_fp16: bool = False,
                 trt_cache_dir: str | os.PathLike[str] | None = None, max_batch: int = 32) -> None:
        reason = ort_status(backend)
        if reason is not None:
            raise MissingDependencyError(f"backend {backend!r} is unavailable: {reason}")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ArtifactError(f"{model_path} not found: re-export the bundle (`edgeprompt export RUN --out BUNDLE`)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        from edgeprompt._threads import configured

        threads = threads if threads is not None else configured()
        if threads is not None:
            opts.intra_op_num_threads = threads
        providers: list[Any] = list(PROVIDERS[backend])
        if backend != "ort-cpu" and hasattr(ort, "preload_dlls"):
            try:  # loads CUDA/cuDNN from the nvidia-* pip wheels when they are there; harmless otherwise
                ort.preload_dlls()
            except Exception as e:  # best effort only
                log.debug("onnxruntime.preload_dlls failed: %s", e)
        if backend == "ort-trt":
            cache = Path(trt_cache_dir) if trt_cache_dir else model_path.parent / "ort-trt-cache"
            cache.mkdir(parents=True, exist_ok=True)
            providers[0] = (TENSORRT, _trt_provider_options(io, cache, trt_fp16, max_batch))
            log.warning("onnxruntime's TensorRT provider builds its engine on the first run; this can take minutes "
                        "(cached in %s afterwards)", cache)
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise ArtifactError(f"onnxruntime cannot load {model_path}: {str(e).splitlines()[0]}") from e

        self.name = backend
        self.io = io
        self.max_batch: int | None = None  # onnxruntime takes any batch
        self.provider = self._session.get_providers()[0]
        self._check_fallback(backend, strict)
        self._check_io()
        feeds = {i.name: i for i in self._session.get_inputs()}
        self._in_dtype = _ORT_DTYPES.get(feeds[io.inputs[0].name].type, np.float32)
        log.info("loaded %s with %s (%s)", model_path.name, self.provider, backend)

    def _check_fallback(self, backend: str, strict: bool) -> None:
        wanted = PROVIDERS[backend][0]
        if self.provider == wanted:
            return
        msg = (f"backend {backend!r} asked onnxruntime for {wanted} but the session runs on {self.provider}: "
               f"the GPU libraries it needs (CUDA 12, cuDNN 9{', TensorRT' if backend == 'ort-trt' else ''}) "
               f"could not be loaded — see onnxruntime's log above")
        if strict:
            raise MissingDependencyError(msg)
        log.warning(msg)

    def _check_io(self) -> None:
        got_in = [i.name for i in self._session.get_inputs()]
        got_out = {o.name for o in self._session.get_outputs()}
        if got_in != self.io.input_names or not set(self.io.output_names) <= got_out:
            raise ArtifactError(f"model.onnx has inputs {got_in} and outputs {sorted(got_out)}, but the manifest "
                                f"expects {self.io.input_names} -> {self.io.output_names}: re-export the bundle")

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run the session; see :meth:`Runtime.run`."""
        x = check_pixels(pixels, self.io)
        x = x if x.dtype == np.uint8 else x.astype(self._in_dtype, copy=False)
        names = self.io.output_names
        outs = self._session.run(names, {self.io.inputs[0].name: x})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs, strict=True)}

    def close(self) -> None:
        """Drop the session (onnxruntime frees its memory when the object goes)."""
        self._session = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OrtRuntime(name={self.name!r}, provider={self.provider!r})"
