"""Causal sliding-window softmax attention, sized by its ``lookback`` (flash-attn's ``window_size=(lookback, 0)``).

q: (B,Tq,H,D); k, v: (B,Tk,Hkv,D) with H a multiple of Hkv; the queries are the last Tq positions of the key
sequence (query i sits at absolute position Tk - Tq + i). The query at position p sees the keys p - lookback ... p
(lookback + 1 keys: a layer's ``window`` is lookback + 1; ``lookback=None`` means all keys up to p) for which
``key_mask`` (B,Tk), if given, is True. A query with no visible key outputs zeros.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from liger.ops.reference import naive_sliding_window_attention

IMPLS = ("auto", "blocked", "flex", "flash_attn", "reference")
# "auto" on CUDA: query lengths up to this (decoding steps) go through the blocked SDPA path, which is one small
# SDPA call there; flex attention would recompile for every new cache length.
_FLEX_MIN_TQ = 16
_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def flash_attn_importable() -> bool:
    """True when flash-attn (2.x, ``flash_attn_func``) imports."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_func  # noqa: F401
    except Exception:  # any import failure (ABI mismatch, no CUDA) means "not usable"
        return False
    return True


def _effective_lookback(lookback: int | None, Tk: int) -> int:
    """Lookback clipped to Tk - 1 (a larger one sees the same keys); None -> Tk - 1."""
    if lookback is not None and lookback < 0:
        raise ValueError(f"lookback must be >= 0 or None, got {lookback}")
    return max(Tk - 1, 0) if lookback is None else min(lookback, max(Tk - 1, 0))


def _row_has_key(key_mask: Tensor, Tq: int, w: int) -> Tensor:
    """(B, Tq) bool: whether query i (position Tk - Tq + i) sees at least one valid key, in O(B*Tk)."""
    Tk = key_mask.shape[1]
    counts = F.pad(key_mask.to(torch.int32).cumsum(1), (1, 0))  # counts[:, j] = valid keys before position j
    pos = torch.arange(Tk - Tq, Tk, device=key_mask.device)
    return (counts[:, pos + 1] - counts[:, (pos - w).clamp(min=0)]) > 0


def _blocked(
    q: Tensor, k: Tensor, v: Tensor, w: int, scale: float, key_mask: Tensor | None, block_size: int
) -> Tensor:
    """Query blocks attend to their band of keys only, through SDPA with a boolean (block, block + w) mask.

    Memory O(B*H*Tq*(block + w)); computed in fp32 (fp64 for fp64 inputs) so the softmax is fp32.
    Grouped-query attention without repeating k/v: the G query heads of one kv head are stacked on the
    query-length axis of SDPA.
    """
    B, Tq, H, D = q.shape
    Tk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    off = Tk - Tq
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    dev = q.device

    bq = min(block_size, Tq)
    NB = -(-Tq // bq)
    if NB == 1 or bq + w >= Tk:
        # One block holding all queries; its band is every key from the first one any query sees.
        bq, NB = Tq, 1
        start0 = max(0, off - w)
        L = Tk - start0
        kb, vb = k[:, None, start0:], v[:, None, start0:]  # (B,1,L,Hkv,D)
        if key_mask is not None:
            kmb = key_mask[:, None, start0:]
    else:
        L = bq + w
        start0 = off - w  # absolute position of the first key of block 0's band (may be negative)
        pad_left = max(0, -start0)
        pad_right = NB * bq - Tq  # the last block's padded query rows reach past Tk
        kp = F.pad(k, (0, 0, 0, 0, pad_left, pad_right))[:, start0 + pad_left :]
        vp = F.pad(v, (0, 0, 0, 0, pad_left, pad_right))[:, start0 + pad_left :]
        kb = kp.unfold(1, L, bq).permute(0, 1, 4, 2, 3)  # (B,NB,L,Hkv,D)
        vb = vp.unfold(1, L, bq).permute(0, 1, 4, 2, 3)
        if key_mask is not None:
            kmp = F.pad(key_mask, (pad_left, pad_right))[:, start0 + pad_left :]
            kmb = kmp.unfold(1, L, bq)  # (B,NB,L)
    if Tq < NB * bq:
        q = F.pad(q, (0, 0, 0, 0, 0, NB * bq - Tq))

    starts = start0 + bq * torch.arange(NB, device=dev)
    kpos = starts[:, None] + torch.arange(L, device=dev)  # (NB,L) absolute key positions
    qpos = off + bq * torch.arange(NB, device=dev)[:, None] + torch.arange(bq, device=dev)  # (NB,bq)
    rel = kpos[:, None, :] - qpos[:, :, None]  # (NB,bq,L): key position minus query position
    mask = (rel <= 0) & (rel >= -w) & (kpos >= 0)[:, None, :] & (kpos < Tk)[:, None, :]
    mask = mask[None]  # (1,NB,bq,L)
    if key_mask is not None:
        mask = mask & kmb.to(torch.bool)[:, :, None, :]  # (B,NB,bq,L)
    has_key = mask.any(-1, keepdim=True)
    mask = mask | ~has_key  # a row with no key would be NaN in SDPA: let it see all, then zero it below

    # (B,NB*bq,H,D) -> (B*NB, Hkv, G*bq, D): query heads of a kv group stacked along the length axis.
    qb = q.reshape(B, NB, bq, Hkv, G, D).permute(0, 1, 3, 4, 2, 5).reshape(B * NB, Hkv, G * bq, D)
    kb = kb.expand(B, NB, L, Hkv, D).permute(0, 1, 3, 2, 4).reshape(B * NB, Hkv, L, D)
    vb = vb.expand(B, NB, L, Hkv, Dv).permute(0, 1, 3, 2, 4).reshape(B * NB, Hkv, L, Dv)
    mb = mask[:, :, None, None].expand(B, NB, 1, G, bq, L).reshape(B * NB, 1, G * bq, L)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mb, scale=scale)
    o = o.reshape(B, NB, Hkv, G, bq, Dv).permute(0, 1, 4, 2, 3, 5).reshape(B, NB * bq, H, Dv)
    has_key = has_key.expand(B, NB, bq, 1).reshape(B, NB * bq, 1, 1)
    o = torch.where(has_key, o, torch.zeros((), dtype=o.dtype, device=dev))
    return o[:, :Tq]


_flex_compiled: Callable[..., Tensor] | None = None
_flex_broken = False
_block_mask_cache: dict[tuple, object] = {}
_last_masked_block_mask: tuple[tuple, Tensor, object] | None = None


def _flex(q: Tensor, k: Tensor, v: Tensor, w: int, scale: float, key_mask: Tensor | None) -> Tensor:
    """torch flex_attention with a sliding-window block mask (compiled once with torch.compile, cached)."""
    global _flex_compiled, _last_masked_block_mask
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, Tq, H, _ = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    # Offsets go into the mask functions as tensors: dynamo lifts captured tensors to graph inputs, whereas
    # captured Python ints are guarded on and would recompile for every new value.
    lo = torch.tensor(Tk - Tq - w, device=q.device)  # key j visible from query i iff i + lo <= j <= i + hi
    hi = torch.tensor(Tk - Tq, device=q.device)
    key = (Tq, Tk, w, str(q.device))

    if key_mask is None:

        def mask_mod(b: Tensor, h: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
            return (kj <= qi + hi) & (kj >= qi + lo)

        block_mask = _block_mask_cache.get(key)
        if block_mask is None:
            block_mask = create_block_mask(mask_mod, None, None, Tq, Tk, device=q.device)
            if len(_block_mask_cache) > 64:
                _block_mask_cache.clear()
            _block_mask_cache[key] = block_mask
    else:
        # The block mask depends on the key mask's content; consecutive layers pass the same mask, so keep the
        # last one (compared by value, which costs far less than building the block mask again).
        km = key_mask.to(torch.bool)
        cached = _last_masked_block_mask
        if cached is not None and cached[0] == key and cached[1].shape == km.shape and torch.equal(cached[1], km):
            block_mask = cached[2]
        else:
            km = km.clone()

            def mask_mod(b: Tensor, h: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
                return (kj <= qi + hi) & (kj >= qi + lo) & km[b, kj]

            block_mask = create_block_mask(mask_mod, B, None, Tq, Tk, device=q.device)
            _last_masked_block_mask = (key, km, block_mask)

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention)
    # Dtype, grad mode, GQA and mask layout each add a compiled variant; past dynamo's default limit of 8 it
    # would silently run flex attention eagerly, materialising the full score matrix.
    with torch._dynamo.config.patch(recompile_limit=max(64, torch._dynamo.config.recompile_limit)):
        o = _flex_compiled(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            block_mask=block_mask,
            scale=scale,
            enable_gqa=H != Hkv,
        ).transpose(1, 2)
    if key_mask is not None:
        o = torch.where(_row_has_key(key_mask.to(torch.bool), Tq, w)[..., None, None], o, 0.0)
    return o.to(q.dtype)


def _flash_attn(q: Tensor, k: Tensor, v: Tensor, lookback: int | None, scale: float) -> Tensor:
    """flash-attn 2: causal (aligned bottom-right when Tq < Tk) with window_size=(lookback, 0); native GQA."""
    from flash_attn import flash_attn_func

    left = -1 if lookback is None else lookback
    return flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=True, window_size=(left, 0))


def _pick(q: Tensor, key_mask: Tensor | None) -> str:
    if not q.is_cuda:
        return "blocked"
    if key_mask is None and q.dtype in _HALF and flash_attn_importable():
        return "flash_attn"
    if q.shape[1] > _FLEX_MIN_TQ and not _flex_broken:
        return "flex"
    return "blocked"


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lookback: int | None,
    *,
    scale: float | None = None,
    key_mask: Tensor | None = None,
    impl: str = "auto",
    block_size: int = 64,
) -> Tensor:
    """Causal sliding-window attention; returns (B,Tq,H,Dv) in q's dtype (softmax in fp32).

    impl: "auto" (CUDA: flash-attn without key_mask in fp16/bf16, else compiled flex attention for Tq > 16,
    falling back to "blocked" if compiling fails; CPU: "blocked"), "blocked", "flex", "flash_attn",
    "reference" (float64 full masked matrix). Differentiable.
    """
    global _flex_broken
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"expected q (B,Tq,H,D), k/v (B,Tk,Hkv,D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    if H % Hkv or Tk < Tq or k.shape[-1] != D:
        raise ValueError(f"need H % Hkv == 0, Tk >= Tq and matching head dims; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}")
    if key_mask is not None and tuple(key_mask.shape) != (B, Tk):
        raise ValueError(f"key_mask must be (B, Tk) = {(B, Tk)}, got {tuple(key_mask.shape)}")
    w = _effective_lookback(lookback, Tk)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if impl == "auto":
        impl = _pick(q, key_mask)
    if impl == "reference":
        return naive_sliding_window_attention(q, k, v, lookback, scale=scale, key_mask=key_mask).to(q.dtype)
    if impl == "flash_attn":
        if key_mask is not None:
            raise ValueError("impl='flash_attn' does not take a key_mask")
        return _flash_attn(q, k, v, lookback, scale)
    if impl == "flex":
        try:
            return _flex(q, k, v, w, scale, key_mask)
        except Exception as exc:  # compile or lowering failure: remember it and use the blocked path
            _flex_broken = True
            warnings.warn(f"flex_attention failed ({type(exc).__name__}: {exc}); using the blocked SDPA path",
                          stacklevel=2)
    return _blocked(q, k, v, w, scale, key_mask, block_size).to(q.dtype)


def window_decode_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    win_k: Tensor,
    win_v: Tensor,
    win_mask: Tensor,
    slot: Tensor,
    scale: float,
) -> Tensor:
    """One decoding step of sliding-window attention over a ring buffer, updated in place.

    q (B,1,H,D) and k, v (B,1,Hkv,D) are the new token's (rotary) query, key and value; win_k, win_v
    (B,W,Hkv,D) hold the previous W keys and values in any slot order and win_mask (B,W) says which slots hold a
    token. The query attends to the window and itself (softmax in fp32, fp64 for fp64 inputs); then k, v
    overwrite slot `slot` (a one-element long tensor, the oldest slot) and `slot` advances. No host
    synchronisation and no buffer changes size, so the step can be captured in a CUDA graph. Returns (B,1,H,D)
    in q's dtype.
    """
    B, _, H, D = q.shape
    Hkv = win_k.shape[2]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    keys = torch.cat([win_k, k], dim=1).to(dt)  # (B,W+1,Hkv,D)
    values = torch.cat([win_v, v], dim=1).to(dt)
    seen = torch.cat([win_mask, win_mask.new_ones(B, 1)], dim=1)  # (B,W+1)
    qg = q.to(dt).reshape(B, Hkv, H // Hkv, D)  # query heads grouped by their kv head (as HF's repeat_kv)
    scores = torch.einsum("bhgd,bjhd->bhgj", qg, keys) * scale
    scores = scores.masked_fill(~seen[:, None, None, :], float("-inf"))
    o = torch.einsum("bhgj,bjhd->bhgd", scores.softmax(-1), values)
    advance_ring(win_k, win_v, win_mask, slot, k, v)
    return o.reshape(B, 1, H, -1).to(q.dtype)


def advance_ring(win_k: Tensor, win_v: Tensor, win_mask: Tensor, slot: Tensor, k: Tensor, v: Tensor) -> None:
    """The new key and value (B,1,Hkv,D) replace the oldest slot of the ring buffer, in place; `slot` advances
    (nothing with no slots)."""
    W = win_k.shape[1]
    if W:
        win_k.index_copy_(1, slot, k)
        win_v.index_copy_(1, slot, v)
        # (index_fill_ on a bool tensor trips inductor in torch 2.11)
        win_mask.index_copy_(1, slot, win_mask.new_ones(win_mask.shape[0], 1))
        slot.add_(1).remainder_(W)
