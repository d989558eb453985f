"""The LoLCATs layer (docs/lolcats.md; declared in `liger.methods.lolcats`): Hedgehog feature maps for q and k and a
window factor per head on the layer's own projections; its output is the hybrid of `liger.ops.hybrid` (a softmax
window and linear attention over older keys, one shared normaliser), over the rotated q and k.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from liger.cache import LigerCacheLayer
from liger.errors import LigerError
from liger.layers.base import LinearizedAttention, PaddingContext, repeat_heads, rotate
from liger.methods.lolcats import LolcatsOptions
from liger.ops.hybrid import absorb, hybrid_attention

FEATURE_EPS = 1e-12  # clamp of the Hedgehog features (LoLCATs' SoftmaxDim feature map)


class HedgehogFeatureMap(nn.Module):
    """phi(x) = max([softmax(x W_h), softmax(-x W_h)], 1e-12) per head h: (B, T, H, D) -> (B, T, H, 2F), fp32."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        u = torch.einsum("bthd,hdf->bthf", x.to(dt), self.weight.to(dt))
        return torch.cat([u.softmax(dim=-1), (-u).softmax(dim=-1)], dim=-1).clamp(min=FEATURE_EPS)

    def extra_repr(self) -> str:
        h, d, f = self.weight.shape
        return f"heads={h}, head_dim={d}, features=2x{f}"


@torch.no_grad()
def init_feature_maps(fq: HedgehogFeatureMap, fk: HedgehogFeatureMap, how: str) -> None:
    """identity: W_h = eye(D, F) for q and k (LoLCATs' zero_init_ without skip connection, as in its README runs);
    normal: N(0, 0.02) drawn for q and k independently (the re-run's Hugging Face init);
    kaiming: kaiming_uniform_ on the (H, D, F) tensor of q, k a copy of it (LoLCATs' constructor default)."""
    w = fq.weight
    if how == "identity":
        w.copy_(torch.eye(w.shape[1], w.shape[2], dtype=w.dtype, device=w.device).expand_as(w))
        fk.weight.copy_(w)
    elif how == "normal":
        w.normal_(0.0, 0.02)
        fk.weight.normal_(0.0, 0.02)
    else:
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        fk.weight.copy_(w)


class LolcatsAttention(LinearizedAttention):
    """The LoLCATs layer. Its decoding state: (S, z, start), with (S, z) over every key older than the next
    query's window and `start` (B,) each row's first real token, where its terraced blocks begin; and the latest
    keys and values (`cached_keys`).

    `transfer = True` (stage 1) computes the softmax teacher and the hybrid student, keeps their MSE in
    `transfer_mse` and returns the teacher's output, so every layer sees the original hidden states.
    """

    def __init__(self, attn: nn.Module, options: LolcatsOptions, padding: PaddingContext) -> None:
        super().__init__(attn, options, padding)
        H, D = self.num_heads, self.head_dim
        f = options.features(D)
        device = attn.q_proj.weight.device
        self.feature_map_q = HedgehogFeatureMap(H, D, f, device=device)
        self.feature_map_k = HedgehogFeatureMap(H, D, f, device=device)
        self.window_factors = nn.Parameter(torch.full((H,), float(options.init_window_factor), device=device,
                                                      dtype=torch.float32))
        if device.type != "meta":
            init_feature_maps(self.feature_map_q, self.feature_map_k, options.feature_init)

    def extra_repr(self) -> str:
        o = self.options
        return f"lolcats {o.variant}, window={o.window} ({o.window_shape}), eps={o.eps}"

    @property
    def cached_keys(self) -> int:
        """Sliding: the last `window` keys; terraced: the previous block and the current one before the query."""
        w = self.options.window
        return 2 * w - 1 if self.options.window_shape == "terraced" else w

    @staticmethod
    def first_real(valid: torch.Tensor | None, n: int, T: int) -> torch.Tensor | int:
        """Where the terraced blocks begin, from `T` tokens at positions n .. n + T - 1 of validity `valid` (B, T):
        (B,) each row's first real token among them, or n + T if it has none (a later one starts the blocks then,
        see `continued`); n when nothing is padded."""
        if valid is None:
            return n
        return n + torch.where(valid.any(dim=1), valid.long().argmax(dim=1), T)

    def _state_start(self, n: int, start: torch.Tensor) -> torch.Tensor:
        """(B,) the first key not folded into (S, z) when the next query is at position `n`: every key before it is
        in the linear set of every query from `n` on. Sliding: n - window (the key that just left the window is
        folded one step late, so `window` keys are kept); terraced: the first key of the previous block, with blocks
        counted from `start` (<= n)."""
        w = self.options.window
        if self.options.window_shape == "terraced":
            return (start + ((n - start) // w - 1) * w).clamp(min=0)
        return torch.full_like(start, max(0, n - w))

    def transfer_parameters(self) -> list[nn.Parameter]:
        """The feature maps, and the window factors when the options train them."""
        extra = [self.window_factors] if self.options.train_window_factor else []
        return [self.feature_map_q.weight, self.feature_map_k.weight, *extra]

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            position_embeddings: tuple[torch.Tensor, torch.Tensor], valid: torch.Tensor | None,
            cache: LigerCacheLayer | None) -> torch.Tensor:
        cos, sin = position_embeddings
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # the feature maps act on the rotated q and k
        if self.transfer:
            y = self.attention_transfer(q, k, v, valid)
        elif cache is None or cache.seen == 0:
            y = self.parallel(q, k, v, valid, cache)
        else:
            y = self.continued(q, k, v, valid, cache)
        return y.to(v.dtype)

    def _kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values expanded to the query heads (before the feature map, as LoLCATs does) and phi_k(k)."""
        k, v = repeat_heads(k, self.n_rep), repeat_heads(v, self.n_rep)
        return k, v, self.feature_map_k(k)

    def _hybrid(self, q, k, v, fq, fk, qpos, kpos, key_mask, state, start) -> torch.Tensor:
        o = self.options
        return hybrid_attention(q, k, v, fq, fk, torch.sigmoid(self.window_factors), window=o.window, qpos=qpos,
                                kpos=kpos, shape=o.window_shape, start=start, scale=self.scaling, eps=o.eps,
                                key_mask=key_mask, state=state)

    def parallel(self, q, k, v, valid, cache: LigerCacheLayer | None) -> torch.Tensor:
        """The hybrid over a whole sequence (no earlier state), in query blocks of `query_block`, the terraced
        blocks cut from each row's first real token; then, with a cache, its decoding state at the end."""
        o = self.options
        B, T = q.shape[:2]
        kr, vr, fk = self._kv(k, v)
        fq = self.feature_map_q(q)
        pos = torch.arange(T, device=q.device)
        start = self.first_real(valid, 0, T)
        outs, state, absorbed = [], None, 0
        for s in range(0, T, o.query_block):
            e = min(T, s + o.query_block)
            first = max(0, s - 2 * o.window)  # every key before it is in L(p) of every query p >= s (both shapes)
            if first > absorbed:
                mask = valid[:, absorbed:first] if valid is not None else None
                state = absorb(state, fk[:, absorbed:first], vr[:, absorbed:first], mask)
                absorbed = first
            outs.append(self._hybrid(q[:, s:e], kr[:, first:e], vr[:, first:e], fq[:, s:e], fk[:, first:e],
                                     pos[s:e], pos[first:e], valid[:, first:e] if valid is not None else None,
                                     state, start))
        if cache is not None:
            start = torch.as_tensor(start, device=q.device).expand(B).clone()
            cache.extend_window(k, v, valid)
            # the loop's state holds the keys before `absorbed` (<= every row's state start): fold the rest
            fold = pos[absorbed:] < self._state_start(T, start)[:, None]
            if valid is not None:
                fold = fold & valid[:, absorbed:]
            S, z = absorb(state, fk[:, absorbed:], vr[:, absorbed:], fold)
            cache.state = (S, z, start)
        return torch.cat(outs, dim=1)

    def continued(self, q, k, v, valid, cache: LigerCacheLayer) -> torch.Tensor:
        """New tokens after a cached prefix, `query_block` at a time: the hybrid over the kept keys not yet in
        (S, z) and the new ones, plus (S, z); then the keys that left every later window are folded into (S, z).
        The terraced blocks continue those of the first forward, so the outputs are the parallel forward's."""
        o = self.options
        S, z, start = cache.state
        outs = []
        for s in range(0, q.shape[1], o.query_block):
            e = min(q.shape[1], s + o.query_block)
            n, t = cache.seen + s, e - s  # the position of the first new token, and the new tokens
            chunk = valid[:, s:e] if valid is not None else None
            keys, values, mask = cache.extend_window(k[:, s:e], v[:, s:e], chunk)
            start = torch.where(start < n, start, self.first_real(chunk, n, t))  # rows with no real token before n
            kpos = torch.arange(n + t - keys.shape[1], n + t, device=q.device)
            lo, hi = self._state_start(n, start), self._state_start(n + t, start)
            kr, vr, fk = self._kv(keys, values)
            mask = mask & (kpos >= lo[:, None])  # the kept keys before `lo` are in (S, z) already
            outs.append(self._hybrid(q[:, s:e], kr, vr, self.feature_map_q(q[:, s:e]), fk, kpos[-t:], kpos, mask,
                                     (S, z), start))
            S, z = absorb((S, z), fk, vr, mask & (kpos < hi[:, None]))
        cache.state = (S, z, start)
        return torch.cat(outs, dim=1)

    def attention_transfer(self, q, k, v, valid) -> torch.Tensor:
        """Stage 1: the MSE between the hybrid's and softmax attention's head outputs; returns softmax's."""
        if valid is not None:
            raise LigerError("attention transfer takes unpadded sequences (the packed training chunks)")
        n_rep = self.n_rep
        with torch.no_grad():
            teacher = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), repeat_heads(k, n_rep).transpose(1, 2), repeat_heads(v, n_rep).transpose(1, 2),
                is_causal=True, scale=self.scaling,
            ).transpose(1, 2)
        student = self.parallel(q, k, v, None, None)
        self.transfer_mse = nn.functional.mse_loss(student, teacher.to(student.dtype))
        return teacher
