"""The README's quick start runs top to bottom as written, on the shipped world, scaled down where a line takes long.

Every line of the ``## Quick start`` block that starts with ``edgeprompt`` runs in one folder, in order, in this
process. What is changed, and why, is in ``SCALE`` (fewer images, epochs, seeds and timing calls: the same commands
and options, smaller) and ``SKIP`` (lines that need what a test machine lacks); a README line that matches neither
runs exactly as written. A README edit that breaks a line fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"

# a README line's first words -> options appended to it here (later options win in the CLI)
SCALE = {  # data, tuning and the INT8 gate run as written: a weaker model (fewer epochs) has near-ties INT8 flips
    "edgeprompt bench": ["--iters", "3", "--warmup", "1"],
    "edgeprompt sweep": ["--methods", "coop", "--noise", "sym:0.5", "--seeds", "1", "--epochs", "2"],
}
SKIP = {
    "--protocol paper": "the papers' protocol: hours on two cores, by design (the README says so)",
    "--ray": "a Ray cluster per test run is too slow; tests/test_sweep_ray.py covers Ray cells",
}


def quick_start() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ## Quick start bash block"
    lines = [ln.split("  #")[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln.startswith("edgeprompt ")]


def test_the_quick_start_block_is_found_and_every_line_is_known() -> None:
    lines = quick_start()
    assert len(lines) >= 12 and lines[0].startswith("edgeprompt data shapes")
    for ln in lines:  # the verbs the README shows are real ones
        assert ln.split()[1] in {"data", "tune", "eval", "audit", "export", "classes", "predict", "bench", "sweep",
                                 "extract"}, ln


def test_the_quick_start_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from PIL import Image

    from tests.helpers import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEPROMPT_CACHE", str(tmp_path / "cache"))
    ran = []
    for line in quick_start():
        reason = next((why for key, why in SKIP.items() if key in line), None)
        if reason:
            continue
        argv = shlex.split(line)[1:]
        argv += next((extra for key, extra in sorted(SCALE.items(), key=lambda kv: -len(kv[0]))
                      if line.startswith(key)), [])
        if "--source" in argv:  # the README's clip.mp4: a short video of the world's test images
            cv2 = pytest.importorskip("cv2")
            writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
            for p in sorted((tmp_path / "data" / "test").rglob("*.png"))[:12]:
                writer.write(cv2.imread(str(p)))
            writer.release()
        elif argv[0] == "predict":  # the README's photo.jpg and more_photos/: two of the world's test images
            test = sorted((tmp_path / "data" / "test").rglob("*.png"))
            Image.open(test[0]).convert("RGB").save(tmp_path / "photo.jpg")
            (tmp_path / "more_photos").mkdir(exist_ok=True)
            Image.open(test[-1]).save(tmp_path / "more_photos" / "a.png")
        code, out, err = run_cli(argv, capsys)
        assert code == 0, f"`{line}` exited {code}: {err.strip()[-400:]}"
        ran.append(argv[0])
    assert {"tune", "eval", "audit", "export", "classes", "predict", "bench", "sweep", "extract"} <= set(ran)
    assert (tmp_path / "bundle-int8" / "manifest.json").is_file() and (tmp_path / "models").is_dir()
    assert (tmp_path / "ds" / "config_infer_primary.txt").is_file()
