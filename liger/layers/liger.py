"""The layers of the Liger methods (docs/method.md; declared in `liger.methods.liger`): the windowed hybrid with
a gated recurrence whose gates are pooled from the layer's own keys (or queries, or values). No new parameters by
default; the ablation options `gate: projection` (`GateProjection`) and `feature_map: learnable` (`HeadMaps`)
add some (docs/method.md#ablation-options), made at conversion in the model's dtype and trained with LoRA
(`finetune_parameters`).

GLA and HGRN2 run a gated linear recurrence over feature-mapped q and k (HGRN2's keys are 1 - its gates), GSA
gated slot attention; each is a subclass that supplies `gated`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from liger.layers.base import PaddingContext, repeat_heads, rotate
from liger.layers.hybrid import WindowedHybrid
from liger.methods.liger import GATE_RANK, LigerOptions, gate_width
from liger.ops import gated_recurrence, gated_slot_attention
from liger.ops.fused_step import gla_step

GATE_SEED = 0  # layer i's gate projection is drawn from torch.Generator().manual_seed(GATE_SEED + i)
GATE_GAIN = 2 ** -2.5  # xavier-uniform gain of the gate projection's two factors (GLA's init of its projections)


def pool(x: torch.Tensor, width: int) -> torch.Tensor:
    """Adaptive average pooling of the flattened head dims of (B, T, h, d) to `width` features: (B, T, width)."""
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1)
    if flat.shape[-1] == width:
        return flat
    return F.adaptive_avg_pool1d(flat.reshape(B * T, 1, -1), width).reshape(B, T, width)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (the references), else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class GateProjection(nn.Module):
    """`gate: projection`: gate logits x W1 W2 + b, (B, T, hidden) -> (B, T, width), W1 (hidden, r), W2 (r, width).

    Initialised by `reset` from a seed: W1 and W2 xavier-uniform with gain 2^-2.5, b = 0 (the logits start near
    0, a decay near exp(logsigmoid(0) / c) at every position)."""

    def __init__(self, hidden: int, rank: int, width: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(hidden, rank, dtype=dtype, device=device))
        self.up = nn.Parameter(torch.empty(rank, width, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(width, dtype=dtype, device=device))

    @torch.no_grad()
    def reset(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for w in (self.down, self.up):
            bound = GATE_GAIN * math.sqrt(6.0 / sum(w.shape))
            w.copy_((torch.rand(w.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.to(x.dtype)) @ self.up.to(x.dtype) + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        (hidden, rank), width = self.down.shape, self.up.shape[1]
        return f"hidden={hidden}, rank={rank}, width={width}"


class HeadMaps(nn.Module):
    """`feature_map: learnable`: a d x d map per head, x_h -> x_h W_h on (B, T, heads, d), identity at the start
    (so a converted model computes exactly the softmax feature map until training moves it)."""

    def __init__(self, heads: int, dim: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, dim, dim, dtype=dtype, device=device))

    @torch.no_grad()
    def reset(self) -> None:
        self.weight.copy_(torch.eye(self.weight.shape[1], dtype=self.weight.dtype).expand_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bthd,hde->bthe", x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        h, d, _ = self.weight.shape
        return f"heads={h}, dim={d}"


class LigerAttention(WindowedHybrid):
    """The gated recurrence of a Liger layer; `gated` (per method) turns q, k, v and the gate input into it.

    With `gate: projection`, `project` also computes the gate logits from the layer input and keeps them for
    the `recurrence` of the same call (forward or `step`), which takes them."""

    def __init__(self, attn: nn.Module, options: LigerOptions, padding: PaddingContext) -> None:
        super().__init__(attn, options, padding)
        weight = attn.q_proj.weight
        kw = dict(dtype=weight.dtype, device=weight.device)
        init = weight.device.type != "meta"  # from_pretrained builds on meta, then loads the saved values
        self.gk_proj = self.feature_map_q = self.feature_map_k = None
        self._gate_logits: torch.Tensor | None = None
        if options.gate == "projection":
            self.gk_proj = GateProjection(self.config.hidden_size, GATE_RANK, gate_width(self.config, options), **kw)
            if init:
                self.gk_proj.reset(GATE_SEED + self.layer_idx)
        if options.feature_map == "learnable":
            self.feature_map_q = HeadMaps(self.num_heads, self.head_dim, **kw)
            if options.maps_keys:
                self.feature_map_k = HeadMaps(self.num_kv_heads, self.head_dim, **kw)
            for maps in (self.feature_map_q, self.feature_map_k):
                if maps is not None and init:
                    maps.reset()

    def finetune_parameters(self) -> list[nn.Parameter]:
        """The parameters this layer adds, which the LoRA stage trains beside LoRA (none by default)."""
        return [p for m in (self.gk_proj, self.feature_map_q, self.feature_map_k) if m is not None
                for p in m.parameters()]

    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project(hidden_states)
        if self.gk_proj is not None:
            self._gate_logits = self.gk_proj(hidden_states)
        return q, k, v

    def gate_input(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """What `gated` pools into the gate logits (None: no gate); with `gate: projection`, the logits `project`
        kept, handed over once."""
        gate = self.options.gate
        if gate == "none":
            return None
        if gate == "projection":
            logits, self._gate_logits = self._gate_logits, None
            if logits is None:
                raise RuntimeError("gate=projection: project() computes the gate logits before recurrence()")
            return logits
        return {"k": k, "q": q, "v": v}[self.options.gate_source]

    def _features(self, x: torch.Tensor, maps: HeadMaps | None = None) -> torch.Tensor:
        """The feature map of q or k (`maps`: their learnable per-head maps), in x's dtype."""
        fm = self.options.feature_map
        if fm == "none":
            return x
        dt = _compute_dtype(x)
        y = x.to(dt) if fm == "softmax" else maps(x.to(dt))
        return y.softmax(dim=-1).to(x.dtype)

    def recurrence(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, state: Any,
                   want_state: bool, impl: str | None = None) -> tuple[torch.Tensor, Any]:
        if valid is not None:  # padded positions write nothing into the state
            v = v * valid[:, :, None, None].to(v.dtype)
        gate_in = self.gate_input(q, k, v)
        o, new_state = self.gated(q, k, v, gate_in, valid, state, want_state, impl or self.options.impl)
        return o.to(v.dtype), new_state

    def gated(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate_in: torch.Tensor | None,
              valid: torch.Tensor | None, state: Any, want_state: bool, impl: str) -> tuple[torch.Tensor, Any]:
        """The method's gates, feature maps and recurrence (v already masked): (o, new state)."""
        raise NotImplementedError


class GLAAttention(LigerAttention):
    """Liger-GLA: a gated linear recurrence with per-key-dimension decays g = logsigmoid(Pool(k)) / normaliser
    (`gate: none`: no decay, gk None, which every implementation reads as a log-gate of 0).

    With buffers marked `fused` (`GraphDecoder(fused=True)`, only where `fusable`), `step` runs in one kernel
    (`liger.ops.fused_step`)."""

    @property
    def fusable(self) -> bool:
        """Whether `liger.ops.fused_step` computes this layer's step: the default Liger-GLA layer (gate pooled from
        k, which is then the keys themselves; softmax feature maps), not HGRN2's or an ablation's."""
        o = self.options
        return type(self) is GLAAttention and (o.gate, o.gate_source, o.feature_map) == ("pooled", "k", "softmax")

    def step(self, hidden_states, cos, sin, buffers):
        if not buffers.fused:
            return super().step(hidden_states, cos, sin, buffers)
        B = hidden_states.shape[0]
        q, k, v = self.project(hidden_states)
        o = self.options
        out = gla_step(q, k, v, rotate(q, cos, sin), rotate(k, cos, sin), buffers, scale=self.scaling,
                       gate_normalizer=o.gate_normalizer, alpha=o.alpha, beta=o.beta, use_recurrence=o.uses_recurrence,
                       use_window=o.uses_window, scale_recurrence=o.hybrid != "none")
        return self.o_proj(out.reshape(B, 1, -1))

    def recurrence_keys(self, k: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """The keys the recurrence writes with, (B, T, kv heads, head_dim) in k's dtype, from k and the log decays
        `g` (`liger gates` weighs the decays by them too)."""
        return self._features(k, self.feature_map_k)

    def log_decay(self, gate_in: torch.Tensor | None) -> torch.Tensor | None:
        """The per-key-dimension log decays g = logsigmoid(Pool(gate_in)) / normaliser, (B, T, kv heads, head_dim),
        from what `gate_input` gave (None: no gate, no decay)."""
        if gate_in is None:
            return None
        B, T = gate_in.shape[:2]
        logits = pool(gate_in.to(_compute_dtype(gate_in)), self.num_kv_heads * self.head_dim)
        return F.logsigmoid(logits.view(B, T, -1, self.head_dim)) / self.options.gate_normalizer

    def gated(self, q, k, v, gate_in, valid, state, want_state, impl):
        n_rep = self.n_rep
        g = self.log_decay(gate_in)
        qf = self._features(q, self.feature_map_q)
        kf = self.recurrence_keys(k, g)
        return gated_recurrence(
            qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), gk=None if g is None else repeat_heads(g, n_rep),
            initial_state=state, output_final_state=want_state, impl=impl, chunk_size=self.options.chunk_size,
        )


class HGRN2Attention(GLAAttention):
    """Liger-HGRN2: GLA whose keys are 1 - exp(g), tied to the gates."""

    def recurrence_keys(self, k: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        return (-torch.expm1(g)).to(k.dtype)


class GSAAttention(LigerAttention):
    """Liger-GSA: gated slot attention over `num_slots` slots per head, write strength 1 - exp(g)."""

    def gated(self, q, k, v, gate_in, valid, state, want_state, impl):
        B, T = q.shape[:2]
        n_rep = self.n_rep
        opts = self.options
        m = opts.num_slots
        logits = pool(gate_in.to(_compute_dtype(gate_in)), self.num_kv_heads * m)
        g = F.logsigmoid(logits).view(B, T, -1, m) / opts.gate_normalizer
        s = -torch.expm1(g)  # slot write strength 1 - exp(g)
        if valid is not None:
            s = s * valid[:, :, None, None]
        qf, kf = self._features(q, self.feature_map_q), self._features(k, self.feature_map_k)
        return gated_slot_attention(
            qf, repeat_heads(kf, n_rep), repeat_heads(v, n_rep), repeat_heads(s, n_rep).to(v.dtype),
            repeat_heads(g, n_rep), initial_state=state, output_final_state=want_state,
            impl=impl, chunk_size=opts.chunk_size,
        )
