"""The Triton kernel of `liger.ops.fused_step`: one Liger-GLA decoding step of one layer in one launch.

Imported only when the fused step is asked for (it imports triton). One program per (batch row, query head,
block of value dims) computes what `LigerAttention.recurrence` and `window_decode_step` compute for that head:
the gate logsigmoid(k) / normalizer of its key/value head, the softmax feature maps, the state update
S = diag(exp(g)) S + phi(k)^T v (fp32, in place) and its read phi(q) S, and softmax attention over the ring
buffer plus the new key; then `WindowedHybrid.mix`'s beta * recurrence (beta only with the window branch) +
alpha * window, rounded like the unfused path (each branch to the model's dtype, then each product, the sum).
It does not write the ring buffer: every query head of a key/value head reads the slot that the new key
overwrites (`fused_step` writes it afterwards).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gla_step_kernel(
    q_ptr, k_ptr, v_ptr, qr_ptr, kr_ptr,  # (B, H, D), (B, Hkv, D), (B, Hkv, DV), rotary q (B, H, D), k (B, Hkv, D)
    s_ptr,  # the recurrent state (B, H, D, DV), fp32, updated in place
    wk_ptr, wv_ptr, wm_ptr,  # the ring buffer (B, W, Hkv, D), (B, W, Hkv, DV) and its slots in use (B, W)
    o_ptr,  # out (B, H, DV), the model's dtype
    H, HKV, W, D, DV,
    scale, inv_norm, alpha, beta,
    BD: tl.constexpr, BV: tl.constexpr, BW: tl.constexpr,
    USE_REC: tl.constexpr, USE_WINDOW: tl.constexpr, SCALE_REC: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kh = h // (H // HKV)
    dt = o_ptr.dtype.element_ty
    d = tl.arange(0, BD)
    dm = d < D
    vv = tl.program_id(2) * BV + tl.arange(0, BV)
    vm = vv < DV
    v = tl.load(v_ptr + (b * HKV + kh) * DV + vv, mask=vm, other=0.0).to(tl.float32)
    out = tl.zeros([BV], dtype=tl.float32)
    if USE_REC:
        k = tl.load(k_ptr + (b * HKV + kh) * D + d, mask=dm, other=0.0).to(tl.float32)
        g = (tl.minimum(k, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(k)))) * inv_norm  # logsigmoid(k) / normaliser
        ek = tl.exp(tl.where(dm, k, float("-inf")) - tl.max(tl.where(dm, k, float("-inf")), axis=0))
        kf = (ek / tl.sum(ek, axis=0)).to(dt).to(tl.float32)  # softmax features, rounded as the unfused path's
        q = tl.load(q_ptr + (b * H + h) * D + d, mask=dm, other=0.0).to(tl.float32)
        eq = tl.exp(tl.where(dm, q, float("-inf")) - tl.max(tl.where(dm, q, float("-inf")), axis=0))
        qf = (eq / tl.sum(eq, axis=0)).to(dt).to(tl.float32)
        at = s_ptr + ((b * H + h) * D + d[:, None]) * DV + vv[None, :]
        sm = dm[:, None] & vm[None, :]
        S = tl.load(at, mask=sm, other=0.0) * tl.exp(g)[:, None] + kf[:, None] * v[None, :]
        tl.store(at, S, mask=sm)
        rec = tl.sum(qf[:, None] * S, axis=0).to(dt).to(tl.float32)
        out = (beta * rec).to(dt).to(tl.float32) if SCALE_REC else rec
    if USE_WINDOW:
        qr = tl.load(qr_ptr + (b * H + h) * D + d, mask=dm, other=0.0).to(tl.float32)
        kr = tl.load(kr_ptr + (b * HKV + kh) * D + d, mask=dm, other=0.0).to(tl.float32)
        w = tl.arange(0, BW)
        wmask = w < W
        seen = tl.load(wm_ptr + b * W + w, mask=wmask, other=0) != 0
        wk = tl.load(wk_ptr + ((b * W + w[:, None]) * HKV + kh) * D + d[None, :],
                     mask=wmask[:, None] & dm[None, :], other=0.0).to(tl.float32)
        s = tl.where(seen & wmask, tl.sum(wk * qr[None, :], axis=1) * scale, float("-inf"))
        s_self = tl.sum(kr * qr, axis=0) * scale
        m = tl.maximum(tl.max(s, axis=0), s_self)
        p = tl.exp(s - m)
        p_self = tl.exp(s_self - m)
        wv = tl.load(wv_ptr + ((b * W + w[:, None]) * HKV + kh) * DV + vv[None, :],
                     mask=wmask[:, None] & vm[None, :], other=0.0).to(tl.float32)
        win = ((tl.sum(p[:, None] * wv, axis=0) + p_self * v) / (tl.sum(p, axis=0) + p_self)).to(dt).to(tl.float32)
        win = (alpha * win).to(dt).to(tl.float32)
        out = (out + win).to(dt).to(tl.float32) if USE_REC else win
    tl.store(o_ptr + (b * H + h) * DV + vv, out.to(dt), mask=vm)
