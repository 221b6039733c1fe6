"""predict --source: a video written with OpenCV is classified frame by frame like the images it was made of."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprompt.runtime import load_bundle
from edgeprompt.runtime.stream import StreamStats, VideoSource, iter_stream_predictions, source_kind
from tests.tiny_bundle import write_tiny_bundle

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

SIDE = 48  # frame side; the tiny bundle resizes to 8 px, so the codec's blocks mostly average away


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """n smooth random RGB frames (low-frequency blobs: what a codec keeps, unlike pixel noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    return [np.asarray(cv2.resize(s, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)) for s in small]


def _video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPG .avi (every OpenCV build with FFmpeg writes it) of RGB ``frames``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIDE, SIDE))
    assert writer.isOpened()
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    write_tiny_bundle(tmp_path / "bundle")
    return tmp_path / "bundle"


def test_source_strings_say_what_they_open() -> None:
    assert source_kind("0") == "camera"
    assert source_kind("rtsp://cam.local:554/stream") == "stream"
    assert source_kind("nvarguscamerasrc ! nvvidconv ! appsink") == "gstreamer"
    assert source_kind("clip.mp4") == "file"


def test_video_frames_get_their_images_top1(bundle: Path, tmp_path: Path) -> None:
    frames = _frames(30)
    video = _video(tmp_path / "clip.avi", frames)
    with load_bundle(bundle, backend="ort-cpu") as p:
        want = [t[0].label for t in p.predict(frames, top_k=1, channels="rgb")]
    for batch in (1, 8):
        stats = StreamStats()
        got = list(iter_stream_predictions(bundle, str(video), top_k=2, backend="ort-cpu", batch_size=batch,
                                           stats=stats))
        assert [g["frame"] for g in got] == list(range(30))
        assert [g["t"] for g in got[:3]] == [0.0, 0.1, 0.2]  # index / the file's 10 frames/s
        # MJPG loses detail; on these smooth frames it flipped 0 of 30 top-1s here: allow 1 in 10
        agree = np.mean([g["top"][0]["label"] == w for g, w in zip(got, want, strict=True)])
        assert agree >= 0.9, agree
        assert stats.frames == 30 and stats.batch_size == batch and len(stats.latencies_ms) == 30
        assert stats.summary()["fps"] > 0 and "frames/s" in stats.line()


def test_every_and_max_frames(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi", _frames(12))
    with VideoSource(str(video), every=3, max_frames=3) as src:
        assert [f.index for f in src] == [0, 3, 6]
    with VideoSource(str(video), every=5) as src:
        got = list(src)
        assert [f.index for f in got] == [0, 5, 10]
        assert got[0].pixels.shape == (SIDE, SIDE, 3) and got[0].pixels.dtype == np.uint8


def test_predict_source_cli_writes_a_line_per_frame_and_a_summary(bundle: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tests.helpers import run_cli

    video = _video(tmp_path / "clip.avi", _frames(10))
    code, out, err = run_cli(["predict", str(bundle), "--source", str(video), "--max-frames", "4", "-k", "1"], capsys)
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [r["frame"] for r in rows] == [0, 1, 2, 3] and all(len(r["top"]) == 1 for r in rows)
    assert "4 frames in" in err and "frames/s" in err
    code, out, _ = run_cli(["predict", str(bundle), "--source", str(video), "--format", "csv", "-b", "4"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "frame,t,label1,p1,label2,p2,label3,p3" and len(lines) == 11


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--source", "missing.mp4"], 3, "video file not found"),
    (["--source", "clip.avi", "x.png"], 2, "not both"),
    (["--source", "clip.avi", "--format", "table"], 2, "jsonl or csv"),
    (["--source", "clip.avi", "--every", "0"], 2, "--every"),
    (["x.png", "--every", "2"], 2, "go with --source"),
    ([], 2, "--source for video"),
])
def test_predict_source_bad_input_is_one_line(bundle: Path, tmp_path: Path, capsys, monkeypatch, args, code,  # noqa: ANN001
                                              words) -> None:
    from tests.helpers import run_cli

    _video(tmp_path / "clip.avi", _frames(3))
    monkeypatch.chdir(tmp_path)
    got, out, err = run_cli(["predict", str(bundle), *args], capsys)
    assert got == code and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_file_opencv_cannot_decode_is_a_data_error(tmp_path: Path) -> None:
    from edgeprompt.errors import DataError

    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(DataError, match="cannot open video source"):
        VideoSource(str(tmp_path / "notes.mp4"))


def test_without_opencv_the_error_names_the_extra(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from edgeprompt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(MissingDependencyError, match=r"edgeprompt\[video\]"):
        VideoSource(str(tmp_path / "clip.avi"))
