"""CLIP's text transformer driven from prompt *embeddings*, with two exact speed-ups.

1. **Truncation.** The transformer is causal and LayerNorm / MLP act per token, so the feature at the end-of-text
   (EOT) token never depends on later positions: running only ``max(EOT) + 1`` positions instead of 77 is exact.
2. **Prefix sharing.** With the class token at the end, every class prompt starts with the same
   ``[SOS] + M context`` tokens. Under the causal mask those positions' hidden states are identical for every class,
   so each layer computes them once (shape ``(B, P, D)``) and each class only runs its own suffix tokens
   ``(B, C, S, D)``, attending to the shared prefix keys/values. ``B`` is 1 for CoOp/DSPT (one prompt set) and the
   image batch for VisPrompt (one prefix per image).

Both are checked against the plain 77-token encoder in the tests (max abs diff <= 1e-5 in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_attention(
    attn: nn.MultiheadAttention, xp: torch.Tensor, xs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal self-attention over ``[prefix; suffix_c]`` for every class c, computing the prefix once.

    The suffix queries of all classes meet the shared prefix keys in one flat matmul, so the prefix keys and values
    are never copied per class (copying them cost more than the attention itself at 100 classes).

    Args:
        attn: the block's ``nn.MultiheadAttention`` (packed in-projection).
        xp: prefix, already layer-normed, (B, P, D).
        xs: suffixes, already layer-normed, (B, C, S, D).
    Returns:
        attention outputs for the prefix (B, P, D) and the suffixes (B, C, S, D).
    """
    h = attn.num_heads
    _, c, s, d = xs.shape  # the batch is left as -1 below: a traced graph must not freeze it
    p, hd = xp.shape[1], d // h
    qp, kp, vp = (t.unflatten(-1, (h, hd)).transpose(1, 2)  # (B, H, P, hd)
                  for t in F.linear(xp, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    qs, ks, vs = (t.unflatten(-1, (h, hd)).permute(0, 3, 1, 2, 4)  # (B, H, C, S, hd)
                  for t in F.linear(xs, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # (B, H, P, hd)
    scale = hd**-0.5
    to_prefix = (qs.reshape(-1, h, c * s, hd) @ kp.transpose(-1, -2)).view(-1, h, c, s, p)  # (B, H, C, S, P)
    to_self = qs @ ks.transpose(-1, -2)  # (B, H, C, S, S), causal within the suffix
    causal = torch.ones(s, s, dtype=torch.bool, device=xs.device).triu(1)
    to_self = to_self.masked_fill(causal, float("-inf")).expand(*to_prefix.shape[:-1], s)  # a shared suffix: B
    scores = torch.cat([to_prefix, to_self], dim=-1) * scale
    weights = scores.softmax(dim=-1)  # (B, H, C, S, P+S)
    out_s = (weights[..., :p].reshape(-1, h, c * s, p) @ vp).view(-1, h, c, s, hd) + weights[..., p:] @ vs
    out_p = out_p.transpose(1, 2).reshape(-1, p, d)
    out_s = out_s.permute(0, 2, 3, 1, 4).reshape(-1, c, s, d)
    return attn.out_proj(out_p), attn.out_proj(out_s)


def supports_prefix_sharing(blocks: nn.ModuleList) -> bool:
    """True when every block is a standard pre-LN block with a packed-projection MultiheadAttention."""
    for blk in blocks:
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or not attn.batch_first:
            return False
        if any(not hasattr(blk, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")) or hasattr(blk, "ln_1_kv"):
            return False
    return True


class TextEncoder(nn.Module):
    """The frozen text tower of an open_clip CLIP, taking prompt embeddings instead of token ids.

    Holds references to the model's modules (no copies); never trains them.
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding  # (77, D)
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)  # (77, 77) additive causal mask
        self.can_share_prefix = supports_prefix_sharing(self.transformer.resblocks)
        if not getattr(self.transformer, "batch_first", True):
            raise NotImplementedError("edgeprompt needs an open_clip version whose text transformer is batch-first")

    @property
    def width(self) -> int:
        return int(self.positional_embedding.shape[-1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x)
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def forward(self, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Plain (optionally truncated) path.

        Args:
            embeddings: (N, L, D) prompt embeddings, L <= 77 (pass L = max(eot)+1 to truncate).
            eot: (N,) position of the end-of-text token in each sequence.
        Returns:
            text features (N, E), not normalised.
        """
        n, length, _ = embeddings.shape
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length].to(x.dtype))
        x = x[torch.arange(n, device=x.device), eot]  # (N, D): only the EOT rows need ln_final + projection
        return self._project(x)

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Prefix-shared path: every class prompt is ``[prefix; suffix_c]``.

        Args:
            prefix: (B, P, D) embeddings of the shared leading tokens ([SOS] + context).
            suffix: (B, C, S, D) or (C, S, D) per-class trailing embeddings (class tokens, '.', EOT, …),
                truncated to the longest real prompt.
            eot: (C,) EOT position in the *full* sequence (so it is >= P).
        Returns:
            text features (B, C, E), not normalised.
        """
        if suffix.dim() == 3:  # shared by all B prompts: the first block's LN and QKV run on it once
            suffix = suffix.unsqueeze(0)
        s = suffix.shape[2]
        p = prefix.shape[1]
        pos = self.positional_embedding.to(prefix.dtype)
        xp = prefix + pos[:p]
        xs = suffix + pos[p : p + s]
        *body, last = self.transformer.resblocks
        for blk in body:
            ap, as_ = _split_attention(blk.attn, blk.ln_1(xp), blk.ln_1(xs))
            xp = xp + blk.ls_1(ap)
            xs = xs + blk.ls_1(as_)  # (B, C, S, D) from here on: the attention mixed in each prompt's own prefix
            xp = xp + blk.ls_2(blk.mlp(blk.ln_2(xp)))
            xs = xs + blk.ls_2(blk.mlp(blk.ln_2(xs)))
        idx = (eot - p).to(xs.device)  # EOT position inside each class suffix, (C,)
        return self._project(_eot_block(last, xp, xs, idx))


def _eot_block(blk: nn.Module, xp: torch.Tensor, xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The last block, computed only where its output is read: each class's EOT row (exact, and cheaper).

    Every position still supplies keys and values, but queries, the attention output, the residuals and the MLP are
    evaluated for one row per class instead of all P + S rows of every prompt.

    Args:
        blk: the last residual attention block.
        xp: prefix states (B, P, D).
        xs: suffix states (B or 1, C, S, D).
        idx: (C,) EOT position inside each suffix.
    Returns:
        the block's output at the EOT rows, (B, C, D).
    """
    attn = blk.attn
    h = attn.num_heads
    c, s, d = xs.shape[1], xs.shape[2], xs.shape[3]
    p, hd = xp.shape[1], d // h
    rows = torch.arange(c, device=xs.device)
    _, kp, vp = (t.unflatten(-1, (h, hd)).transpose(1, 2)  # (B, H, P, hd)
                 for t in F.linear(blk.ln_1(xp), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    xs_n = blk.ln_1(xs)
    w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
    b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
    ks, vs = (t.unflatten(-1, (h, hd)).permute(0, 3, 1, 2, 4)  # (B, H, C, S, hd)
              for t in F.linear(xs_n, w_kv, b_kv).chunk(2, dim=-1))
    q = F.linear(xs_n[:, rows, idx], w_q, b_q).unflatten(-1, (h, hd)).transpose(1, 2)  # (B, H, C, hd)
    scale = hd**-0.5
    to_prefix = q @ kp.transpose(-1, -2)  # (B, H, C, P)
    to_self = (q.unsqueeze(-2) @ ks.transpose(-1, -2)).squeeze(-2)  # (B, H, C, S)
    after_eot = torch.arange(s, device=xs.device)[None, :] > idx[:, None]  # (C, S): causal for the EOT query
    scores = torch.cat([to_prefix, to_self.masked_fill(after_eot, float("-inf"))], dim=-1) * scale
    weights = scores.softmax(dim=-1)  # (B, H, C, P + S)
    out = weights[..., :p] @ vp + (weights[..., p:].unsqueeze(-2) @ vs).squeeze(-2)  # (B, H, C, hd)
    x = xs[:, rows, idx] + blk.ls_1(attn.out_proj(out.transpose(1, 2).flatten(-2)))  # (B, C, D)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))
