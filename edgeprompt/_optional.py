"""Availability checks for optional heavy packages, without importing them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edgeprompt.errors import MissingDependencyError

# module name -> the extra that installs it
_EXTRA = {
    "torch": "train",
    "torchvision": "train",
    "open_clip": "train",
    "safetensors": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "ort",
    "tensorrt": "trt",
    "matplotlib": "plot",
    "ray": "ray",
    "tritonclient": "triton",
    "cv2": "video",
}


def install_hint(extra: str) -> str:
    """The one way an error names what to install: ``pip install "edgeprompt[EXTRA]"``."""
    return f'pip install "edgeprompt[{extra}]"'


def available(module: str) -> bool:
    """True when ``module`` can be imported (checked with find_spec, nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str | None = None, why: str = "") -> ModuleType:
    """Import ``module`` or raise MissingDependencyError that names the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = extra or _EXTRA.get(module, "train")
        purpose = f" ({why})" if why else ""
        raise MissingDependencyError(f"'{module}' is not installed{purpose}: {install_hint(extra)}") from e
