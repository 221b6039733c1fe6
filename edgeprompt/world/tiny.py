"""The shipped tiny CLIP (``edgeprompt-tiny``, tag ``shapes``): open_clip registration and offline loading.

Checkpoint format (``weights/edgeprompt-tiny-shapes.safetensors``, version ``edgeprompt-tiny/1``):

- every tensor of the open_clip state dict, fp32, except ``token_embedding.weight``;
- ``token_embedding.rows`` (int64, K) and ``token_embedding.values`` (fp32, K x width): the embedding rows
  pretraining trained, i.e. the tokens that world captions can contain (a few hundred of 49,408);
- every other row is rebuilt by :func:`embedding_init` from the seed in the file's metadata. Pretraining
  initialised the whole table with that same function and never touched those rows, so the rebuilt table is
  exactly the trained one. The full 49,408 x 128 table would be 25 MB in fp32 (12.6 MB even in fp16); stored this
  way the file is about 5 MB, and nothing is rounded.

Words the captions never used (the downstream renames "rhombus", "plus sign", …) thus keep distinct random
embeddings, like rare words in a real CLIP: the text prior for them is uninformative, which a tuned prompt can fix.
:func:`embedding_init` uses only integer arithmetic and one exact float32 scaling, so the rebuild gives the same
bits on every machine and library version. Loading needs no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.registry import suggest

if TYPE_CHECKING:
    import torch

MODEL_NAME = "edgeprompt-tiny"
CONFIG_PATH = Path(__file__).with_name(f"{MODEL_NAME}.json")
WEIGHTS_DIR = Path(__file__).with_name("weights")
FORMAT = "edgeprompt-tiny/1"
EMBED_STD = 0.02  # the std open_clip uses for token embeddings
# model name -> pretrained tag -> file in WEIGHTS_DIR
TINY_PRETRAINED: dict[str, dict[str, str]] = {MODEL_NAME: {"shapes": "edgeprompt-tiny-shapes.safetensors"}}
_ROWS, _VALUES = "token_embedding.rows", "token_embedding.values"


def register() -> dict[str, dict[str, Any]]:
    """Make ``edgeprompt-tiny`` known to open_clip (``create_model``, ``get_tokenizer``) and offer its shipped
    weights: the ``edgeprompt.backbones`` entry point (pyproject.toml) the backbone discovers; safe to call often."""
    import functools

    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)  # takes a path; the file stem is the model name
    return {model: {tag: functools.partial(load_tiny_state_dict, model, tag) for tag in tags}
            for model, tags in TINY_PRETRAINED.items()}


def model_config(model: str = MODEL_NAME) -> dict[str, Any]:
    """The open_clip config dict of a tiny model (read from the JSON file, no torch)."""
    _check_model(model)
    return json.loads(CONFIG_PATH.read_text())


def _check_model(model: str) -> None:
    if model not in TINY_PRETRAINED:
        raise ConfigError(f"unknown tiny model {model!r}.{suggest(model, list(TINY_PRETRAINED))} Use {MODEL_NAME!r}")


def tiny_weights_path(model: str, tag: str) -> Path:
    """Path of the shipped checkpoint for ``model`` / ``tag``.

    Raises:
        ConfigError: unknown model or tag.
        ArtifactError: the file is missing from the installed package.
    """
    _check_model(model)
    tags = TINY_PRETRAINED[model]
    if tag not in tags:
        raise ConfigError(
            f"unknown pretrained tag {tag!r} for {model}.{suggest(tag, list(tags))} Use one of: {', '.join(tags)}"
        )
    path = WEIGHTS_DIR / tags[tag]
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: reinstall edgeprompt, or rebuild it with "
            f"'python -m edgeprompt.world.pretrain --out {path}'"
        )
    return path


def embedding_init(vocab: int, width: int, seed: int, std: float = EMBED_STD) -> np.ndarray:
    """A (vocab, width) float32 table, uniform with standard deviation ``std``, identical on every platform.

    SplitMix64 over the element index gives 24 random bits per entry; (2u - 1) * std * sqrt(3) is exact in
    float32, so no libm or RNG-version difference can change a bit.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        z = np.arange(1, vocab * width + 1, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x632BE59BD9B4E019)
        z = z * np.uint64(0x9E3779B97F4A7C15)  # SplitMix64: the k-th state of a Weyl sequence, then the finaliser
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)  # exact, in [-1, 1)
    return (u * np.float32(std * 3**0.5)).reshape(vocab, width)


def pack_state_dict(
    state: dict[str, torch.Tensor], rows: torch.Tensor, metadata: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a full state dict into the compact tensors and metadata that :func:`unpack_state_dict` reverses.

    Args:
        state: full open_clip state dict (any float dtype; stored as fp32).
        rows: token ids whose embedding rows differ from ``embedding_init``; all others must equal it.
        metadata: provenance to keep (must include ``embedding_seed``); values are strings.
    """
    import torch

    rows = rows.to(torch.int64).sort().values
    table = state["token_embedding.weight"].float()
    out = {k: v.detach().float().contiguous() for k, v in state.items() if k != "token_embedding.weight"}
    out[_ROWS] = rows.contiguous()
    out[_VALUES] = table[rows].contiguous()
    meta = {"format": FORMAT, "vocab_size": str(table.shape[0]), "embedding_std": str(EMBED_STD), **metadata}
    return out, meta


def unpack_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rebuild the full fp32 state dict from the compact form (see the module docstring)."""
    import torch

    if metadata.get("format") != FORMAT:
        raise ArtifactError(
            f"checkpoint format {metadata.get('format')!r} is not {FORMAT!r}: rebuild it with this "
            "version's 'python -m edgeprompt.world.pretrain'"
        )
    rows, values = tensors[_ROWS], tensors[_VALUES]
    table = embedding_init(
        int(metadata["vocab_size"]), values.shape[1], int(metadata["embedding_seed"]), float(metadata["embedding_std"])
    )
    table = torch.from_numpy(table)
    table[rows] = values
    state = {k: v for k, v in tensors.items() if k not in (_ROWS, _VALUES)}
    state["token_embedding.weight"] = table
    return state


def checkpoint_metadata(model: str = MODEL_NAME, tag: str = "shapes") -> dict[str, str]:
    """The provenance stored in the shipped checkpoint (pretraining seed, steps, wall time, …)."""
    from safetensors import safe_open

    with safe_open(str(tiny_weights_path(model, tag)), framework="pt") as f:
        return dict(f.metadata() or {})


def load_tiny_state_dict(model: str = MODEL_NAME, tag: str = "shapes") -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a shipped tiny model, offline and deterministic.

    It loads with ``strict=True`` into ``open_clip.create_model(model, pretrained=None)`` (after :func:`register`).

    Args:
        model: ``edgeprompt-tiny``.
        tag: pretrained tag, ``shapes``.
    """
    from safetensors import safe_open

    path = tiny_weights_path(model, tag)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unpack_state_dict(tensors, metadata)


def create_tiny_model(model: str = MODEL_NAME, tag: str | None = "shapes") -> torch.nn.Module:
    """Build the open_clip model in eval mode, with the shipped weights (``tag=None``: random init)."""
    import open_clip

    register()
    _check_model(model)
    net = open_clip.create_model(model, pretrained=None)
    if tag is not None:
        net.load_state_dict(load_tiny_state_dict(model, tag), strict=True)
    return net.eval()
