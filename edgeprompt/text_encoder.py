"""CLIP's text transformer driven from prompt *embeddings*, with two exact speed-ups.

1. **Truncation.** The transformer is causal and LayerNorm / MLP act per token, so the feature at the end-of-text
   (EOT) token never depends on later positions: running only ``max(EOT) + 1`` positions instead of 77 is exact.
2. **Prefix sharing.** With the class token at the end, every class prompt starts with the same
   ``[SOS] + M context`` tokens. Under the causal mask those positions' hidden states are identical for every class,
   so each layer computes them once (shape ``(B, P, D)``) and each class only runs its own suffix tokens
   ``(B, C, S, D)``, attending to the shared prefix keys/values. ``B`` is 1 for CoOp/DSPT (one prompt set) and the
   image batch for VisPrompt (one prefix per image). Classes are grouped by suffix length, so no position after a
   class's EOT is computed, and the last block runs only at each EOT row (the only output read).

Both are checked against the plain 77-token encoder in the tests (max abs diff <= 1e-5 in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(..., T, D) -> (..., H, T, hd), heads before the token axis."""
    return x.unflatten(-1, (h, x.shape[-1] // h)).transpose(-3, -2)


def _split_attention(
    attn: nn.MultiheadAttention, xp: torch.Tensor, groups: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Causal self-attention over ``[prefix; suffix_c]`` for every class c, computing the prefix once.

    The suffix queries of all classes meet the shared prefix keys in one flat matmul, so the prefix keys and values
    are never copied per class (copying them cost more than the attention itself at 100 classes).

    Args:
        attn: the block's ``nn.MultiheadAttention`` (packed in-projection).
        xp: prefix, already layer-normed, (B, P, D).
        groups: suffixes, already layer-normed, one (B or 1, C_g, S_g, D) tensor per suffix length (no padding).
    Returns:
        attention outputs for the prefix (B, P, D) and for each suffix group (B, C_g, S_g, D).
    """
    h = attn.num_heads
    d = xp.shape[-1]
    p, hd = xp.shape[1], d // h
    qp, kp, vp = (_heads(t, h) for t in F.linear(xp, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # (B, H, P, hd)
    outs = []
    for xs in groups:
        c, s = xs.shape[1], xs.shape[2]  # the batch is left as -1 below: a traced graph must not freeze it
        qs, ks, vs = (t.unflatten(-1, (h, hd)).permute(0, 3, 1, 2, 4)  # (B, H, C, S, hd)
                      for t in F.linear(xs, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
        to_prefix = (qs.reshape(-1, h, c * s, hd) @ kp.transpose(-1, -2)).view(-1, h, c, s, p)  # (B, H, C, S, P)
        pos = torch.arange(s, device=xs.device)  # not triu: onnxruntime < 1.18 has no boolean Trilu
        causal = pos[None, :] > pos[:, None]  # (S, S), True above the diagonal
        to_self = (qs @ ks.transpose(-1, -2)).masked_fill(causal, float("-inf"))  # (B or 1, H, C, S, S)
        to_self = to_self.expand(*to_prefix.shape[:-1], s)  # a suffix shared by all B prompts: broadcast
        weights = (torch.cat([to_prefix, to_self], dim=-1) * hd**-0.5).softmax(dim=-1)  # (B, H, C, S, P+S)
        out_s = (weights[..., :p].reshape(-1, h, c * s, p) @ vp).view(-1, h, c, s, hd) + weights[..., p:] @ vs
        outs.append(attn.out_proj(out_s.permute(0, 2, 3, 1, 4).reshape(-1, c, s, d)))
    return attn.out_proj(out_p.transpose(1, 2).reshape(-1, p, d)), outs


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
        # open_clip < 2.26 has no batch_first attribute and runs its text transformer sequence-first
        if not getattr(self.transformer, "batch_first", False):
            raise NotImplementedError("edgeprompt needs open_clip_torch >= 2.26.1, whose text transformer is "
                                      "batch-first: pip install -U 'open_clip_torch>=2.26.1'")

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

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor,
                       groups: tuple[list[list[int]], list[int]] | None = None) -> torch.Tensor:
        """Prefix-shared path: every class prompt is ``[prefix; suffix_c]``.

        Args:
            prefix: (B, P, D) embeddings of the shared leading tokens ([SOS] + context).
            suffix: (B, C, S, D) or (C, S, D) per-class trailing embeddings (class tokens, '.', EOT, …),
                truncated to the longest real prompt.
            eot: (C,) EOT position in the *full* sequence (so it is >= P).
            groups: :func:`length_groups` of the suffix lengths, precomputed (needed when traced for export: the
                grouping must not be read from a tensor); None computes it from ``eot``.
        Returns:
            text features (B, C, E), not normalised.
        """
        if suffix.dim() == 3:  # shared by all B prompts: the first block's LN and QKV run on it once
            suffix = suffix.unsqueeze(0)
        p = prefix.shape[1]
        members, order = length_groups([int(e) - p + 1 for e in eot.tolist()]) if groups is None else groups
        pos = self.positional_embedding.to(prefix.dtype)
        xp = prefix + pos[:p]
        groups = [suffix[:, m, :length] + pos[p : p + length] for m, length in zip(members, order, strict=True)]
        *body, last = self.transformer.resblocks
        for blk in body:
            ap, outs = _split_attention(blk.attn, blk.ln_1(xp), [blk.ln_1(x) for x in groups])
            xp = xp + blk.ls_1(ap)
            groups = [x + blk.ls_1(a) for x, a in zip(groups, outs, strict=True)]  # (B, C_g, S_g, D) from here on
            xp = xp + blk.ls_2(blk.mlp(blk.ln_2(xp)))
            groups = [x + blk.ls_2(blk.mlp(blk.ln_2(x))) for x in groups]
        eot_rows = _eot_block(last, xp, groups)  # per group (B, C_g, D): the EOT is every group's last position
        inverse = torch.tensor([c for m in members for c in m], device=suffix.device).argsort()
        return self._project(torch.cat(eot_rows, dim=1)[:, inverse])  # classes back in their own order


def length_groups(lengths: list[int]) -> tuple[list[list[int]], list[int]]:
    """Classes grouped by suffix length (tokens up to and including EOT): (members per group, group lengths)."""
    order = sorted(set(lengths))
    return [[c for c, n in enumerate(lengths) if n == length] for length in order], order


def _eot_block(blk: nn.Module, xp: torch.Tensor, groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """The last block, computed only where its output is read: each class's EOT row (exact, and cheaper).

    Every position still supplies keys and values, but queries, the attention output, the residuals and the MLP are
    evaluated for one row per class (the last of its group's suffix) instead of all P + S rows of every prompt.

    Args:
        blk: the last residual attention block.
        xp: prefix states (B, P, D).
        groups: suffix states per length group, (B or 1, C_g, S_g, D), each ending at its classes' EOT.
    Returns:
        the block's output at the EOT rows, one (B, C_g, D) per group.
    """
    attn = blk.attn
    h, d = attn.num_heads, xp.shape[-1]
    p, hd = xp.shape[1], d // h
    w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
    b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
    kp, vp = (_heads(t, h) for t in F.linear(blk.ln_1(xp), w_kv, b_kv).chunk(2, dim=-1))  # (B, H, P, hd)
    outs = []
    for xs in groups:
        xs_n = blk.ln_1(xs)
        ks, vs = (t.unflatten(-1, (h, hd)).permute(0, 3, 1, 2, 4)  # (B, H, C, S, hd)
                  for t in F.linear(xs_n, w_kv, b_kv).chunk(2, dim=-1))
        q = _heads(F.linear(xs_n[:, :, -1], w_q, b_q), h)  # (B, H, C, hd): the EOT query, which sees every position
        to_prefix = q @ kp.transpose(-1, -2)  # (B, H, C, P)
        to_self = (q.unsqueeze(-2) @ ks.transpose(-1, -2)).squeeze(-2)  # (B, H, C, S)
        if to_self.shape[0] != to_prefix.shape[0]:  # a one-block tower: the suffix is still shared here
            to_self = to_self.expand(*to_prefix.shape[:-1], to_self.shape[-1])
        weights = (torch.cat([to_prefix, to_self], dim=-1) * hd**-0.5).softmax(dim=-1)  # (B, H, C, P + S)
        out = weights[..., :p] @ vp + (weights[..., p:].unsqueeze(-2) @ vs).squeeze(-2)  # (B, H, C, hd)
        x = xs[:, :, -1] + blk.ls_1(attn.out_proj(out.transpose(1, 2).flatten(-2)))  # (B, C, D)
        outs.append(x + blk.ls_2(blk.mlp(blk.ln_2(x))))
    return outs
