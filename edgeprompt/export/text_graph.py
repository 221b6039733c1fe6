"""``export --open-classes``: the text side as a second ONNX graph, so a device can add classes without torch.

```
text.onnx   token ids (N, 77) int64 -> L2-normalised text features (N, E) float32, the learned context folded in
```

A shared-context prompt is ``[SOS] V1 … VM name . [EOT]``. The device tokenizes ``"X X … X name."`` (M
placeholders, exactly what the prompt learner tokenizes) with :class:`edgeprompt.data.tokenizer.ClipTokenizer`;
the graph embeds the ids, puts the learned context over positions 1..M, runs the frozen text transformer and
returns the EOT feature. Zero-shot has no context: its graph is the plain text encoder, and the device formats the
run's template(s). A class's row is then ``scale * normalize(mean over templates of the graph's features)``, what
the export folds into ``model.onnx`` for the classes it was tuned on.

The export writes the rows of the run's own classes (``classes.npy``), computed by this graph through onnxruntime,
after two gates: the device tokenizer must give the ids open_clip gives for every prompt, and the rows must match
torch's folded class matrix (max |Δ| on the normalised rows <= ``ROW_TOL``). The predictor multiplies the image
graph's ``features`` output by these rows, so changing the class list (``edgeprompt classes BUNDLE``) changes a
small ``.npy`` and reuses ``model.onnx`` and any TensorRT engine as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprompt.backbone import FrozenCLIP
from edgeprompt.data.classlist import class_rows
from edgeprompt.data.tokenizer import ClipTokenizer
from edgeprompt.errors import ExportError
from edgeprompt.manifest import CLASS_ROWS_FILE, TEXT_ONNX_FILE, VOCAB_FILE
from edgeprompt.methods.base import PromptMethod

ROW_TOL = 1e-4  # normalised rows, fp32: the text transformer traced vs eager (measured ~1e-6)
INPUT_IDS, OUTPUT_TEXT = "input_ids", "text_features"


def prompt_spec(method: PromptMethod) -> dict[str, Any]:
    """How the device turns a class name into the graph's input: ``templates`` (each with one ``{}``) whose
    features are averaged, and ``n_ctx`` learned context vectors after SOT.

    Raises:
        ExportError: a method whose rows cannot be recomputed from a name (class-specific context, the name not at
            the end of the prompt, or rows computed per image).
    """
    if method.name == "zeroshot":
        from edgeprompt.methods.zeroshot import ENSEMBLE

        cfg = method.cfg
        return {"templates": list(ENSEMBLE if cfg.ensemble else (cfg.template,)), "n_ctx": 0}
    prompt = getattr(method, "prompt", None)
    if not method.foldable or prompt is None:
        raise ExportError(f"--open-classes: {method.name} computes its class rows per image; export it without "
                          f"--open-classes and tune again to change classes")
    if prompt.class_specific:
        raise ExportError("--open-classes: this run learned one context per class (class-specific context), so a new "
                          "class has no context; export it without --open-classes, or tune with a shared context")
    if prompt.position != "end":
        raise ExportError(f"--open-classes needs the class name at the end of the prompt (the default); this run "
                          f"puts it at the {prompt.position}")
    return {"templates": [" ".join(["X"] * prompt.n_ctx) + " {}."], "n_ctx": int(prompt.n_ctx)}


class TextGraph(nn.Module):
    """Token ids (N, 77) -> normalised text features (N, E); a shared context replaces positions 1..M.

    Args:
        backbone: the frozen CLIP.
        ctx: the learned context (M, D), or None (zero-shot).
    """

    def __init__(self, backbone: FrozenCLIP, ctx: torch.Tensor | None) -> None:
        super().__init__()
        self.text = backbone.text
        self.n_ctx = 0 if ctx is None else int(ctx.shape[0])
        self.register_buffer("ctx", torch.zeros(0) if ctx is None else ctx.detach().float().clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.text.token_embedding(ids).float()  # (N, 77, D)
        if self.n_ctx:
            ctx = self.ctx.unsqueeze(0).expand(ids.shape[0], -1, -1)  # (N, M, D)
            emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        # CLIP's EOT has the largest id; in float because onnxruntime < 1.18 has no int64 ArgMax (ids < 2^24: exact)
        eot = ids.float().argmax(dim=-1)
        return F.normalize(self.text(emb, eot).float(), dim=-1)


def export_text(backbone: FrozenCLIP, method: PromptMethod, classnames: list[str], scale: float, out_dir: Path,
                opset: int, threads: int | None = None) -> dict[str, Any]:
    """Write ``text.onnx``, the tokenizer vocabulary and ``classes.npy`` into ``out_dir``, after the gates.

    Returns:
        The manifest's ``open_classes`` entry: files, prompt spec, scale, parity numbers.

    Raises:
        ExportError: a method that cannot change classes (see :func:`prompt_spec`), a tokenizer that is not CLIP's
            BPE, a tokenizer mismatch, or rows that miss torch's beyond ``ROW_TOL``.
    """
    import onnxruntime as ort

    from edgeprompt.export.graph import export_mode
    from edgeprompt.export.onnx import legacy_flag

    spec = prompt_spec(method)
    vocab = _vocab_file(backbone)
    shutil.copyfile(vocab, out_dir / VOCAB_FILE)
    graph = TextGraph(backbone, method.prompt.ctx if spec["n_ctx"] else None).eval()
    path = out_dir / TEXT_ONNX_FILE
    dummy = backbone.tokenize(["X " * spec["n_ctx"] + "dummy."]).cpu()
    with export_mode(), torch.no_grad():
        torch.onnx.export(graph, (dummy,), str(path), **legacy_flag(), input_names=[INPUT_IDS],
                          output_names=[OUTPUT_TEXT], dynamic_axes={INPUT_IDS: {0: "n"}, OUTPUT_TEXT: {0: "n"}},
                          opset_version=opset, do_constant_folding=True)
    names = [n.replace("_", " ") for n in classnames]
    prompts = [t.format(n) for n in names for t in spec["templates"]]  # class-major, as class_rows reads them
    ids = ClipTokenizer(out_dir / VOCAB_FILE)(prompts)
    want = backbone.tokenize(prompts).cpu().numpy()
    if not np.array_equal(ids, want):
        bad = next(p for p, a, b in zip(prompts, ids, want, strict=True) if not np.array_equal(a, b))
        raise ExportError(f"--open-classes: the device tokenizer and open_clip disagree on {bad!r}; export without "
                          f"--open-classes (please report the name)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rows = class_rows(session.run(None, {INPUT_IDS: ids})[0], len(spec["templates"]), scale)
    with torch.no_grad():
        ref = F.normalize(method.text_features().detach().float(), dim=-1).cpu().numpy()
    diff = float(np.abs(rows / scale - ref).max())
    if diff > ROW_TOL:
        raise ExportError(f"--open-classes: the text graph's class rows differ from torch's by {diff:.2e} "
                          f"(tolerance {ROW_TOL:g}); no bundle was written")
    np.save(out_dir / CLASS_ROWS_FILE, rows)
    return {"text_graph": TEXT_ONNX_FILE, "vocab": VOCAB_FILE, "rows": CLASS_ROWS_FILE, **spec, "scale": scale,
            "input": INPUT_IDS, "output": OUTPUT_TEXT, "max_abs_row_diff": diff}


def _vocab_file(backbone: FrozenCLIP) -> Path:
    """The BPE merges file of the backbone's tokenizer (open_clip's default), or a one-line refusal."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    if not isinstance(backbone.tokenizer, SimpleTokenizer):
        raise ExportError(f"--open-classes supports CLIP's BPE tokenizer; {backbone.name} uses "
                          f"{type(backbone.tokenizer).__name__}")
    return Path(default_bpe())
