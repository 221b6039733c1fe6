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


def _requirements(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.match(r"[A-Za-z0-9_.-]+", line)
            assert name, line
            out[name.group(0).lower()] = line[name.end():]
    return out


def test_target_constraint_files_parse_and_never_mix_the_onnxruntime_builds() -> None:
    files = sorted((ROOT / "constraints").glob("*.txt"))
    assert {f.name for f in files} >= {"lowest-device.txt", "jetpack6.txt", "server-cuda12.txt", "cpu.txt"}
    for f in files:
        reqs = _requirements(f)
        assert not {"onnxruntime", "onnxruntime-gpu"} <= set(reqs), f.name
        for name, spec in reqs.items():
            assert re.fullmatch(r"(==|>=|<=|<|>|~=)[0-9.]+(,(<|<=|>=|>)[0-9.]+)?", spec), (f.name, name, spec)
    assert "<13" in _requirements(ROOT / "constraints" / "jetpack6.txt")["cuda-python"]  # JetPack 6 is CUDA 12.6
