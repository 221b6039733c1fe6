"""Run a bundle's graph on onnxruntime's CPU backend in a process of its own: the export parity gate's other side.

``python -m edgeprompt.runtime.selfcheck MODEL.onnx IO.json PIXELS.npy OUT.npz [--threads N] [--chunk N]``

The exporter calls this through a subprocess, not an import: the gate then runs exactly the runtime a device runs
(:class:`edgeprompt.runtime.onnxrt.OrtRuntime`, same session settings), it proves the graph runs in a process
without torch, and a native crash inside onnxruntime (a segfault takes the whole interpreter down) becomes an
error message instead of a dead export. Writes every named output for all pixels (in chunks, so the dynamic batch
axis is exercised), the outputs of the first image alone at batch 1 (``<name>@b1``), and the provider used.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from edgeprompt.manifest import IOSpec
from edgeprompt.runtime.onnxrt import OrtRuntime


def run_model(model: str, io: IOSpec, pixels: np.ndarray, threads: int | None = None,
              chunk: int = 8) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``pixels`` (N, 3, H, W) float32, batched by ``chunk``, plus ``<name>@b1``."""
    runtime = OrtRuntime(model, io, "ort-cpu", threads=threads)
    try:
        parts = [runtime.run(pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)]
        out = {n: np.concatenate([p[n] for p in parts]) for n in io.output_names}
        single = runtime.run(pixels[:1])
        out.update({f"{n}@b1": v for n, v in single.items()})
        out["provider"] = np.array(runtime.provider)
    finally:
        runtime.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m edgeprompt.runtime.selfcheck")
    p.add_argument("model")
    p.add_argument("io")
    p.add_argument("pixels")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--chunk", type=int, default=8)
    a = p.parse_args(argv)
    try:
        with open(a.io) as f:
            io = IOSpec.from_dict(json.load(f))
        out = run_model(a.model, io, np.load(a.pixels), a.threads or None, a.chunk)
    except Exception as e:  # onnxruntime raises its own types; report one line to the parent
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    np.savez(a.out, **out)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
