"""The compressor: a causal Transformer over one history -> one `dim`-d vector.

Inputs are exactly `features.pad_batch` output (right-padded, bool mask). A
learned BOS token always sits at position 0, so every row has one valid
position: an empty history is answered with the learned "no history" vector,
never NaN. Attention is causal and pooling is causal (last valid position,
optionally with the running mean), so output position t depends only on
events 0..t-1: one pass yields the vectors of all prefixes, and the vector of
a full history is exactly what training optimised at its last position.

The attention block is written out (no nn.TransformerEncoderLayer), so the
exported graph holds plain MatMul/Softmax ops and no fused fast-path kernel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.features import NUM_RESERVED, PAD, UNKNOWN


@dataclass
class NetworkConfig:
    num_items: int  # rows of the item table, reserved indices included
    num_event_types: int
    num_dense: int
    max_len: int  # longest history (BOS not counted)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.2
    dim: int = 64  # output vector size
    pooling: str = "last"  # "last" or "last+mean"
    # Score items with a linear map of the input item embeddings instead of a separate
    # output table: one set of item parameters, learned from both sides.
    tied_items: bool = False
    # Subtract a learned multiple of the summed item vectors of the history from the
    # output, so items already seen score lower (the vector itself "remembers" them).
    exclude_history: bool = False
    # With exclude_history: also subtract a learned linear map of that sum. A scalar can only
    # push every seen direction down alike; a map can learn which directions of the history
    # mark "already seen" and which mark "likes more of this".
    exclude_map: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C); allowed: (B, 1, T, T) bool, True = query may attend key
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        v = v.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))  # (B, H, T, T)
        att = att.masked_fill(~allowed, float("-inf"))
        att = self.attn_drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.out(y)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.GELU(),
            nn.Linear(cfg.d_ff, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.mlp(self.ln2(x)))


class Compressor(nn.Module):
    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.d_model
        self.item_emb = nn.Embedding(cfg.num_items, c, padding_idx=PAD)
        self.type_emb = nn.Embedding(cfg.num_event_types, c, padding_idx=PAD)
        self.dense_proj = nn.Linear(cfg.num_dense, c)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, c)  # +1 for BOS at position 0
        self.bos = nn.Parameter(torch.zeros(c))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(c)
        pooled = 2 * c if cfg.pooling == "last+mean" else c
        if cfg.pooling not in ("last", "last+mean"):
            raise ValueError(f"unknown pooling {cfg.pooling!r}")
        self.proj = nn.Linear(pooled, cfg.dim)
        # Output item table, scored by dot product against the vector.
        if cfg.tied_items:
            self.out_item_proj = nn.Linear(c, cfg.dim)
        else:
            self.out_item_emb = nn.Embedding(cfg.num_items, cfg.dim)
        self.exclude_scale = nn.Parameter(torch.zeros(())) if cfg.exclude_history else None
        self.exclude_proj = nn.Linear(cfg.dim, cfg.dim, bias=False) if cfg.exclude_history and cfg.exclude_map else None
        self.apply(self._init)
        if self.exclude_proj is not None:
            nn.init.zeros_(self.exclude_proj.weight)  # starts as the plain scaled exclusion

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def sequence_states(
        self, items: torch.Tensor, event_types: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Vectors of every prefix: (B, L+1, dim); position t summarises events 0..t-1."""
        b, n = items.shape  # (B, L)
        tok = self.item_emb(items) + self.type_emb(event_types) + self.dense_proj(dense)  # (B, L, C)
        tok = tok * mask.unsqueeze(-1).to(tok.dtype)  # padded positions carry nothing
        bos = self.bos.view(1, 1, -1).expand(b, 1, -1)
        x = torch.cat([bos, tok], dim=1)  # (B, T=L+1, C)
        t = n + 1
        x = x + self.pos_emb(torch.arange(t, device=x.device)).unsqueeze(0)
        x = self.drop(x)
        valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)  # (B, T)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T, T)
        # Causal and key-padding; every query still sees BOS, so no row is all -inf.
        allowed = causal.view(1, 1, t, t) & valid.view(b, 1, 1, t)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, allowed)
        h = self.ln_f(x)  # (B, T, C)
        if self.cfg.pooling == "last+mean":
            weights = valid.unsqueeze(-1).to(h.dtype)
            running = torch.cumsum(h * weights, dim=1) / torch.cumsum(weights, dim=1)  # causal mean
            h = torch.cat([h, running], dim=-1)
        out = self.proj(h)  # (B, T, dim)
        if self.exclude_scale is not None:
            known = (mask & (items >= NUM_RESERVED)).unsqueeze(-1).to(out.dtype)  # (B, L, 1)
            seen = torch.cumsum(self.item_table()[items] * known, dim=1)  # (B, L, dim) items 0..t
            seen = torch.cat([torch.zeros_like(seen[:, :1]), seen], dim=1)  # (B, T, dim) items before t
            out = out - F.softplus(self.exclude_scale) * seen
            if self.exclude_proj is not None:
                out = out - self.exclude_proj(seen)
        return out

    def forward(
        self, items: torch.Tensor, event_types: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The vector of each full history: (B, dim), taken at the last valid position."""
        states = self.sequence_states(items, event_types, dense, mask)  # (B, T, dim)
        last = mask.sum(dim=1)  # (B,) index of the last valid position (0 = BOS only)
        index = last.view(-1, 1, 1).expand(-1, 1, states.shape[-1])
        return states.gather(1, index).squeeze(1)

    def item_table(self) -> torch.Tensor:
        """(num_items, dim) scoring matrix; reserved rows are never recommended."""
        if self.cfg.tied_items:
            return self.out_item_proj(self.item_emb.weight)
        return self.out_item_emb.weight

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., num_items) scores; reserved indices get -inf."""
        scores = states @ self.item_table().t()
        reserved = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        reserved[[PAD, UNKNOWN]] = True
        return scores.masked_fill(reserved, float("-inf"))


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-item cross-entropy over target positions (target index < NUM_RESERVED = ignored)."""
    flat_targets = targets.reshape(-1).clone()
    flat_targets[flat_targets < NUM_RESERVED] = -100
    flat = logits.reshape(-1, logits.shape[-1])
    if label_smoothing:
        # Smoothing over real items only: reserved columns are -inf and would poison the loss.
        flat = flat[:, NUM_RESERVED:]
        flat_targets = torch.where(flat_targets >= 0, flat_targets - NUM_RESERVED, flat_targets)
    return F.cross_entropy(flat, flat_targets, ignore_index=-100, label_smoothing=label_smoothing)
