"""The plumbing every converted attention layer shares: the pretrained q/k/v/o projections (and Qwen3's q/k
norms), grouped-query heads, rotary embedding, the padding of the batch, and the layer's decoding state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from liger.cache import LigerCacheLayer, StepBuffers, liger_cache_layer


class PaddingContext:
    """Carries the 2D attention mask from the backbone's call to its converted layers (set by a forward pre-hook)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def token_mask(self, length: int) -> torch.Tensor | None:
        """Validity of the current `length` tokens, (B, length) bool, or None when nothing is padded."""
        if self.mask is None:
            return None
        mask = self.mask[:, -length:].bool()
        return None if bool(mask.all()) else mask


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (B, T, H, D) with cos/sin of shape (B, T, D) (the Llama-family convention)."""
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def repeat_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, Hkv, D) -> (B, T, Hkv * n, D), kv head j serving query heads j*n .. j*n+n-1 (as HF's repeat_kv)."""
    return x if n == 1 else x.repeat_interleave(n, dim=2)


class LinearizedAttention(nn.Module):
    """Base of every converted layer: a drop-in replacement for a Llama-family attention module (same call
    signature and return) on the module's own projections. `isinstance(m, LinearizedAttention)` tells converted
    layers from softmax ones.

    `forward` projects q, k, v (B, T, heads, head_dim; before rotary), finds the padding and this layer's decoding
    state, and gives them to the method's `mix`, whose (B, T, H, head_dim) output goes through o_proj. A method
    with an attention-transfer stage trains `transfer_parameters()`: while `transfer` is set its layer keeps the
    MSE between its output and softmax attention's in `transfer_mse` and returns softmax's.
    """

    def __init__(self, attn: nn.Module, options: Any, padding: PaddingContext) -> None:
        super().__init__()
        config = attn.config
        self.config = config
        self.layer_idx = attn.layer_idx
        self.options = options
        self.padding = padding
        self.head_dim = attn.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = attn.scaling
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.q_norm = getattr(attn, "q_norm", None)  # Qwen3 normalises q and k per head before rotary
        self.k_norm = getattr(attn, "k_norm", None)
        self.transfer = False
        self.transfer_mse: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"method={self.options.method}"

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def cached_keys(self) -> int:
        """How many of the latest keys and values the decoding state keeps (beside the method's own state)."""
        raise NotImplementedError

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        valid = self.padding.token_mask(T)
        cache = liger_cache_layer(past_key_values, self.layer_idx, self.cached_keys)
        out = self.mix(q, k, v, position_embeddings, valid, cache)
        if cache is not None:
            cache.seen += T
        return self.o_proj(out.reshape(B, T, -1)), None

    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of shape (B, T, heads, head_dim), before rotary (Qwen3's q/k norms applied)."""
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        valid: torch.Tensor | None,
        cache: LigerCacheLayer | None,
    ) -> torch.Tensor:
        """The method's sequence mixing: (B, T, H, head_dim) in v's dtype from q, k, v before rotary, the rotary
        (cos, sin), the valid tokens (B, T) bool or None, and the decoding state (None: no cache); it updates the
        state but not `cache.seen`."""
        raise NotImplementedError

    def step(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             buffers: StepBuffers) -> torch.Tensor:
        """One decoding step from fixed-size buffers updated in place (methods whose `step_decoding` is true)."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-buffer decoding step")

    def transfer_parameters(self) -> list[nn.Parameter]:
        """The parameters attention transfer trains (none: the method has no transfer stage)."""
        return []
