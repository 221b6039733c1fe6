"""Classify a video stream frame by frame: a video file, a camera, an RTSP/HTTP URL or a GStreamer pipeline.

Torch-free. Frames are decoded by OpenCV (``pip install "edgeprompt[video]"``), handed to the bundle's
:class:`~edgeprompt.runtime.Predictor` as BGR numpy frames (the same preprocessing as an image file, tested for
parity), and batched up to ``batch_size``. A batch waits for its last frame, so on a live camera batch 1 gives the
lowest latency and a larger batch the most frames per second; for a file, batching only raises throughput.

What a source string means (:func:`source_kind`): digits are a camera index (``0`` = ``/dev/video0``); text with
``!`` is a GStreamer pipeline ending in ``appsink`` (Jetson's CSI cameras: ``nvarguscamerasrc ! ... ! appsink``);
text with ``://`` is a network stream; anything else is a video file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt._optional import require
from edgeprompt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCE_KINDS = ("camera", "gstreamer", "stream", "file")


def source_kind(source: str) -> str:
    """Which of :data:`SOURCE_KINDS` a ``--source`` string names (see the module docstring)."""
    if source.isdigit():
        return "camera"
    if "!" in source:
        return "gstreamer"
    if "://" in source:
        return "stream"
    return "file"


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the source, its time in seconds, and the BGR pixels (H, W, 3) uint8.

    ``t`` is the frame's position in a file (index / the file's frame rate) and the seconds since the source was
    opened for a camera or stream.
    """

    index: int
    t: float
    pixels: np.ndarray
    decoded_at: float  # time.perf_counter() when the frame was ready: where its latency starts


class VideoSource:
    """An opened OpenCV capture; iterate it for :class:`Frame` s, close it when done (or use ``with``).

    Args:
        source: A camera index, a GStreamer pipeline, a stream URL or a video file (:func:`source_kind`).
        every: Classify every N-th frame; the others are grabbed without decoding.
        max_frames: Stop after this many classified frames (None: until the source ends).

    Raises:
        MissingDependencyError: OpenCV is not installed.
        DataError: The file does not exist, or OpenCV cannot open the source.
    """

    def __init__(self, source: str, *, every: int = 1, max_frames: int | None = None) -> None:
        if every < 1:
            raise ConfigError(f"--every must be >= 1, got {every}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
        cv2 = require("cv2", "video", "decoding video, cameras and streams")
        self.kind = source_kind(source)
        self.source, self.every, self.max_frames = source, every, max_frames
        if self.kind == "file" and not Path(source).is_file():
            raise DataError(f"video file not found: {source} (a camera is a number, a stream a URL)")
        if self.kind == "camera":
            self._cap = cv2.VideoCapture(int(source))
        elif self.kind == "gstreamer":
            self._cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
        else:
            self._cap = cv2.VideoCapture(os.fspath(source))
        if not self._cap.isOpened():
            self._cap.release()
            hint = {"gstreamer": "this OpenCV may be built without GStreamer (cv2.getBuildInformation())",
                    "camera": "is the camera connected, and free (not held by another program)?",
                    "stream": "is the URL reachable from here?",
                    "file": "is it a video file in a format this OpenCV's FFmpeg reads?"}[self.kind]
            raise DataError(f"cannot open video source {source!r}: {hint}")
        rate = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = rate if rate > 0 else None  # the source's own frame rate, when it says
        self._opened = time.perf_counter()

    def __iter__(self) -> Iterator[Frame]:
        index, kept = -1, 0
        while self.max_frames is None or kept < self.max_frames:
            index += 1
            if index % self.every:
                if not self._cap.grab():  # skipped frames are not decoded
                    return
                continue
            ok, pixels = self._cap.read()
            if not ok:
                return  # the file ended, or the stream stopped sending
            now = time.perf_counter()
            t = index / self.fps if self.kind == "file" and self.fps else now - self._opened
            kept += 1
            yield Frame(index, round(t, 4), pixels, now)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class StreamStats:
    """What a stream run measured: frames classified, wall time from the first decoded frame, per-frame latency
    (decoded -> prediction ready, including the wait for the rest of its batch)."""

    backend: str = ""
    batch_size: int = 1
    frames: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "frames": self.frames, "wall_s": round(self.wall_s, 3), "backend": self.backend, "batch": self.batch_size,
            "fps": round(self.frames / self.wall_s, 1) if self.wall_s > 0 else None,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                           "p95": round(float(np.percentile(lat, 95)), 2), "mean": round(float(lat.mean()), 2)},
        }

    def line(self) -> str:
        s = self.summary()
        lat = s["latency_ms"]
        return (f"{s['frames']} frames in {s['wall_s']:.2f} s: {s['fps']} frames/s; latency per frame p50 "
                f"{lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms (batch {s['batch']}, backend {s['backend']})")


def iter_stream_predictions(bundle: str | os.PathLike[str], source: str, *, top_k: int = 3, backend: str = "auto",
                            batch_size: int = 1, every: int = 1, max_frames: int | None = None,
                            stats: StreamStats | None = None) -> Iterator[dict[str, Any]]:
    """Top-k predictions per frame of a video source, as they are computed: ``{"frame", "t", "top": [...]}``.

    Args:
        bundle: The bundle directory.
        source: See :func:`source_kind`.
        top_k: Classes per frame.
        backend: 'auto' or a runtime backend name.
        batch_size: Frames run together (capped by the bundle's batch).
        every: Classify every N-th frame.
        max_frames: Stop after this many classified frames.
        stats: Filled in as frames are classified (frames/s and latency), for the caller to print at the end.
    """
    from edgeprompt.runtime import load_bundle

    stats = stats if stats is not None else StreamStats()
    with load_bundle(bundle, backend, batch_size=batch_size) as predictor, \
            VideoSource(source, every=every, max_frames=max_frames) as video:
        stats.backend, stats.batch_size = predictor.runtime.name, predictor.batch_size
        start: float | None = None
        chunk: list[Frame] = []

        def flush() -> Iterator[dict[str, Any]]:
            tops = predictor.predict([f.pixels for f in chunk], top_k=top_k, channels="bgr")
            done = time.perf_counter()
            for f, top in zip(chunk, tops, strict=True):
                stats.frames += 1
                stats.latencies_ms.append(1000 * (done - f.decoded_at))
                yield {"frame": f.index, "t": f.t, "top": [p.to_dict() for p in top]}
            assert start is not None
            stats.wall_s = done - start
            chunk.clear()

        for frame in video:
            start = frame.decoded_at if start is None else start
            chunk.append(frame)
            if len(chunk) == predictor.batch_size:
                yield from flush()
        if chunk:
            yield from flush()
