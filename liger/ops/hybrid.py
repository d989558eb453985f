"""The LoLCATs hybrid: softmax over a window of keys plus linear attention over the older keys, one normaliser.

docs/lolcats.md#the-hybrid-layer. For query position p (head h), with s_pj = q_p.k_j * scale:

    y_p = (sum_{j in W(p)} a_pj v_j + sum_{j in L(p)} b_pj v_j) / (sum_W a_pj + sum_L b_pj + eps)
    a_pj = gamma_h exp(s_pj - m_p),  m_p = max_{j in W(p)} s_pj,   b_pj = phi_q(q_p) . phi_k(k_j)

The linear terms are not shifted by m_p (that is the method, not a numerical detail). Window sets:

- ``sliding``: W(p) = {p - window + 1 .. p} (``window`` keys, the query's own included), L(p) = {j <= p - window}.
- ``terraced`` (the original code's main results): positions are cut into blocks of ``window`` from ``start``,
  the sequence's first real token (``block(x) = (x - start) // window``); W(p) = the previous block and the current
  block up to p, L(p) = everything before the previous block. `start` may be one per sequence (a (B,) tensor), so
  that left-padded rows count from their own first token. Cut from the start, a position's sets do not depend on
  the tokens after it (LoLCATs' code cuts from the end of the sequence).

Keys are given by absolute position; a state (S, z) = (sum phi_k(k_j) v_j^T, sum phi_k(k_j)) over keys before the
first given key adds their linear terms (the caller guarantees that they are in every query's L(p)).
Layout (B, T, H, D) for q, k, v (k and v already expanded to the H query heads), (B, T, H, F) for the features.
"""

from __future__ import annotations

import torch
from torch import Tensor


def window_mask(qpos: Tensor, kpos: Tensor, window: int, shape: str, start: int | Tensor = 0) -> tuple[Tensor, Tensor]:
    """(Tq, Tk) bool masks of the window set and the linear set for queries at `qpos` and keys at `kpos`;
    (B, Tq, Tk) when the terraced blocks' `start` is a (B,) tensor (one per sequence)."""
    causal = kpos[None, :] <= qpos[:, None]
    if shape == "sliding":
        win = kpos[None, :] > qpos[:, None] - window
    elif shape == "terraced":
        if isinstance(start, Tensor):
            start = start[:, None, None]
            causal = causal[None]
        win = (kpos[None, :] - start) // window >= (qpos[:, None] - start) // window - 1
    else:
        raise ValueError(f"unknown window shape {shape!r}; expected sliding or terraced")
    return causal & win, causal & ~win


def hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    gamma: Tensor,
    *,
    window: int,
    qpos: Tensor,
    kpos: Tensor,
    shape: str = "sliding",
    start: int | Tensor = 0,
    scale: float,
    eps: float = 0.0,
    key_mask: Tensor | None = None,
    state: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The hybrid of the module docstring; returns (B, Tq, H, D) in fp32 (fp64 for fp64 inputs). Differentiable.

    gamma: (H,) window factors (already through the sigmoid). key_mask: (B, Tk) bool, False keys are left out of
    both sets. A query that sees no key at all outputs zeros.
    """
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, fq, fk, gamma = (t.to(dt) for t in (q, k, v, fq, fk, gamma))
    win, lin = window_mask(qpos, kpos, window, shape, start)
    win, lin = (win[None, None], lin[None, None]) if win.dim() == 2 else (win[:, None], lin[:, None])  # (B|1,1,Tq,Tk)
    if key_mask is not None:
        km = key_mask.to(torch.bool)[:, None, None, :]
        win, lin = win & km, lin & km
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = s.masked_fill(~win, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    # m is part of the function (the linear terms are not shifted), so gradients flow through it
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    a = gamma[None, :, None, None] * torch.exp(s - m)  # exactly 0 outside the window
    b = torch.einsum("bqhf,bkhf->bhqk", fq, fk) * lin.to(dt)
    weights = a + b
    num = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    den = weights.sum(dim=-1).transpose(1, 2)  # (B, Tq, H)
    if state is not None:
        S, z = state
        num = num + torch.einsum("bqhf,bhfd->bqhd", fq, S.to(dt))
        den = den + torch.einsum("bqhf,bhf->bqh", fq, z.to(dt))
    den = den + eps
    return num / torch.where(den == 0, torch.ones_like(den), den)[..., None]


def absorb(state: tuple[Tensor, Tensor] | None, fk: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The state plus keys that left every future window: S += sum_j phi_k(k_j) v_j^T, z += sum_j phi_k(k_j).

    fk (B, T, H, F), v (B, T, H, D), mask (B, T) bool or None; the state is kept in fp32 (fp64 for fp64 input).
    """
    dt = torch.float64 if fk.dtype == torch.float64 else torch.float32
    fk, v = fk.to(dt), v.to(dt)
    if mask is not None:
        fk = fk * mask.to(dt)[:, :, None, None]
    S = torch.einsum("bthf,bthd->bhfd", fk, v)
    z = fk.sum(dim=1)
    if state is not None:
        S, z = state[0] + S, state[1] + z
    return S, z
