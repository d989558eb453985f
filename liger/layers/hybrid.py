"""The windowed hybrid: a sliding-window softmax branch beside a recurrent branch, mixed (Liger Attention,
docs/method.md): alpha * window + beta * recurrence, or the recurrence alone with ``hybrid: none``.

A layer built on it supplies `recurrence` (its branch from a state) and decodes with a constant-size state: the
recurrent state plus the last ``window - 1`` rotary keys and values, in a cache (`forward`) or in fixed buffers
updated in place (`step`, for `liger.decode.GraphDecoder`).
"""

from __future__ import annotations

from typing import Any

import torch

from liger.cache import LigerCacheLayer, StepBuffers, flat_tensors
from liger.layers.base import LinearizedAttention, rotate
from liger.ops import sliding_window_attention, window_decode_step


class WindowedHybrid(LinearizedAttention):
    """Options it reads: hybrid, window, alpha, beta, and `uses_window` / `uses_recurrence` / `lookback`."""

    @property
    def cached_keys(self) -> int:
        return self.options.lookback

    def extra_repr(self) -> str:
        o = self.options
        return f"method={o.method}, hybrid={o.hybrid}, window={o.window}, alpha={o.alpha}, beta={o.beta}"

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            position_embeddings: tuple[torch.Tensor, torch.Tensor], valid: torch.Tensor | None,
            cache: LigerCacheLayer | None) -> torch.Tensor:
        opts = self.options
        out = None
        if opts.uses_recurrence:
            rec = self.recurrent(q, k, v, valid, cache)
            out = rec if opts.hybrid == "none" else opts.beta * rec
        if opts.uses_window:
            cos, sin = position_embeddings
            win = self.window_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, valid, cache)
            out = opts.alpha * win if out is None else out + opts.alpha * win
        return out

    def recurrence(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, state: Any,
                   want_state: bool, impl: str | None = None) -> tuple[torch.Tensor, Any]:
        """The recurrent branch on q and k before rotary, from `state`: (o (B, T, H, d) in v's dtype, new state or
        None unless `want_state`). `impl` (the layer's own when None) picks the recurrence's implementation."""
        raise NotImplementedError

    def recurrent(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                  cache: LigerCacheLayer | None) -> torch.Tensor:
        """The recurrent branch from the cache's state (updated), or from none; returns (B, T, H, d)."""
        state = cache.state if cache is not None else None
        o, new_state = self.recurrence(q, k, v, valid, state, want_state=cache is not None)
        if cache is not None:
            cache.state = new_state
        return o

    def window_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                         cache: LigerCacheLayer | None) -> torch.Tensor:
        """Softmax attention over the last `window` tokens, the query's own included, on rotary q and k."""
        if cache is not None:
            k, v, key_mask = cache.extend_window(k, v, valid)
        else:
            key_mask = valid
        return sliding_window_attention(q, k, v, self.options.lookback, scale=self.scaling, key_mask=key_mask)

    def step(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             buffers: StepBuffers) -> torch.Tensor:
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
