"""Is there a CUDA GPU, and TensorRT? Asked without importing anything heavy (torch, cuda-python, tensorrt).

Shared by the runtime backends and the TensorRT engine build (both torch-free), so both say the same thing. The GPU
question goes to the NVIDIA driver through ctypes, which works on x86 servers and on Jetson, where ``libcuda.so.1``
comes with L4T even though ``nvidia-smi`` may be missing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

TRT_MISSING = ("TensorRT is not installed: on a Jetson use JetPack's python3-libnvinfer; on a server pip install "
               "tensorrt (NVIDIA index); the bundle's trtexec.sh has the equivalent build command")

_LIBCUDA = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
_CUDA_ERROR_NO_DEVICE = 100


@functools.lru_cache(maxsize=1)
def cuda_gpu_status() -> str | None:
    """Why no CUDA GPU can be used, or None when at least one is visible.

    Calls ``cuInit`` and ``cuDeviceGetCount`` of the driver API. ``cuInit`` creates no context and allocates
    no GPU memory. The answer is cached for the life of the process.

    Returns:
        None when a GPU is visible, else a short reason such as ``"no NVIDIA driver (libcuda not found)"``.
    """
    lib = None
    for name in _LIBCUDA:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return "no NVIDIA driver (libcuda not found)"
    try:
        rc = lib.cuInit(0)
        if rc == _CUDA_ERROR_NO_DEVICE:
            return "no CUDA GPU visible (check CUDA_VISIBLE_DEVICES)"
        if rc != 0:
            return f"the NVIDIA driver failed to initialise (cuInit error {rc})"
        count = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
    except (AttributeError, OSError) as e:  # a stub libcuda without the symbols
        return f"the NVIDIA driver library is unusable ({e})"
    if rc != 0 or count.value == 0:
        return "no CUDA GPU visible (check CUDA_VISIBLE_DEVICES)"
    log.debug("CUDA driver reports %d GPU(s)", count.value)
    return None


def tensorrt_status() -> str | None:
    """:data:`TRT_MISSING` when the ``tensorrt`` module cannot be imported here, else None (nothing is imported)."""
    from edgeprompt._optional import available

    return None if available("tensorrt") else TRT_MISSING
