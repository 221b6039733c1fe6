"""The frozen CLIP: open_clip model creation, freezing, image/text encoders and the preprocessing spec.

``create_backbone(model, pretrained)`` accepts any open_clip model name plus

- a pretrained *tag* (``openai``, ``laion2b_s34b_b79k`` …), downloaded by open_clip on a machine with network;
- a local checkpoint path (``.pt``, ``.bin``, ``.safetensors``) or ``local-dir:PATH``;
- ``shapes`` for the shipped ``edgeprompt-tiny`` model (offline, package data);
- ``none`` for random weights drawn from a fixed seed (tests and speed benchmarks only).

Frozen for real: every parameter has ``requires_grad=False``, the model stays in eval mode even when a parent
module calls ``.train()``, and image encoding runs under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeprompt.errors import ConfigError
from edgeprompt.manifest import BackboneRef, PreprocessSpec
from edgeprompt.registry import suggest
from edgeprompt.text_encoder import TextEncoder

log = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


PLUGIN_GROUP = "edgeprompt.backbones"  # entry points: a callable that registers models, returns {model: {tag: loader}}


@lru_cache(maxsize=1)
def local_weights() -> dict[str, dict[str, Callable[[], dict[str, torch.Tensor]]]]:
    """Model name -> pretrained tag -> a loader of weights that ship with a package (no download).

    Packages offer models through the ``edgeprompt.backbones`` entry-point group (the offline world's tiny CLIP is
    one: ``edgeprompt.world.tiny:register``), so the backbone never imports them by name.
    """
    from importlib.metadata import entry_points

    out: dict[str, dict[str, Callable[[], dict[str, torch.Tensor]]]] = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            provided = ep.load()()
        except Exception as e:  # a broken plugin must not take the real models down with it
            log.warning("backbone plugin %s failed to load (%s): its models are unavailable", ep.name, e)
            continue
        for model, tags in provided.items():
            out.setdefault(model, {}).update(tags)
    return out


def _register_models() -> None:
    """Register the plugins' model configs and any listed in ``$EDGEPROMPT_MODEL_CONFIGS``.

    ``EDGEPROMPT_MODEL_CONFIGS`` holds open_clip JSON config files or folders (``os.pathsep``-separated), so a custom
    architecture can be used by name from the CLI; the config's file name (without ``.json``) is the model name.
    """
    import open_clip

    for entry in filter(None, os.environ.get("EDGEPROMPT_MODEL_CONFIGS", "").split(os.pathsep)):
        if not Path(entry).exists():
            raise ConfigError(f"EDGEPROMPT_MODEL_CONFIGS lists {entry}, which does not exist")
        open_clip.add_model_config(entry)
    local_weights()  # each plugin registers its configs when it is loaded


def list_backbones() -> dict[str, list[str]]:
    """Model name -> known pretrained tags (open_clip's hub tags plus the plugins' shipped weights)."""
    import open_clip

    _register_models()
    out: dict[str, list[str]] = {name: [] for name in open_clip.list_models()}
    for name, tag in open_clip.list_pretrained():
        out.setdefault(name, []).append(tag)
    for name, tags in local_weights().items():
        out.setdefault(name, []).extend(t for t in tags if t not in out[name])
    return out


def _looks_like_path(p: str) -> bool:
    return p.startswith("local-dir:") or os.sep in p or p.endswith(_CHECKPOINT_SUFFIXES) or Path(p).exists()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes): identifies the weights whatever their source."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _build_open_clip(model: str, pretrained: str | None) -> nn.Module:
    import open_clip

    _register_models()
    names = open_clip.list_models()
    if model not in names:
        raise ConfigError(f"unknown model {model!r}.{suggest(model, names)} See `edgeprompt models` for the list")
    tag = (pretrained or "none").strip()
    if tag.lower() in RANDOM_TAGS:
        log.warning("model %s built with RANDOM weights (pretrained=%s): accuracy is meaningless", model, tag)
        # a fixed seed makes 'random' weights the same in every process, so a run can be reloaded and exported
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(model, pretrained=None)
    shipped = local_weights().get(model, {})
    if tag in shipped:
        with _quiet_open_clip():  # its "initialized randomly" warning is false here: the weights load next
            m = open_clip.create_model(model, pretrained=None)
        m.load_state_dict(shipped[tag](), strict=True)
        return m
    if _looks_like_path(tag):
        path = tag.removeprefix("local-dir:")
        if not Path(path).exists():
            raise ConfigError(f"checkpoint {path} does not exist: pass an existing .pt/.bin/.safetensors file")
        try:
            if path.endswith(".safetensors"):  # read here: open_clip 2.26 loads checkpoints with torch.load only
                from safetensors.torch import load_file

                with _quiet_open_clip():
                    m = open_clip.create_model(model, pretrained=None)
                m.load_state_dict(load_file(path), strict=True)
                return m
            return open_clip.create_model(model, pretrained=tag)
        except Exception as e:  # torch.load / safetensors / load_state_dict each raise their own types
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ConfigError(f"checkpoint {path} cannot be loaded into model {model!r} ({why}): pass an open_clip "
                              f"checkpoint of that architecture") from e
    tags = [t for n, t in open_clip.list_pretrained() if n == model]
    if tag not in tags:
        raise ConfigError(
            f"unknown pretrained tag {tag!r} for {model}.{suggest(tag, tags)} "
            f"Known tags: {', '.join(tags) or 'none'}; or pass a local checkpoint path"
        )
    cached = _cached_hub_file(model, tag)
    if cached is None and not _network_ok():  # fail in a second, not after a minute of retries
        raise ConfigError(
            f"cannot download weights {model}/{tag}: no network, and they are not in the Hugging Face cache; pass a "
            f"local checkpoint path: --pretrained /path/to/open_clip_model.safetensors"
        )
    try:
        return open_clip.create_model(model, pretrained=cached or tag)
    except Exception as e:  # network errors come in many types (requests, urllib, huggingface_hub)
        raise ConfigError(
            f"could not download weights {model}/{tag} ({type(e).__name__}); without network, pass a local "
            f"checkpoint path: --pretrained /path/to/open_clip_model.safetensors"
        ) from e


HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # what open_clip fetches from a hub repo


def _cached_hub_file(model: str, tag: str) -> str | None:
    """The local path of ``model``/``tag``'s weights when the Hugging Face cache already holds them, else None."""
    import open_clip

    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    for name in (filename,) if filename else HUB_FILES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def _network_ok(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the weights host answers on port 443 within ``timeout`` (respects HF_HUB_OFFLINE)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def tower_features(
    visual: nn.Module, images: torch.Tensor, with_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled embeddings (B, E) and, with ``with_tokens``, patch tokens (B, T, E) from an open_clip image tower.

    ``images`` are CLIP-normalised. Patch tokens are the ViT's final tokens (after ``ln_post``), projected with the
    visual projection into the joint embedding space so they live where the pooled embedding lives. Only ViT towers
    expose them. Takes the tower as an argument so export can run the same code on an FP16 copy.
    """
    if not with_tokens:
        return visual(images), None
    if not hasattr(visual, "output_tokens"):
        raise ConfigError("this needs patch tokens, which only ViT image towers have: use a ViT backbone, "
                          "or VisPrompt's pooled key/value option (--opt kv=pooled)")
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    proj = getattr(visual, "proj", None)
    if proj is not None and tokens.shape[-1] == proj.shape[0]:
        tokens = tokens @ proj
    return pooled, tokens


class FrozenCLIP(nn.Module):
    """A frozen open_clip CLIP with the pieces prompt tuning needs.

    Attributes:
        model: the open_clip model (frozen, eval mode).
        text: :class:`TextEncoder` over prompt embeddings (plain, truncated and prefix-shared paths).
        preprocess: the :class:`PreprocessSpec` of the model's eval transform.
        ref: :class:`BackboneRef` (name, pretrained tag/path, weights hash).
    """

    def __init__(self, model: nn.Module, name: str, pretrained: str | None) -> None:
        super().__init__()
        import open_clip

        model.requires_grad_(False)
        model.eval()
        self.model = model
        self.name = name
        tower = model.text if hasattr(model, "text") else model
        self.text = TextEncoder(tower)
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.preprocess = PreprocessSpec(
            image_size=int(size),
            resize=str(cfg.get("resize_mode", "shortest")),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        )
        self.ref = BackboneRef(model=name, pretrained=pretrained, weights_sha256=weights_fingerprint(model))
        self.register_buffer("_mean", torch.tensor(self.preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.preprocess.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenCLIP:
        """Frozen means frozen: the wrapped model stays in eval mode whatever the parent asks."""
        super().train(False)
        return self

    # --- image side -------------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if self.model.text_projection is not None else self.text.width

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale), CLIP's inverse temperature (100 for OpenAI weights)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def has_patch_tokens(self) -> bool:
        return hasattr(self.model.visual, "output_tokens")

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> CLIP-normalised input."""
        return (pixels - self._mean) / self._std

    @torch.no_grad()
    def encode_image(
        self, images: torch.Tensor, with_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled image embeddings (B, E), not normalised; with ``with_tokens`` also patch tokens (B, T, E)
        (see :func:`tower_features`). ``images`` are already CLIP-normalised."""
        pooled, tokens = tower_features(self.model.visual, images, with_tokens)
        return (pooled, tokens) if with_tokens else pooled

    # --- text side --------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, 77) from open_clip's tokenizer."""
        return self.tokenizer(texts).to(self.model.logit_scale.device)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token: the largest id for CLIP's BPE vocabulary (open_clip's 'argmax' pooling)."""
        eos = getattr(self.model, "text_eos_id", None)
        if getattr(self.model, "text_pool_type", "argmax") == "eos" and eos is not None:
            return (tokens == eos).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    @torch.no_grad()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (N, 77, D) — constants for the prompt learners."""
        return self.text.token_embedding(tokens)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Reference text features (N, E) for plain strings, not normalised (open_clip's own ``encode_text``)."""
        return self.model.encode_text(self.tokenize(texts))


@lru_cache(maxsize=4)
def _cached(model: str, pretrained: str | None) -> FrozenCLIP:
    return FrozenCLIP(_build_open_clip(model, pretrained), model, pretrained)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's root-logger warnings while a model whose weights we load ourselves is built."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def create_backbone(model: str, pretrained: str | None, device: str | torch.device = "cpu") -> FrozenCLIP:
    """Build (or reuse, within a process) the frozen CLIP ``model`` with weights ``pretrained`` on ``device``."""
    return _cached(model, pretrained).to(device)


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * <f̂, ĝ>``: (B, E) x (C, E) -> (B, C), or per-image text (B, C, E) -> (B, C)."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    if txt.dim() == 3:
        return scale * torch.einsum("be,bce->bc", img, txt)
    return scale * img @ txt.t()


def resolve_device(name: str = "auto") -> torch.device:
    """The one device resolver: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: a CUDA device was asked for and no GPU is visible.
    """
    from edgeprompt.config import TrainConfig

    TrainConfig(device=name).validate()  # the one check of a device name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)
