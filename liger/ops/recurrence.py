"""Gated linear recurrences (GLA form) and gated slot attention, in PyTorch with an fla dispatch on CUDA.

Layout (batch, time, heads, dim) everywhere. Semantics, scale 1 (callers pre-scale q):

    S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t^T v_t ,   o_t = q_t S_t

with S (B, H, K, V), log decays gk (B,T,H,K) and gv (B,T,H,V) (<= 0), either of which may be None.

The chunked PyTorch path never multiplies by exp(+cumulative decay): inside a chunk it uses the cumulative
log decays G (inclusive prefix sums over the chunk) only through exp(G_t - G_s) for t >= s (masked pairwise
differences), exp(G_t) (the read of the carried state) and exp(G_last - G_s) (the state update), all of which
have non-positive exponents, so decays of exp(-20) per step underflow harmlessly to 0 instead of overflowing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liger.ops._fla import fla_gated_recurrence, fla_gated_slot_attention, fla_usable

IMPLS = ("auto", "recurrent", "chunk", "fla")
# "auto" takes the step-by-step loop for up to this many tokens (decoding), the chunked path above it.
RECURRENT_MAX_T = 4
_FLA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _compute_dtype(*xs: Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (tests, gradcheck), else float32."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def _resolve(impl: str, *xs: Tensor | None) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl != "auto":
        return impl
    ts = [x for x in xs if x is not None]
    if fla_usable(*ts) and all(x.dtype in _FLA_DTYPES for x in ts):
        return "fla"
    return "recurrent" if ts[0].shape[1] <= RECURRENT_MAX_T else "chunk"


def _check(q: Tensor, k: Tensor, v: Tensor, gk: Tensor | None, gv: Tensor | None, h0: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k (B,T,H,K) and v (B,T,H,V); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if gk is not None and gk.shape != k.shape:
        raise ValueError(f"gk must have k's shape {tuple(k.shape)}, got {tuple(gk.shape)}")
    if gv is not None and gv.shape != v.shape:
        raise ValueError(f"gv must have v's shape {tuple(v.shape)}, got {tuple(gv.shape)}")
    B, _, H, K = q.shape
    if h0 is not None and tuple(h0.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be {(B, H, K, v.shape[-1])}, got {tuple(h0.shape)}")


def _recurrent(
    q: Tensor, k: Tensor, v: Tensor, gk: Tensor | None, gv: Tensor | None, h0: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Step-by-step loop in fp32 (fp64 for fp64 inputs). Returns (o (B,T,H,V), final state), compute dtype."""
    dt = _compute_dtype(q, k, v, gk, gv, h0)
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    ak = gk.to(dt).exp() if gk is not None else None
    av = gv.to(dt).exp() if gv is not None else None
    S = h0.to(dt) if h0 is not None else q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        if ak is not None:
            S = S * ak[:, t, :, :, None]
        if av is not None:
            S = S * av[:, t, :, None, :]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, V)
    return o, S


def _masked_pairwise_decay(G: Tensor, causal: Tensor) -> Tensor:
    """exp(G_t - G_s) for s <= t and 0 above the diagonal. G (..., C, D) -> (..., C, C, D); exponents <= 0.

    The difference of two within-chunk cumulative sums loses about eps * |G| absolutely (as in fla's kernels),
    i.e. a relative error of ~1e-5 on a factor only where a chunk mixes near-1 decays with exp(-20)-per-step
    ones; summing the differences directly (a cumsum over the pair tensor) was 2x slower on CPU.
    """
    diff = G[..., :, None, :] - G[..., None, :, :]
    return diff.masked_fill(~causal[..., None], float("-inf")).exp()


def _suffix_sum(g: Tensor) -> Tensor:
    """sum_{r > s} g_r over the chunk axis (-2), i.e. G_last - G_s, summed directly (no cancellation)."""
    rev = g.flip(-2).cumsum(-2).flip(-2)  # inclusive: sum_{r >= s}
    return F.pad(rev[..., 1:, :], (0, 0, 0, 1))


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor | None,
    gv: Tensor | None,
    h0: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Chunked form. Returns (o (B,T,H,V), final state (B,H,K,V)), both in the compute dtype."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dt = _compute_dtype(q, k, v, gk, gv, h0)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: Tensor) -> Tensor:
        """(B,T,H,D) -> (B,H,N,C,D); padded steps have zero k, v and log decay, so they change nothing."""
        x = x.to(dt).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, C, x.shape[-1])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    # Intra-chunk scores A[t, s] = sum_i q_t[i] k_s[i] exp(Gk_t[i] - Gk_s[i]) (s <= t).
    if gk is not None:
        gkc = chunks(gk)
        Gk = gkc.cumsum(-2)  # inclusive within-chunk cumulative log decay, <= 0
        A = (qc[..., :, None, :] * _masked_pairwise_decay(Gk, causal) * kc[..., None, :, :]).sum(-1)
        q_read = qc * Gk.exp()  # q_t * exp(Gk_t): reads the state carried into the chunk
        k_write = kc * _suffix_sum(gkc).exp()  # k_s * exp(Gk_last - Gk_s): writes the chunk's state
        chunk_decay_k = Gk[..., -1, :].exp()  # (B,H,N,K)
    else:
        A = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)
        q_read, k_write, chunk_decay_k = qc, kc, None

    # Intra-chunk output; with a value gate each value channel j carries exp(Gv_t[j] - Gv_s[j]) as well.
    if gv is not None:
        gvc = chunks(gv)
        Gv = gvc.cumsum(-2)
        o = (A[..., None] * _masked_pairwise_decay(Gv, causal) * vc[..., None, :, :]).sum(-2)
        read_decay_v = Gv.exp()
        v_write = vc * _suffix_sum(gvc).exp()
        chunk_decay_v = Gv[..., -1, :].exp()  # (B,H,N,V)
    else:
        o = A @ vc
        read_decay_v, v_write, chunk_decay_v = None, vc, None

    # Inter-chunk: carry the state across chunks (only this loop is sequential).
    U = k_write.transpose(-1, -2) @ v_write  # (B,H,N,K,V): each chunk's own contribution to the state
    S = h0.to(dt) if h0 is not None else qc.new_zeros(B, H, K, V)
    states_in = []
    for n in range(N):
        states_in.append(S)
        if chunk_decay_k is not None:
            S = S * chunk_decay_k[:, :, n, :, None]
        if chunk_decay_v is not None:
            S = S * chunk_decay_v[:, :, n, None, :]
        S = S + U[:, :, n]
    o_inter = q_read @ torch.stack(states_in, dim=2)  # (B,H,N,C,V)
    if read_decay_v is not None:
        o_inter = o_inter * read_decay_v
    o = (o + o_inter).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o, S


def gated_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor | None = None,
    gv: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str = "auto",
    chunk_size: int = 16,
) -> tuple[Tensor, Tensor | None]:
    """Gated linear recurrence S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t^T v_t, o_t = q_t S_t.

    q, k: (B,T,H,K); v: (B,T,H,V); gk: (B,T,H,K) or None; gv: (B,T,H,V) or None (log decays, <= 0);
    initial_state: (B,H,K,V). Scale 1. Returns (o in v's dtype, final state float32 -- float64 for float64
    inputs on the torch paths -- or None). impl: "auto" (fla on CUDA, else "recurrent" for T <= 4, else
    "chunk"), "recurrent", "chunk" or "fla". Differentiable on every path.
    """
    _check(q, k, v, gk, gv, initial_state)
    impl = _resolve(impl, q, k, v, gk, gv)
    if impl == "fla":
        return fla_gated_recurrence(q, k, v, gk, gv, initial_state, output_final_state)
    if impl == "recurrent" or q.shape[1] == 0:
        o, S = _recurrent(q, k, v, gk, gv, initial_state)
    else:
        o, S = _chunk(q, k, v, gk, gv, initial_state, chunk_size)
    return o.to(v.dtype), (S if output_final_state else None)


def gated_slot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    *,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    impl: str = "auto",
    chunk_size: int = 16,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Gated slot attention (scale 1), as fla's naive recurrent GSA.

    q, k: (B,T,H,K); v: (B,T,H,V); s (write strength), g (log decay): (B,T,H,M).
    hk_t = hk_{t-1} * exp(g_t)[None, :] + k_t^T s_t ; p_t = softmax(q_t hk_t) over the M slots
    hv_t = diag(exp(g_t)) hv_{t-1} + s_t^T v_t ; o_t = p_t hv_t
    initial_state: (hk (B,H,K,M), hv (B,H,M,V)). Returns (o in v's dtype, (hk, hv) float32 or None).
    The torch paths are two gated recurrences with a float32 softmax between them.
    """
    if s.shape != g.shape or s.shape[:3] != q.shape[:3]:
        raise ValueError(f"s and g must be (B,T,H,M) matching q; got {tuple(s.shape)}, {tuple(g.shape)}")
    hk0, hv0 = initial_state if initial_state is not None else (None, None)
    _check(q, k, s, None, g, hk0)
    _check(s, s, v, g, None, hv0)
    impl = _resolve(impl, q, k, v, s, g)
    if impl == "fla":
        return fla_gated_slot_attention(q, k, v, s, g, initial_state, output_final_state)
    if impl == "recurrent" or q.shape[1] == 0:
        ok, hk = _recurrent(q, k, s, None, g, hk0)
        p = torch.softmax(ok, dim=-1)
        o, hv = _recurrent(p, s, v, g, None, hv0)
    else:
        ok, hk = _chunk(q, k, s, None, g, hk0, chunk_size)
        p = torch.softmax(ok, dim=-1)
        o, hv = _chunk(p, s, v, g, None, hv0, chunk_size)
    return o.to(v.dtype), ((hk, hv) if output_final_state else None)
