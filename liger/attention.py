"""LigerAttention: a pretrained attention layer turned into a gated recurrence plus a sliding window.

It reuses the layer's own q/k/v/o projections (and Qwen3's q/k norms) and adds no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from liger.cache import LigerCacheLayer, StepBuffers, flat_tensors, liger_cache_layer
from liger.ops import gated_recurrence, gated_slot_attention, sliding_window_attention, window_decode_step
from liger.options import LigerOptions


class PaddingContext:
    """Carries the 2D attention mask from the backbone's call to its Liger layers (set by a forward pre-hook)."""

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


def pool(x: torch.Tensor, width: int) -> torch.Tensor:
    """Adaptive average pooling of the flattened head dims of (B, T, h, d) to `width` features: (B, T, width)."""
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1)
    if flat.shape[-1] == width:
        return flat
    return F.adaptive_avg_pool1d(flat.reshape(B * T, 1, -1), width).reshape(B, T, width)


def repeat_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, Hkv, D) -> (B, T, Hkv * n, D), kv head j serving query heads j*n .. j*n+n-1 (as HF's repeat_kv)."""
    return x if n == 1 else x.repeat_interleave(n, dim=2)


class LigerAttention(nn.Module):
    """Drop-in replacement for a Llama-family attention module (same call signature and return)."""

    supports_step = True  # `step` (fixed-buffer decoding, liger.decode) implements this layer

    def __init__(self, attn: nn.Module, options: LigerOptions, padding: PaddingContext) -> None:
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

    def extra_repr(self) -> str:
        o = self.options
        return f"method={o.method}, hybrid={o.hybrid}, window={o.window}, alpha={o.alpha}, beta={o.beta}"

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
        cache = liger_cache_layer(past_key_values, self.layer_idx, self.options.window)

        opts = self.options
        out = None
        if opts.uses_recurrence:
            rec = self.recurrent(q, k, v, valid, cache)
            out = rec if opts.hybrid == "none" else opts.beta * rec
        if opts.uses_window:
            cos, sin = position_embeddings
            win = self.window_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, valid, cache)
            out = opts.alpha * win if out is None else out + opts.alpha * win
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

    def _gate_input(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return {"k": k, "q": q, "v": v}[self.options.gate_source]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.feature_map == "softmax":
            return x.float().softmax(dim=-1).to(x.dtype)
        return x

    def recurrent(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor | None,
        cache: LigerCacheLayer | None,
    ) -> torch.Tensor:
        """The gated recurrent branch on q and k before rotary; returns (B, T, H, d)."""
        state = cache.state if cache is not None else None
        o, new_state = self.recurrence(q, k, v, valid, state, want_state=cache is not None)
        if cache is not None:
            cache.state = new_state
        return o

    def recurrence(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor | None,
        state,
        want_state: bool,
        impl: str | None = None,
    ):
        """Gates, feature maps and the method's recurrence from `state`; returns (o (B, T, H, d), new state)."""
        opts = self.options
        impl = impl or opts.impl
        B, T = q.shape[:2]
        n_rep = self.num_heads // self.num_kv_heads
        if valid is not None:  # padded positions write nothing into the state
            v = v * valid[:, :, None, None].to(v.dtype)
        gate_in = self._gate_input(q, k, v)
        if opts.method == "liger_gsa":
            m = opts.num_slots
            g = F.logsigmoid(pool(gate_in.float(), self.num_kv_heads * m)).view(B, T, -1, m) / opts.gate_normalizer
            s = -torch.expm1(g)  # slot write strength 1 - exp(g)
            if valid is not None:
                s = s * valid[:, :, None, None]
            qf, kf = self._features(q), self._features(k)
            o, new_state = gated_slot_attention(
                qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), repeat_heads(s, n_rep).to(v.dtype),
                repeat_heads(g, n_rep), initial_state=state, output_final_state=want_state,
                impl=impl, chunk_size=opts.chunk_size,
            )
        else:
            logits = pool(gate_in.float(), self.num_kv_heads * self.head_dim).view(B, T, -1, self.head_dim)
            g = F.logsigmoid(logits) / opts.gate_normalizer
            qf = self._features(q)
            kf = (-torch.expm1(g)).to(k.dtype) if opts.method == "liger_hgrn2" else self._features(k)
            o, new_state = gated_recurrence(
                qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), gk=repeat_heads(g, n_rep),
                initial_state=state, output_final_state=want_state, impl=impl, chunk_size=opts.chunk_size,
            )
        return o.to(v.dtype), new_state

    def step(
        self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, buffers: StepBuffers
    ) -> torch.Tensor:
        """One decoding step (B, 1, hidden) from fixed-size buffers updated in place (see `liger.decode`).

        Same result as `forward` with a cache; no host synchronisation and no tensor kept that changes size,
        so a whole model step can be captured in a CUDA graph.
        """
        B = hidden_states.shape[0]
        q, k, v = self.project(hidden_states)
        opts = self.options
        out = None
        if opts.uses_recurrence:
            rec, new_state = self.recurrence(q, k, v, None, buffers.state, want_state=True, impl="recurrent")
            for dst, src in zip(flat_tensors(buffers.state), flat_tensors(new_state), strict=True):
                dst.copy_(src)
            out = rec if opts.hybrid == "none" else opts.beta * rec
        if opts.uses_window:
            win = window_decode_step(rotate(q, cos, sin), rotate(k, cos, sin), v, buffers.win_k, buffers.win_v,
                                     buffers.win_mask, buffers.slot, self.scaling)
            out = opts.alpha * win if out is None else out + opts.alpha * win
        return self.o_proj(out.reshape(B, 1, -1))

    def window_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor | None,
        cache: LigerCacheLayer | None,
    ) -> torch.Tensor:
        """Softmax attention over the last `window` tokens and itself, on rotary q and k; (B, T, H, d)."""
        w = self.options.window
        if cache is not None:
            k, v, key_mask = cache.extend_window(k, v, valid)
        else:
            key_mask = valid
        return sliding_window_attention(q, k, v, w, scale=self.scaling, key_mask=key_mask)
