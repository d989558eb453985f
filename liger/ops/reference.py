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
    lookback: int | None,
    *,
    scale: float | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Causal sliding-window softmax attention in float64 with a full (Tq, Tk) mask.

    Query i sits at absolute position Tk - Tq + i and sees keys j with p - lookback <= j <= p (lookback None:
    all j <= p) where key_mask[b, j] is True. Query head h uses kv head h // (H // Hkv). Rows with no visible key
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
    if lookback is not None:
        allowed = allowed & (kpos >= qpos - lookback)
    allowed = allowed[None, None].expand(B, H, Tq, Tk)  # (B,H,Tq,Tk)
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool)[:, None, None, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(torch.where(has_key, scores, torch.zeros_like(scores)), dim=-1)
    probs = torch.where(has_key, probs, torch.zeros_like(probs))
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def naive_hedgehog(x: Tensor, weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Hedgehog features in float64, one head at a time: u = x_h W_h, [softmax(u), softmax(-u)] clamped at eps.

    x: (B, T, H, D), weight: (H, D, F); returns (B, T, H, 2F).
    """
    x, weight = _f64(x), _f64(weight)
    heads = []
    for h in range(x.shape[2]):
        u = x[:, :, h] @ weight[h]
        heads.append(torch.cat([torch.softmax(u, dim=-1), torch.softmax(-u, dim=-1)], dim=-1).clamp(min=eps))
    return torch.stack(heads, dim=2)


def lolcats_sets(length: int, window: int, shape: str) -> list[tuple[list[int], list[int]]]:
    """For each query i of a sequence of `length`: (window set W(i), linear set L(i)) as lists
    (docs/lolcats.md#windows-terraced-and-sliding). Terraced blocks are cut from the start: block(j) = j // window."""
    sets = []
    for i in range(length):
        if shape == "sliding":
            win = [j for j in range(i + 1) if j > i - window]
        else:
            win = [j for j in range(i + 1) if j // window >= i // window - 1]
        sets.append((win, [j for j in range(i + 1) if j not in win]))
    return sets


def naive_lolcats_attention(
    q: Tensor, k: Tensor, v: Tensor, fq: Tensor, fk: Tensor, gamma: Tensor, window: int, shape: str = "sliding", *,
    scale: float | None = None,
    eps: float = 0.0,
) -> Tensor:
    """The LoLCATs hybrid in float64, term by term for every (batch, head, query) (docs/lolcats.md#the-hybrid-layer).

    q, k, v: (B, T, H, D) with k and v already expanded to the query heads; fq, fk: (B, T, H, F); gamma: (H,).
    y_i = (sum_W gamma exp(s_ij - m_i) v_j + sum_L fq_i.fk_j v_j) / (sum_W gamma exp(s_ij - m_i) + sum_L fq_i.fk_j
    + eps) with s_ij = q_i.k_j * scale and m_i the largest s_ij over the window set.
    """
    q, k, v, fq, fk, gamma = (_f64(x) for x in (q, k, v, fq, fk, gamma))
    B, T, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64, device=q.device)
    for i, (win, lin) in enumerate(lolcats_sets(T, window, shape)):
        for b in range(B):
            for h in range(H):
                s = {j: float(q[b, i, h] @ k[b, j, h]) * scale for j in win}
                m = max(s.values())
                num = torch.zeros(v.shape[-1], dtype=torch.float64, device=q.device)
                den = 0.0
                for j in win:
                    a = float(gamma[h]) * math.exp(s[j] - m)
                    num, den = num + a * v[b, j, h], den + a
                for j in lin:
                    w = float(fq[b, i, h] @ fk[b, j, h])
                    num, den = num + w * v[b, j, h], den + w
                out[b, i, h] = num / (den + eps)
    return out
