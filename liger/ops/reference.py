"""Float64 step-by-step references for the ops in :mod:`liger.ops` (tests only).

Written to be obviously correct, not fast: python loops over time for the recurrences and an explicit
masked score matrix for the window. Layout is (batch, time, heads, dim) everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _f64(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.to(torch.float64)


def naive_gated_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor | None = None,
    gv: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t^T v_t ; o_t = q_t S_t (scale 1), in float64.

    Returns (o (B,T,H,V) float64, final state (B,H,K,V) float64 or None).
    """
    q, k, v, gk, gv, h0 = (_f64(x) for x in (q, k, v, gk, gv, initial_state))
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=torch.float64, device=q.device)
    if h0 is not None:
        S = S + h0
    outs = []
    for t in range(T):
        if gk is not None:
            S = torch.exp(gk[:, t])[..., :, None] * S  # decay rows (key dim)
        if gv is not None:
            S = S * torch.exp(gv[:, t])[..., None, :]  # decay columns (value dim)
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]  # outer product k_t^T v_t
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return o, (S if output_final_state else None)


def naive_gated_slot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    *,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Gated slot attention (scale 1), float64, one python step per token.

    hk_t = hk_{t-1} * exp(g_t)[None, :] + k_t^T s_t ; p_t = softmax(q_t hk_t)
    hv_t = diag(exp(g_t)) hv_{t-1} + s_t^T v_t ; o_t = p_t hv_t
    """
    q, k, v, s, g = (_f64(x) for x in (q, k, v, s, g))
    B, T, H, K = q.shape
    V, M = v.shape[-1], s.shape[-1]
    hk = torch.zeros(B, H, K, M, dtype=torch.float64, device=q.device)
    hv = torch.zeros(B, H, M, V, dtype=torch.float64, device=q.device)
    if initial_state is not None:
        hk = hk + _f64(initial_state[0])
        hv = hv + _f64(initial_state[1])
    outs = []
    for t in range(T):
        decay = torch.exp(g[:, t])  # (B,H,M)
        hk = hk * decay[..., None, :] + k[:, t, :, :, None] * s[:, t, :, None, :]
        p = torch.softmax(torch.einsum("bhk,bhkm->bhm", q[:, t], hk), dim=-1)
        hv = decay[..., :, None] * hv + s[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhm,bhmv->bhv", p, hv))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return o, ((hk, hv) if output_final_state else None)


def naive_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    *,
    scale: float | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Causal sliding-window softmax attention in float64 with a full (Tq, Tk) mask.

    Query i sits at absolute position Tk - Tq + i and sees keys j with p - window <= j <= p (window None: all
    j <= p) where key_mask[b, j] is True. Query head h uses kv head h // (H // Hkv). Rows with no visible key
    give zeros. Returns float64 (B, Tq, H, Dv).
    """
    q, k, v = (_f64(x) for x in (q, k, v))
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    group = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    qpos = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    kpos = torch.arange(Tk, device=q.device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed = allowed & (kpos >= qpos - window)
    allowed = allowed[None, None].expand(B, H, Tq, Tk)  # (B,H,Tq,Tk)
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool)[:, None, None, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(torch.where(has_key, scores, torch.zeros_like(scores)), dim=-1)
    probs = torch.where(has_key, probs, torch.zeros_like(probs))
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)
