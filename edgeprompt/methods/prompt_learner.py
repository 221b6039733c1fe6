"""CoOp's learnable context, assembled into one prompt per class and encoded by the frozen text tower.

Prompt for class c (class token at the end):  ``[SOS] [V1 … VM] [name_c tokens] . [EOT]``.
``middle`` puts the name after the first M/2 context vectors, ``front`` right after [SOS].

Speed: sequences are truncated to the longest real prompt; with the class token at the end and a context shared
by all classes, the ``[SOS] + M`` prefix is encoded once per step (exact; see text_encoder.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprompt.backbone import FrozenCLIP
from edgeprompt.errors import ConfigError

POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Learnable context vectors plus the frozen token embeddings around them.

    Args:
        backbone: the frozen CLIP (token embedding, tokenizer, text encoder).
        classnames: display names, one per class.
        n_ctx: number of context vectors M (ignored when ``ctx_init`` is given: M = its token count).
        ctx_init: optional words to initialise the context from ("a photo of a"); else N(0, 0.02).
        position: where the class name goes: 'end' | 'middle' | 'front'.
        class_specific: one context per class (CSC) instead of one shared context.
        share_prefix: use prefix sharing when the layout allows it (exact; off only for benchmarks and tests).
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: list[str],
        n_ctx: int = 16,
        ctx_init: str = "",
        position: str = "end",
        class_specific: bool = False,
        share_prefix: bool = True,
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"class token position {position!r} is not one of {', '.join(POSITIONS)}")
        self.text = backbone.text
        width = backbone.text.width
        n_cls = len(classnames)
        if ctx_init.strip():
            init_tok = backbone.tokenize([ctx_init.strip()])
            n_init = int(backbone.eot_positions(init_tok)[0]) - 1
            init = backbone.embed_tokens(init_tok)[0, 1 : 1 + n_init].clone()
            if n_ctx > n_init:  # extra free tokens before the template words
                gen = torch.Generator().manual_seed(0)
                extra = torch.empty(n_ctx - n_init, init.shape[-1]).normal_(0.0, 0.02, generator=gen)
                init = torch.cat([extra.to(init), init])
            n_ctx = max(n_ctx, n_init)
            ctx = init.unsqueeze(0).repeat(n_cls, 1, 1) if class_specific else init
            placeholder = " ".join(["X"] * n_ctx)
        else:
            if n_ctx < 1:
                raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
            shape = (n_cls, n_ctx, width) if class_specific else (n_ctx, width)
            gen = torch.Generator().manual_seed(0)  # the trainer reseeds before building; this keeps tests stable
            ctx = torch.empty(shape).normal_(0.0, 0.02, generator=gen)
            placeholder = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx.float())
        self.n_ctx, self.position, self.class_specific = n_ctx, position, class_specific
        names = [n.replace("_", " ") for n in classnames]
        tokens = backbone.tokenize([f"{placeholder} {n}." for n in names])  # (C, 77)
        eot = backbone.eot_positions(tokens)
        length = int(eot.max()) + 1  # truncation: nothing after the last EOT can reach an EOT feature
        emb = backbone.embed_tokens(tokens)[:, :length].float()  # (C, L, D)
        name_lens = [int(backbone.eot_positions(backbone.tokenize([n]))[0]) - 1 for n in names]
        # constants, rebuilt from the class names, never saved (persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # (C, 1, D) [SOS]
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # (C, S, D) name . EOT
        self.register_buffer("eot", eot, persistent=False)  # (C,)
        self.name_lens = name_lens
        self.share_prefix = share_prefix and position == "end" and not class_specific and backbone.text.can_share_prefix

    def assemble(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Full truncated prompt embeddings (C, L, D); ``ctx`` overrides the learned context ((M, D) or (C, M, D))."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        if self.position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, n in enumerate(self.name_lens):  # name lengths differ per class, so this layout needs a loop
            name, rest = self.token_suffix[i : i + 1, :n], self.token_suffix[i : i + 1, n:]
            if self.position == "middle":
                parts = [self.token_prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest]
            else:
                parts = [self.token_prefix[i : i + 1], name, ctx[i : i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def forward(self) -> torch.Tensor:
        """Class text features (C, E), not normalised."""
        if self.share_prefix:
            prefix = torch.cat([self.token_prefix[:1], self.ctx.unsqueeze(0)], dim=1)  # (1, 1+M, D)
            return self.text.forward_shared(prefix, self.token_suffix, self.eot)[0]
        return self.text(self.assemble(), self.eot)
