"""TorchRuntime: the bundle's source run in torch eager, behind the same Runtime interface as the exported graph.

It is the reference backend of ``edgeprompt bench`` (``--backend torch``) on the workstation; the device side never
imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgeprompt.errors import ArtifactError
from edgeprompt.manifest import OUTPUT_LOGITS, OUTPUT_PROBS, IOSpec, Manifest


class TorchRuntime:
    """Runs the same graph the bundle was exported from (image encoder + method), in torch eager."""

    name = "torch"

    def __init__(self, bundle_dir: str | os.PathLike[str], device: str | None = None) -> None:
        from edgeprompt.artifact import load_run
        from edgeprompt.backbone import resolve_device
        from edgeprompt.export.graph import build_graph

        manifest = Manifest.read(bundle_dir)
        source = manifest.extra.get("source_run")
        if not source or not Path(source).is_dir():
            raise ArtifactError(f"the torch backend needs the bundle's source run directory ({source}), which is "
                                f"not here: benchmark torch on the workstation that exported it")
        self.device = resolve_device(device or "auto")
        run = load_run(source, device=str(self.device))
        self.graph = build_graph(run.backbone, run.method, manifest.preprocess).to(self.device).eval()
        self.io: IOSpec = manifest.io  # type: ignore[assignment]
        self.provider = f"torch {torch.__version__} eager ({self.device.type})"

    @torch.no_grad()
    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        logits, probs = self.graph(x)
        # .cpu() waits for the device, so wall-clock timing of run() includes the GPU work
        return {OUTPUT_LOGITS: logits.float().cpu().numpy(), OUTPUT_PROBS: probs.float().cpu().numpy()}

    def close(self) -> None:
        self.graph = None  # type: ignore[assignment]
