"""The lowest-versions file that CI installs pins exactly the floors pyproject.toml declares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _floors() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = list(project["dependencies"]) + [r for e in ("ort", "video", "export", "train") for r in extras[e]]
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", r.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@pytest.mark.parametrize(("file", "names"), [
    ("lowest-device.txt", ("numpy", "pillow", "typer", "rich", "filelock", "onnxruntime", "opencv-python-headless",
                           "onnx")),
    ("lowest-torch.txt", ("numpy", "pillow", "typer", "rich", "filelock", "torch", "open_clip_torch", "safetensors",
                          "onnx", "onnxscript", "onnxruntime")),
])
def test_lowest_pins_are_the_declared_floors(file: str, names: tuple[str, ...]) -> None:
    floors = _floors()
    pins = {}
    for line in (ROOT / "constraints" / file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name in names:
        assert name in pins and name in floors, name
        floor = floors[name].split(".")
        assert pins[name].split(".")[:len(floor)] == floor, \
            f"{name}: pinned {pins[name]} in constraints/{file}, floor {floors[name]} in pyproject.toml"


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
    assert {f.name for f in files} >= {"lowest-device.txt", "lowest-torch.txt", "jetpack6.txt", "server-cuda12.txt",
                                       "cpu.txt"}
    for f in files:
        reqs = _requirements(f)
        assert not {"onnxruntime", "onnxruntime-gpu"} <= set(reqs), f.name
        for name, spec in reqs.items():
            assert re.fullmatch(r"(==|>=|<=|<|>|~=)[0-9.]+(,(<|<=|>=|>)[0-9.]+)?", spec), (f.name, name, spec)
    assert "<13" in _requirements(ROOT / "constraints" / "jetpack6.txt")["cuda-python"]  # JetPack 6 is CUDA 12.6
