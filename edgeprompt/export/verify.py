"""The parity gate: the exported graph must classify real images as the tuned method does in torch.

Both sides see the same pixels: images from the run's own tuning split, preprocessed once with the deployment
preprocessing (:mod:`edgeprompt.preprocess`, numpy/PIL). That the numpy preprocessing equals open_clip's torchvision
transform is checked separately, by ``tests/test_preprocess.py``.

- torch reference: the *unfolded* method on the frozen backbone, ``method(FeatureBatch(encode_image(norm(x))))``,
  so the gate also checks the folding and the in-graph normalisation;
- onnxruntime: the ONNX file on the runtime's CPU backend, in a separate torch-free process (see
  :mod:`edgeprompt.runtime.selfcheck`, reached by a subprocess, not an import), in chunks (dynamic batch) and once
  at batch 1.

Rules (``PARITY_RULES``): FP32 needs 100 % top-1 agreement and a max abs logit difference <= 1e-3 x logit scale;
FP16 needs >= 99.5 % top-1 agreement, where a flip between classes the FP32 reference itself scores within
``fp16_tie`` x logit scale counts as a tie, not a disagreement (half precision cannot order near-equal scores).
Any non-finite output fails.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprompt.artifact import SPLIT_FILE, read_split
from edgeprompt.backbone import FrozenCLIP, tower_features
from edgeprompt.errors import ExportError
from edgeprompt.manifest import OUTPUT_LOGITS, OUTPUT_PROBS, IOSpec, PreprocessSpec
from edgeprompt.methods.base import PromptMethod, batched_logits

log = logging.getLogger(__name__)

PARITY_RULES: dict[str, dict[str, float]] = {
    "fp32": {"min_top1_agreement": 1.0, "max_logit_diff_rel": 1e-3},
    "fp16": {"min_top1_agreement": 0.995, "fp16_tie": 2e-3},
}
_ORT_TIMEOUT_S = 1800


def check_image_paths(run_dir: str | os.PathLike[str], n: int) -> list[Path]:
    """Up to ``n`` existing images from the run's tuning split, spread evenly over it (so all classes show up)."""
    if not (Path(run_dir) / SPLIT_FILE).is_file():
        return []
    paths = [Path(p) for p in read_split(run_dir)["paths"]]
    paths = [p for p in paths if p.is_file()]
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in dict.fromkeys(idx.tolist())]


def load_check_pixels(paths: list[Path], spec: PreprocessSpec, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Pixels for the gate: the images preprocessed for deployment, or seeded random pixels when there are none.

    Returns:
        ((N, 3, S, S) float32 in [0, 1], a description of the source: 'images:N' or 'synthetic:N').
    """
    from edgeprompt.preprocess import preprocess_batch

    if paths:
        return preprocess_batch([str(p) for p in paths], spec).astype(np.float32), f"images:{len(paths)}"
    log.warning("no images of the run's tuning split are readable here: the parity gate uses %d random images", n)
    rng = np.random.default_rng(seed)
    # on the 1/255 grid, as decoded images are: a uint8-input graph then sees exactly these pixels
    pixels = rng.integers(0, 256, (n, 3, spec.image_size, spec.image_size)).astype(np.float32) / 255
    return pixels, f"synthetic:{n}"


@torch.no_grad()
def torch_logits(backbone: FrozenCLIP, method: PromptMethod, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The method's own logits in torch (FP32, unfolded) for (N, 3, S, S) pixels in [0, 1]."""
    device = backbone.model.logit_scale.device
    pooled, tokens = [], []
    for i in range(0, len(pixels), batch_size):
        x = backbone.normalize_pixels(torch.from_numpy(pixels[i:i + batch_size]).to(device))
        p, t = tower_features(backbone.model.visual, x, method.needs_tokens)
        pooled.append(p)
        tokens.append(t)
    tok = torch.cat(tokens) if method.needs_tokens else None  # type: ignore[arg-type]
    return batched_logits(method, torch.cat(pooled), tok, batch_size).numpy()


def ort_outputs(onnx_path: str | os.PathLike[str], io: IOSpec, pixels: np.ndarray, *, threads: int | None = None,
                chunk: int = 8) -> dict[str, np.ndarray]:
    """Run the ONNX file on the runtime's CPU backend in a torch-free child process (see module docstring).

    Raises:
        ExportError: onnxruntime failed or crashed on the graph.
    """
    with tempfile.TemporaryDirectory(prefix="edgeprompt-selfcheck-") as tmp:
        np.save(Path(tmp) / "pixels.npy", pixels)
        (Path(tmp) / "io.json").write_text(json.dumps(io.to_dict()))
        cmd = [sys.executable, "-m", "edgeprompt.runtime.selfcheck", str(onnx_path), str(Path(tmp) / "io.json"),
               str(Path(tmp) / "pixels.npy"), str(Path(tmp) / "out.npz"), "--chunk", str(chunk)]
        cmd += ["--threads", str(threads)] if threads else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_ORT_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise ExportError(f"onnxruntime took over {_ORT_TIMEOUT_S} s on the parity images") from e
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            if proc.returncode < 0:
                why = (f"onnxruntime crashed (signal {-proc.returncode}) building or running the session; the other "
                       f"exporter may avoid it (exporter='dynamo' or 'legacy')")
            raise ExportError(f"onnxruntime (CPU) cannot run the exported graph: {why}")
        with np.load(Path(tmp) / "out.npz") as z:
            return {k: z[k] for k in z.files}


def compare(reference: np.ndarray, outputs: dict[str, np.ndarray], *, precision: str,
            logit_scale: float) -> dict[str, Any]:
    """Parity numbers between torch logits and the graph's outputs, and whether they pass ``PARITY_RULES``."""
    rules = PARITY_RULES[precision]
    logits, probs = outputs[OUTPUT_LOGITS], outputs[OUTPUT_PROBS]
    ref_probs = torch.from_numpy(reference).softmax(-1).numpy()
    finite = bool(np.isfinite(logits).all() and np.isfinite(probs).all())
    diff = np.abs(logits.astype(np.float64) - reference)
    b1 = np.abs(outputs[f"{OUTPUT_LOGITS}@b1"][0] - logits[0]).max()
    ref_top, got_top = reference.argmax(-1), logits.argmax(-1)
    strict = float((ref_top == got_top).mean())
    # a flip to a class the reference scores (almost) as high is a tie, not a disagreement
    gap = reference.max(-1) - reference[np.arange(len(reference)), got_top]
    tie = rules.get("fp16_tie", 0.0) * logit_scale
    tie_aware = float((gap <= tie).mean())
    numbers: dict[str, Any] = {
        "precision": precision,
        "n": int(len(reference)),
        "top1_agreement": strict,
        "top1_agreement_tie_aware": tie_aware,
        "max_abs_logit_diff": float(diff.max()) if finite else float("nan"),
        "mean_abs_logit_diff": float(diff.mean()) if finite else float("nan"),
        "max_abs_prob_diff": float(np.abs(probs - ref_probs).max()) if finite else float("nan"),
        "batch1_vs_batched_max_diff": float(b1),
        "logit_scale": float(logit_scale),
        "provider": str(outputs.get("provider", "")),
    }
    if precision == "fp32":
        limit = rules["max_logit_diff_rel"] * logit_scale
        numbers["max_abs_logit_diff_limit"] = limit
        ok = finite and strict >= rules["min_top1_agreement"] and diff.max() <= limit and b1 <= limit
    else:
        numbers["tie_margin"] = tie
        ok = finite and tie_aware >= rules["min_top1_agreement"]
    numbers["passed"] = bool(ok)
    return numbers


def parity_gate(backbone: FrozenCLIP, method: PromptMethod, onnx_path: str | os.PathLike[str], io: IOSpec,
                pixels: np.ndarray, *, precision: str, logit_scale: float, source: str = "",
                threads: int | None = None, chunk: int = 8) -> dict[str, Any]:
    """Compare torch and onnxruntime on ``pixels``; raise when the rules for ``precision`` are not met.

    Args:
        backbone: The frozen CLIP.
        method: The tuned method (the torch reference is its unfolded forward).
        onnx_path: The exported graph.
        io: Its inputs and outputs.
        pixels: (N, 3, S, S) float32 in [0, 1].
        precision: 'fp32' or 'fp16' (which rule applies; the reference is always FP32 torch).
        logit_scale: The scale applied to the cosines (tolerances are relative to it).
        source: Where the pixels came from (recorded in the numbers).
        threads: onnxruntime intra-op threads.
        chunk: Images per onnxruntime call.

    Returns:
        The parity numbers (see :func:`compare`).

    Raises:
        ExportError: The graph fails the gate (the message carries the numbers), or onnxruntime cannot run it.
    """
    if precision not in PARITY_RULES:
        raise ExportError(f"no parity rule for precision {precision!r}")
    reference = torch_logits(backbone, method, pixels)
    outputs = ort_outputs(onnx_path, io, pixels, threads=threads, chunk=chunk)
    numbers = compare(reference, outputs, precision=precision, logit_scale=logit_scale)
    numbers["source"] = source
    log.info("parity %s on %d images: top-1 agreement %.4f, max |Δlogit| %.3g", precision, numbers["n"],
             numbers["top1_agreement"], numbers["max_abs_logit_diff"])
    if not numbers["passed"]:
        shown = {k: numbers[k] for k in ("top1_agreement", "top1_agreement_tie_aware", "max_abs_logit_diff",
                                         "max_abs_logit_diff_limit", "batch1_vs_batched_max_diff", "n")
                 if k in numbers}
        raise ExportError(f"the exported {precision} graph disagrees with torch on {source or 'the check images'} "
                          f"({', '.join(f'{k}={v:.6g}' for k, v in shown.items())}); no bundle was written")
    return numbers
