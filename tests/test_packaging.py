"""The lowest-versions file that CI installs pins exactly the floors pyproject.toml declares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _floors() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["ort"]) + \
        list(project["optional-dependencies"]["video"]) + list(project["optional-dependencies"]["export"])
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", r.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_lowest_device_pins_are_the_declared_floors() -> None:
    floors = _floors()
    pins = {}
    for line in (ROOT / "constraints" / "lowest-device.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name in ("numpy", "pillow", "typer", "rich", "filelock", "onnxruntime", "opencv-python-headless", "onnx"):
        assert name in pins and name in floors, name
        floor = floors[name].split(".")
        assert pins[name].split(".")[:len(floor)] == floor, \
            f"{name}: pinned {pins[name]} in constraints/lowest-device.txt, floor {floors[name]} in pyproject.toml"
