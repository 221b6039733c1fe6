"""``edgeprompt checks``: what this machine has for edgeprompt, and the known-bad combinations with their fix.

Torch-free: package versions come from installed metadata (nothing heavy is imported), execution providers from
the runtime's own availability check, the GPU and driver from ``nvidia-smi``, the Jetson model from the device tree
and the power mode from ``nvpmodel -q`` when they exist. The first thing to run when an install misbehaves.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
from typing import Any

PACKAGES = ("edgeprompt", "numpy", "pillow", "typer", "rich", "torch", "torchvision", "open_clip_torch", "onnx",
            "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "cleanlab", "scikit-learn",
            "nvidia-modelopt", "ray", "tritonclient", "opencv-python", "opencv-python-headless")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def _power_mode() -> str | None:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return " ".join(proc.stdout.split()) or None


def known_problems(versions: dict[str, str | None], env: dict[str, Any]) -> list[dict[str, str]]:
    """The combinations that break an install silently, each with the fix (pure: testable on any machine)."""
    out = []
    if versions.get("onnxruntime") and versions.get("onnxruntime-gpu"):
        out.append({"problem": "onnxruntime and onnxruntime-gpu are both installed: the CPU build shadows the GPU "
                               "one, and the CUDA provider silently disappears",
                    "fix": "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"})
    if env.get("jetson_model") and _major(versions.get("cuda-python")) not in (None, 12):
        out.append({"problem": f"cuda-python {versions['cuda-python']} on a Jetson: JetPack 6 ships CUDA 12.6, which "
                               f"cuda-python 13 cannot load",
                    "fix": "pip install 'cuda-python>=12,<13'"})
    typer_v = versions.get("typer")
    if typer_v and tuple(int(p) for p in typer_v.split(".")[:2] if p.isdigit()) < (0, 14):
        out.append({"problem": f"typer {typer_v} is older than edgeprompt needs (0.14)", "fix": "pip install -U typer"})
    if env.get("gpus") and not versions.get("onnxruntime-gpu") and not versions.get("tensorrt"):
        out.append({"problem": "a GPU is visible but neither onnxruntime-gpu nor TensorRT is installed: bundles run "
                               "on the CPU",
                    "fix": 'pip install "edgeprompt[ort-gpu]" (or JetPack\'s TensorRT on a Jetson)'})
    return out


def run_checks() -> dict[str, Any]:
    """Versions, backends, GPU / driver / Jetson facts and known problems, as one dict (what ``--json`` prints)."""
    from edgeprompt.bench.report import environment
    from edgeprompt.runtime import available_backends

    versions = {p: _version(p) for p in PACKAGES}
    env = environment()
    backends = available_backends()
    return {
        "versions": {k: v for k, v in versions.items() if v},
        "missing": [k for k, v in versions.items() if not v],
        "backends": {name: ("ok" if why is None else why) for name, why in backends.items()},
        "machine": {k: env[k] for k in ("cpu", "cpu_count", "os", "machine", "python")},
        "gpus": env["gpus"], "jetson_model": env["jetson_model"], "power_mode": _power_mode(),
        "problems": known_problems(versions, env),
    }
