"""Benchmark output: markdown and CSV tables, and the environment record that goes with every number.

Torch-free. Numbers without the machine they came from are not comparable, so :func:`environment` records the CPU,
OS, library versions, GPU and driver (from ``nvidia-smi``) and the Jetson model (from the device tree).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeprompt.tables import csv, markdown_table
from edgeprompt.version import __version__

__all__ = ["csv", "environment", "markdown_table"]

log = logging.getLogger(__name__)

_JETSON_MODEL = Path("/proc/device-tree/model")
_CPUINFO = Path("/proc/cpuinfo")


def _cpu_model() -> str:
    """CPU name from /proc/cpuinfo (x86 'model name', ARM 'Hardware'/'CPU part'), else platform.processor()."""
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tensorrt_version() -> str | None:
    """TensorRT's version; JetPack installs the module without pip metadata, so fall back to importing it."""
    v = _version("tensorrt")
    if v is not None:
        return v
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def _gpus() -> list[dict[str, str]]:
    """GPU names and driver versions from nvidia-smi (empty when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("nvidia-smi failed: %s", e)
        return []
    if proc.returncode != 0:
        log.debug("nvidia-smi exit %d: %s", proc.returncode, proc.stderr.strip())
        return []
    out = []
    for line in proc.stdout.strip().splitlines():
        name, _, driver = line.partition(",")
        out.append({"name": name.strip(), "driver": driver.strip()})
    return out


def _jetson_model() -> str | None:
    try:
        return _JETSON_MODEL.read_bytes().rstrip(b"\x00").decode(errors="replace").strip() or None
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """Describe the machine and software a benchmark ran on.

    Returns:
        ``cpu``, ``cpu_count``, ``os``, ``machine``, ``python``, ``edgeprompt``, ``numpy``, ``onnxruntime``
        (CPU or GPU build), ``tensorrt``, ``gpus`` (list of name + driver), ``jetson_model`` (or None).
    """
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    ort_dist = "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime"
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "edgeprompt": __version__,
        "numpy": _version("numpy"),
        "onnxruntime": f"{ort} ({ort_dist})" if ort else None,
        "tensorrt": _tensorrt_version(),
        "gpus": _gpus(),
        "jetson_model": _jetson_model(),
    }
