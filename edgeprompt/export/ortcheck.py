"""Run an exported graph with onnxruntime (CPU) in a separate, torch-free process, for the parity gate.

Why a process of its own: it proves the bundle runs without torch, as it will on the device, and it turns a crash
inside onnxruntime (a native segfault takes the whole interpreter down) into an error message instead of a dead
export that leaves a half-written directory behind.

Usage (internal): ``python -m edgeprompt.export.ortcheck MODEL.onnx PIXELS.npy OUT.npz [--threads N]
[--chunk N] [--no-nchwc]``. The session is configured as :class:`edgeprompt.runtime.onnxrt.OrtRuntime` configures
it. Writes the named outputs for all pixels (in chunks, so the dynamic batch axis is exercised), the outputs of the
first image run alone at batch 1 (``<name>@b1``), and the provider used.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from edgeprompt.runtime.onnxrt import CPU

# onnxruntime's NCHWc layout optimizer segfaults (onnxruntime 1.32) while building a session for an FP16 ViT graph
# from PyTorch's TorchScript exporter; --no-nchwc disables it (for diagnosis: the gate runs as the runtime does).
NCHWC_OPTIMIZER = "NchwcTransformer"


def run_model(model: str, pixels: np.ndarray, threads: int | None = None, chunk: int = 8,
              no_nchwc: bool = False) -> dict[str, np.ndarray]:
    """Run ``model`` on ``pixels`` with onnxruntime's CPU provider.

    Args:
        model: Path of the ONNX file.
        pixels: (N, 3, H, W) float32.
        threads: intra-op threads (None: onnxruntime's default).
        chunk: Images per session call.
        no_nchwc: Disable the NCHWc layout optimizer (see :data:`NCHWC_OPTIMIZER`).

    Returns:
        Output name -> (N, ...) array, plus ``<name>@b1`` for image 0 alone and ``provider``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runtime does
    if threads:
        opts.intra_op_num_threads = threads
    extra = {"disabled_optimizers": [NCHWC_OPTIMIZER]} if no_nchwc else {}
    session = ort.InferenceSession(model, sess_options=opts, providers=[CPU], **extra)
    feed = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {feed: pixels[i:i + chunk]}) for i in range(0, len(pixels), chunk)]
    out = {n: np.concatenate([p[j] for p in parts]).astype(np.float32) for j, n in enumerate(names)}
    single = session.run(names, {feed: pixels[:1]})
    out.update({f"{n}@b1": np.asarray(v, np.float32) for n, v in zip(names, single, strict=True)})
    out["provider"] = np.array(session.get_providers()[0])
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m edgeprompt.export.ortcheck")
    p.add_argument("model")
    p.add_argument("pixels")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--no-nchwc", action="store_true")
    a = p.parse_args(argv)
    try:
        out = run_model(a.model, np.load(a.pixels), a.threads or None, a.chunk, a.no_nchwc)
    except Exception as e:  # onnxruntime raises its own types; report one line to the parent
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    np.savez(a.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
