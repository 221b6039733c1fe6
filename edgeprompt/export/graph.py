"""The module that becomes ``model.onnx``: pixels in [0, 1] -> logits and probabilities, in one graph.

Two shapes, chosen by the method:

- **Folded** (``method.foldable``: zeroshot, coop, dspt). The class text features do not depend on the image, so the
  whole text side becomes one constant::

      pixels (B,3,H,W) -> (x - mean) / std -> image encoder -> L2 normalise -> @ W (E,C) -> logits -> softmax -> probs

  ``W`` is the L2-normalised (C, E) text-feature matrix, transposed and multiplied by the logit scale once, at
  export: the prompt costs one small MatMul on the device.
- **Dynamic** (VisPrompt and any method whose text features depend on the image). The graph keeps the image
  tokens, the method's adapter and the frozen text encoder; it calls ``method.forward(FeatureBatch(pooled,
  tokens))`` exactly as evaluation does.

FP16 (``precision='fp16'``) casts a *copy* of the image encoder to half precision, but keeps the pieces that
overflow or lose accuracy in FP16 in FP32 (ecosystem.md §0.5): the input normalisation, every LayerNorm (computed in
FP32 between casts), the final L2 normalisation, the class MatMul and the softmax. Inputs and outputs stay FP32.
Attention softmaxes inside the encoder run in FP16. In a dynamic graph only the image encoder is FP16; the method's
adapter and the text encoder stay FP32. TensorRT 11 builds follow these types (strong typing); TensorRT 10 and
onnxruntime run them as they are. The shared backbone (cached per process) is never modified.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeprompt.backbone import FrozenCLIP, tower_features
from edgeprompt.errors import ExportError
from edgeprompt.manifest import OUTPUT_FEATURES, OUTPUT_LOGITS, OUTPUT_PROBS, PreprocessSpec
from edgeprompt.methods.base import FeatureBatch, PromptMethod

PRECISIONS = ("fp32", "fp16")


class Fp32LayerNorm(nn.Module):
    """LayerNorm computed in FP32 whatever the input dtype, with the result cast back to the input dtype.

    In ONNX (opset >= 17) this is ``Cast -> LayerNormalization (fp32 weights) -> Cast``: TensorRT maps it to its
    normalisation layer and keeps it in FP32 in a strongly typed build.

    Args:
        ln: The LayerNorm to wrap; its weights are copied as FP32.
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = tuple(ln.normalized_shape)
        self.eps = float(ln.eps)
        self.weight = nn.Parameter(ln.weight.detach().float().clone(), requires_grad=False) \
            if ln.weight is not None else None
        self.bias = nn.Parameter(ln.bias.detach().float().clone(), requires_grad=False) if ln.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


def half_encoder(visual: nn.Module) -> tuple[nn.Module, int]:
    """An FP16 copy of an image encoder with every LayerNorm kept in FP32.

    Args:
        visual: The open_clip image tower (ViT or ModifiedResNet); it is deep-copied, never changed.

    Returns:
        (the FP16 copy in eval mode, number of LayerNorms kept in FP32).
    """
    enc = copy.deepcopy(visual).half().eval()
    kept = 0
    for parent in list(enc.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, Fp32LayerNorm(child))
                kept += 1
    enc.requires_grad_(False)
    return enc, kept


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Disable ``nn.MultiheadAttention``'s fused fast path while tracing (it has no ONNX export), then restore it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def method_scale(method: PromptMethod, backbone: FrozenCLIP) -> float:
    """The logit scale the method applies (its own ``scale`` if it has one, else CLIP's)."""
    return float(getattr(method, "scale", backbone.logit_scale))


class ExportGraph(nn.Module):
    """Pixels in [0, 1] -> (logits, probs) for one tuned method; see the module docstring for the two shapes.

    Args:
        backbone: The frozen CLIP the method was tuned on.
        method: The tuned method (eval mode).
        spec: Preprocessing spec whose mean/std are folded into the graph (default: the backbone's).
        precision: 'fp32' or 'fp16' (FP16 weights, FP32 I/O and FP32-sensitive ops; see the module docstring).

    Attributes:
        folded: True when the text side is the constant class matrix.
        info: What the graph contains (for the bundle manifest): shape, precision, FP32 islands.
    """

    output_names = (OUTPUT_LOGITS, OUTPUT_PROBS)

    def __init__(self, backbone: FrozenCLIP, method: PromptMethod, spec: PreprocessSpec | None = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        spec = spec or backbone.preprocess
        self.image_size = int(spec.image_size)
        self.num_classes = method.num_classes
        self.precision = precision
        self.uint8_input = False  # set by build_graph: (B, H, W, 3) uint8 in, scaled and transposed here
        self.features_output = False  # set by build_graph: also output the normalised features (--open-classes)
        self.folded = bool(method.foldable)
        self.needs_tokens = bool(method.needs_tokens)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        visual = backbone.model.visual
        kept_fp32 = 0
        if precision == "fp16":
            self.encoder, kept_fp32 = half_encoder(visual)
        else:
            self.encoder = visual
        scale = method_scale(method, backbone)
        self.logit_scale = scale
        if self.folded:
            with torch.no_grad():
                text = F.normalize(method.text_features().detach().float(), dim=-1)  # (C, E)
            # (E, C), pre-normalised and pre-scaled: logits = normalize(f) @ W
            self.register_buffer("class_matrix", (text * scale).t().contiguous())
            self.method: PromptMethod | None = None
        else:
            self.method = method
        fp32_ops = ["input normalisation", "L2 normalisation", "class MatMul" if self.folded else "method head",
                    "softmax"]
        self.info: dict[str, Any] = {
            "graph": "folded" if self.folded else "dynamic-text",
            "precision": precision,
            "io_dtype": "float32",
            "fp32_ops": (["LayerNorm"] + fp32_ops) if precision == "fp16" else fp32_ops,
            "layernorms_kept_fp32": kept_fp32,
            "logit_scale": scale,
        }

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) float32 pixels in [0, 1] (or (B, H, W, 3) uint8 with ``uint8_input``) -> (logits (B, C),
        probs (B, C)), both float32; with ``features_output`` also the L2-normalised image features (B, E)."""
        if self.uint8_input:  # the bytes cross to the device; scaling and layout happen here, exactly
            pixels = pixels.permute(0, 3, 1, 2).float() / 255.0
        x = (pixels - self.mean) / self.std
        if self.precision == "fp16":
            x = x.half()
        pooled, tokens = tower_features(self.encoder, x, self.needs_tokens and not self.folded)
        pooled = pooled.float()
        if self.folded:
            feats = F.normalize(pooled, dim=-1)
            logits = feats @ self.class_matrix
            if self.features_output:
                return logits, logits.softmax(dim=-1), feats
        else:
            assert self.method is not None  # set in __init__ when not folded
            feats = FeatureBatch(pooled=pooled, tokens=tokens.float() if tokens is not None else None)
            logits = self.method(feats).float()
        return logits, logits.softmax(dim=-1)


def build_graph(backbone: FrozenCLIP, method: PromptMethod, spec: PreprocessSpec | None = None,
                precision: str = "fp32", uint8_input: bool = False, features_output: bool = False) -> ExportGraph:
    """An :class:`ExportGraph` in eval mode (what :func:`~edgeprompt.export.onnx.export_onnx` traces); with
    ``uint8_input`` its input is (B, H, W, 3) uint8; with ``features_output`` (folded graphs only) it also returns
    the normalised image features, for class rows applied outside the graph."""
    graph = ExportGraph(backbone, method, spec, precision).eval()
    graph.uint8_input = uint8_input
    if features_output:
        if not graph.folded:
            raise ExportError("--open-classes needs a method whose class rows are constants (zeroshot, coop, dspt, "
                              "nlprompt with a shared context); this one computes them per image")
        graph.features_output = True
        graph.output_names = (OUTPUT_LOGITS, OUTPUT_PROBS, OUTPUT_FEATURES)
    return graph
