"""TensorRT backend: runs a serialized engine (``model.engine``) with TensorRT 10/11's name-based I/O API.

Torch-free. TensorRT and cuda-python are imported inside the functions. Device and pinned host buffers are sized
once for the engine profile's largest batch. Each call copies the inputs to the device, calls ``execute_async_v3``
on a private stream, copies the outputs back and synchronises the stream, so ``run`` returns only when the results
are on the host.

An engine is tied to the GPU architecture and the TensorRT version that built it. When deserialisation fails we
say so and point to the rebuild command.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeprompt._gpu import cuda_gpu_status, tensorrt_status
from edgeprompt._optional import available
from edgeprompt.errors import ArtifactError, MissingDependencyError
from edgeprompt.manifest import IOSpec
from edgeprompt.runtime.base import check_pixels

log = logging.getLogger(__name__)

CUDA_PYTHON_MISSING = ("cuda-python is not installed (the TensorRT backend moves buffers with it): "
                       "pip install cuda-python")


def trt_runtime_status() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it should (nothing heavy is imported)."""
    missing = tensorrt_status()
    if missing:
        return missing
    if not (available("cuda.bindings") or available("cuda.cudart")):
        return CUDA_PYTHON_MISSING
    return cuda_gpu_status()


def import_cudart() -> ModuleType:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+) or the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise MissingDependencyError(CUDA_PYTHON_MISSING) from e
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's ``(error, *values)`` tuple; raise on any error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call {what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else values


class _Buffer:
    """One I/O tensor: a device allocation and a pinned host mirror, both sized for the largest batch."""

    def __init__(self, cudart: ModuleType, name: str, dtype: np.dtype, item_shape: tuple[int, ...],
                 max_batch: int) -> None:
        self.name, self.dtype, self.item_shape = name, dtype, item_shape
        self.nbytes = max_batch * math.prod(item_shape) * dtype.itemsize
        self.device: int = int(_check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))
        self.host_ptr: int = int(_check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.host_ptr)
        self.host = np.frombuffer(raw, dtype=dtype)  # type: ignore[call-overload]  # flat view of pinned memory

    def free(self, cudart: ModuleType) -> None:
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TrtRuntime:
    """A :class:`~edgeprompt.runtime.base.Runtime` over a TensorRT engine file.

    Args:
        engine_path: The serialized plan (``model.engine``; raw TensorRT bytes, no header).
        io: The bundle's IOSpec; the engine's tensor names must match it.
        device: CUDA device index.

    Raises:
        MissingDependencyError: TensorRT, cuda-python or a GPU is missing.
        ArtifactError: The engine is missing, was built by another TensorRT version or GPU, or does not match
            the IOSpec.
    """

    def __init__(self, engine_path: str | os.PathLike[str], io: IOSpec, *, device: int = 0) -> None:
        reason = trt_runtime_status()
        if reason is not None:
            raise MissingDependencyError(f"backend 'trt' is unavailable: {reason}")
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise ArtifactError(f"{engine_path} not found: build it on this device with "
                                f"`edgeprompt export BUNDLE --trt`")
        import tensorrt as trt

        self._cudart = cudart = import_cudart()
        self._buffers: list[_Buffer] = []
        self._stream: Any = None
        _check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} cannot load {engine_path}: engines only run on the GPU "
                                f"and TensorRT version that built them; rebuild it here with "
                                f"`edgeprompt export BUNDLE --trt` (or the bundle's trtexec.sh)")
        self._context = self._engine.create_execution_context()
        self.name = "trt"
        self.provider = f"TensorRT {trt.__version__}"
        self.io = io
        self._setup(trt)

    def _setup(self, trt: ModuleType) -> None:
        """Check names against the IOSpec, read the profile's batch range, allocate buffers, bind addresses."""
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != self.io.input_names or not set(self.io.output_names) <= set(outputs):
            raise ArtifactError(f"model.engine has inputs {inputs} and outputs {outputs}, but the manifest expects "
                                f"{self.io.input_names} -> {self.io.output_names}: rebuild the engine from model.onnx")
        lo, _opt, hi = eng.get_tensor_profile_shape(inputs[0], 0)
        self.min_batch = int(lo[0])
        self.max_batch: int | None = int(hi[0])
        for n in names:
            shape = tuple(eng.get_tensor_shape(n))  # batch axis is -1 for a dynamic engine
            buf = _Buffer(self._cudart, n, np.dtype(trt.nptype(eng.get_tensor_dtype(n))),
                          tuple(int(d) for d in shape[1:]), int(hi[0]))
            self._buffers.append(buf)
            self._context.set_tensor_address(n, buf.device)
        self._inputs = [b for b in self._buffers if b.name in inputs]
        self._outputs = [b for b in self._buffers if b.name in self.io.output_names]
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        log.info("loaded TensorRT engine: batch %d..%d, I/O dtypes %s", self.min_batch, self.max_batch,
                 {b.name: str(b.dtype) for b in self._buffers})

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run the engine, in chunks of at most ``max_batch``; see :meth:`Runtime.run`."""
        x = check_pixels(pixels, self.io)
        if x.shape[0] < self.min_batch:
            raise ArtifactError(f"the engine's profile starts at batch {self.min_batch}, got {x.shape[0]}: "
                                f"rebuild it with --min-batch 1")
        parts: dict[str, list[np.ndarray]] = {b.name: [] for b in self._outputs}
        step = int(self.max_batch or x.shape[0])
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            for name, out in self._run_chunk(chunk).items():
                parts[name].append(out)
        return {n: np.concatenate(p) if len(p) > 1 else p[0] for n, p in parts.items()}

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart, stream = self._cudart, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self._inputs[0]
        count = x.size
        inp.host[:count] = x.reshape(-1)  # casts to the engine's input dtype (float16 for an FP16-I/O engine)
        self._context.set_input_shape(inp.name, tuple(x.shape))
        _check(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, count * inp.dtype.itemsize, h2d, stream),
               "cudaMemcpyAsync H2D")
        if not self._context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        sizes = {}
        for out in self._outputs:
            shape = tuple(self._context.get_tensor_shape(out.name))
            sizes[out.name] = (shape, math.prod(shape))
            _check(cudart.cudaMemcpyAsync(out.host_ptr, out.device, sizes[out.name][1] * out.dtype.itemsize, d2h,
                                          stream), "cudaMemcpyAsync D2H")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # copy out of the pinned buffers: they are reused by the next call
        return {o.name: o.host[:sizes[o.name][1]].reshape(sizes[o.name][0]).astype(np.float32)
                for o in self._outputs}

    def close(self) -> None:
        """Free device and pinned memory and the stream (safe to call twice)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for buf in getattr(self, "_buffers", []):
            buf.free(cudart)
        self._buffers = []
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None
        self._cudart = None  # type: ignore[assignment]

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA driver may already be gone
            pass

    def __repr__(self) -> str:
        return f"TrtRuntime(provider={self.provider!r}, max_batch={self.max_batch})"
