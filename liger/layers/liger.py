"""The layers of the Liger methods (docs/method.md; declared in `liger.methods.liger`): the windowed hybrid with
a gated recurrence whose gates are pooled from the layer's own keys (or queries, or values). No new parameters.

GLA and HGRN2 run a gated linear recurrence over feature-mapped q and k (HGRN2's keys are 1 - its gates), GSA
gated slot attention; each is a subclass that supplies `gated`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from liger.layers.base import repeat_heads
from liger.layers.hybrid import WindowedHybrid
from liger.ops import gated_recurrence, gated_slot_attention


def pool(x: torch.Tensor, width: int) -> torch.Tensor:
    """Adaptive average pooling of the flattened head dims of (B, T, h, d) to `width` features: (B, T, width)."""
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1)
    if flat.shape[-1] == width:
        return flat
    return F.adaptive_avg_pool1d(flat.reshape(B * T, 1, -1), width).reshape(B, T, width)


class LigerAttention(WindowedHybrid):
    """The gated recurrence of a Liger layer; `gated` (per method) turns q, k, v and the gate input into it."""

    def _gate_input(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return {"k": k, "q": q, "v": v}[self.options.gate_source]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.feature_map == "softmax":
            return x.float().softmax(dim=-1).to(x.dtype)
        return x

    def recurrence(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, state: Any,
                   want_state: bool, impl: str | None = None) -> tuple[torch.Tensor, Any]:
        if valid is not None:  # padded positions write nothing into the state
            v = v * valid[:, :, None, None].to(v.dtype)
        gate_in = self._gate_input(q, k, v)
        o, new_state = self.gated(q, k, v, gate_in, valid, state, want_state, impl or self.options.impl)
        return o.to(v.dtype), new_state

    def gated(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate_in: torch.Tensor,
              valid: torch.Tensor | None, state: Any, want_state: bool, impl: str) -> tuple[torch.Tensor, Any]:
        """The method's gates, feature maps and recurrence (v already masked): (o, new state)."""
        raise NotImplementedError


class GLAAttention(LigerAttention):
    """Liger-GLA: a gated linear recurrence with per-key-dimension decays g = logsigmoid(Pool(k)) / normaliser."""

    def _keys(self, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self._features(k)

    def gated(self, q, k, v, gate_in, valid, state, want_state, impl):
        B, T = q.shape[:2]
        n_rep = self.n_rep
        logits = pool(gate_in.float(), self.num_kv_heads * self.head_dim).view(B, T, -1, self.head_dim)
        g = F.logsigmoid(logits) / self.options.gate_normalizer
        qf = self._features(q)
        kf = self._keys(k, g)
        return gated_recurrence(
            qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), gk=repeat_heads(g, n_rep), initial_state=state,
            output_final_state=want_state, impl=impl, chunk_size=self.options.chunk_size,
        )


class HGRN2Attention(GLAAttention):
    """Liger-HGRN2: GLA whose keys are 1 - exp(g), tied to the gates."""

    def _keys(self, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (-torch.expm1(g)).to(k.dtype)


class GSAAttention(LigerAttention):
    """Liger-GSA: gated slot attention over `num_slots` slots per head, write strength 1 - exp(g)."""

    def gated(self, q, k, v, gate_in, valid, state, want_state, impl):
        B, T = q.shape[:2]
        n_rep = self.n_rep
        opts = self.options
        m = opts.num_slots
        g = F.logsigmoid(pool(gate_in.float(), self.num_kv_heads * m)).view(B, T, -1, m) / opts.gate_normalizer
        s = -torch.expm1(g)  # slot write strength 1 - exp(g)
        if valid is not None:
            s = s * valid[:, :, None, None]
        qf, kf = self._features(q), self._features(k)
        return gated_slot_attention(
            qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), repeat_heads(s, n_rep).to(v.dtype),
            repeat_heads(g, n_rep), initial_state=state, output_final_state=want_state,
            impl=impl, chunk_size=opts.chunk_size,
        )
