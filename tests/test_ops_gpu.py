"""CUDA tests of liger.ops: fla kernels and the CUDA window paths vs the PyTorch paths (SmolLM2 shapes).

Shapes: B=2, T in {1024, 1000} (a multiple of fla's 64-token chunks and not), 9 query heads, 3 kv heads,
head dim 64; GSA with 64 slots. Inputs look like Liger's: q, k through a softmax feature map, gates
logsigmoid(x)/16. The torch paths compute in fp32 from the same (possibly bf16) inputs.

Tolerances (max |a - b| / max |b| unless stated); "seen" = worst value on an H100 (torch 2.11, triton 3.6,
fla 0.6.0), where all these tests passed (flash-attn was not installed there, so its tests were skipped):
- fla, fp32 inputs: 5e-3 (seen 1.6e-3). chunk_gla / chunk_gsa run their fp32 matrix products in TF32 (10-bit
  mantissa, 2^-11 = 4.9e-4 per product), accumulated over a chunk and the carried state; the fused recurrent
  kernels (T <= 64, or a value gate) agree to ~1e-6.
- fla, bf16 inputs: 1.5e-2 (seen 5.2e-3). fla keeps its chunk states and the GSA slot probabilities in bf16
  (2^-8 = 3.9e-3 per rounding) and rounds the output to bf16.
- window, fp32: 1e-4 absolute (seen 2.4e-6; outputs are convex combinations of N(0,1) values); bf16: 2e-2
  relative (seen 5.4e-3: P is rounded to bf16 before the value product inside flash-attn / flex).
- gradients: twice the forward tolerance.
Note: the first run compiles and autotunes fla's Triton kernels, which took ~6 minutes for this file on the H100
(the backward kernels most); later runs on the same machine reuse the Triton cache.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from liger.ops import gated_recurrence, gated_slot_attention, sliding_window_attention
from liger.ops._fla import fla_importable
from liger.ops.reference import (
    naive_gated_recurrence,
    naive_gated_slot_attention,
    naive_sliding_window_attention,
)
from liger.ops.window import flash_attn_importable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
needs_fla = pytest.mark.skipif(not fla_importable(), reason="fla / triton not importable")

B, H, HKV, D, M = 2, 9, 3, 64, 64
FLA_TOL = {torch.float32: 5e-3, torch.bfloat16: 1.5e-2}
DEV = "cuda"


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def gla_inputs(T: int, dtype: torch.dtype, *, gates: str = "gk", init: bool = False, fast: bool = False,
               Hh: int = H, K: int = D, seed: int = 0) -> dict:
    g = gen(seed)
    shape = (B, T, Hh, K)
    gk = F.logsigmoid(torch.randn(shape, device=DEV, generator=g)) / 16
    if fast:
        gk = -5.0 - 15.0 * torch.rand(shape, device=DEV, generator=g)
    gv = F.logsigmoid(torch.randn(shape, device=DEV, generator=g) + 2) / 16
    return dict(
        q=torch.randn(shape, device=DEV, generator=g).softmax(-1).to(dtype),
        k=torch.randn(shape, device=DEV, generator=g).softmax(-1).to(dtype),
        v=torch.randn(shape, device=DEV, generator=g).to(dtype),
        gk=gk if gates in ("gk", "both") else None,
        gv=gv if gates in ("gv", "both") else None,
        initial_state=torch.randn(B, Hh, K, K, device=DEV, generator=g) * 0.1 if init else None,
    )


def run_gla(inp: dict, **kw):
    return gated_recurrence(inp["q"], inp["k"], inp["v"], inp["gk"], inp["gv"],
                            initial_state=inp["initial_state"], output_final_state=True, **kw)


def gsa_inputs(T: int, dtype: torch.dtype, *, init: bool = False, seed: int = 0) -> dict:
    g = gen(seed)
    gate = F.logsigmoid(torch.randn(B, T, H, M, device=DEV, generator=g)) / 16
    return dict(
        q=torch.randn(B, T, H, D, device=DEV, generator=g).to(dtype),
        k=torch.randn(B, T, H, D, device=DEV, generator=g).to(dtype),
        v=torch.randn(B, T, H, D, device=DEV, generator=g).to(dtype),
        s=(1 - gate.exp()).to(dtype),
        g=gate.to(dtype),
        initial_state=(torch.randn(B, H, D, M, device=DEV, generator=g) * 0.1,
                       torch.randn(B, H, M, D, device=DEV, generator=g) * 0.1) if init else None,
    )


def run_gsa(inp: dict, fn=gated_slot_attention, **kw):
    return fn(inp["q"], inp["k"], inp["v"], inp["s"], inp["g"], initial_state=inp["initial_state"],
              output_final_state=True, **kw)


# ----------------------------------------------------------------------------------------- fla GLA


@needs_fla
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gates", ["gk", "none", "both", "gv"])
@pytest.mark.parametrize("T", [1024, 1000, 40])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fla_recurrence_matches_chunk(dtype, T, gates, init) -> None:
    inp = gla_inputs(T, dtype, gates=gates, init=init)
    o, S = run_gla(inp, impl="fla")
    ro, rS = run_gla(inp, impl="chunk")
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel_err(o, ro) < FLA_TOL[dtype]
    assert rel_err(S, rS) < FLA_TOL[dtype]
    o_auto, _ = run_gla(inp)  # auto on CUDA -> fla
    torch.testing.assert_close(o_auto, o, rtol=0, atol=0)


@needs_fla
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fla_recurrence_fast_decay(dtype) -> None:
    inp = gla_inputs(1000, dtype, fast=True, init=True)
    o, S = run_gla(inp, impl="fla")
    ro, rS = run_gla(inp, impl="chunk")
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, ro) < FLA_TOL[dtype] and rel_err(S, rS) < FLA_TOL[dtype]


@needs_fla
def test_fla_recurrence_small_vs_reference() -> None:
    inp = gla_inputs(100, torch.float32, gates="both", init=True, Hh=2, K=32)
    o, S = run_gla(inp, impl="fla")
    ro, rS = naive_gated_recurrence(inp["q"], inp["k"], inp["v"], inp["gk"], inp["gv"],
                                    initial_state=inp["initial_state"], output_final_state=True)
    assert rel_err(o, ro) < FLA_TOL[torch.float32] and rel_err(S, rS) < FLA_TOL[torch.float32]
    inp["gv"] = None
    o, S = run_gla(inp, impl="fla")  # chunk_gla
    ro, rS = naive_gated_recurrence(inp["q"], inp["k"], inp["v"], inp["gk"], None,
                                    initial_state=inp["initial_state"], output_final_state=True)
    assert rel_err(o, ro) < FLA_TOL[torch.float32] and rel_err(S, rS) < FLA_TOL[torch.float32]


@needs_fla
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fla_prefill_then_decode(dtype) -> None:
    inp = gla_inputs(1003, dtype)
    whole, S_whole = run_gla(inp, impl="chunk")
    head = {k: (None if x is None else x[:, :1000]) for k, x in inp.items()}
    o, S = run_gla(head, impl="fla")
    outs = [o]
    for t in range(1000, 1003):
        step = {k: (None if x is None else x[:, t : t + 1]) for k, x in inp.items()}
        step["initial_state"] = S
        o_t, S = run_gla(step)  # auto: fla fused_recurrent for one token
        outs.append(o_t)
    assert rel_err(torch.cat(outs, 1), whole) < FLA_TOL[dtype]
    assert rel_err(S, S_whole) < FLA_TOL[dtype]


@needs_fla
@pytest.mark.parametrize(("T", "gates"), [(300, "gk"), (300, "both"), (50, "gk")])
def test_fla_recurrence_gradients(T, gates) -> None:
    inp = gla_inputs(T, torch.float32, gates=gates, init=True, seed=1)
    w = torch.randn(B, T, H, D, device=DEV, generator=gen(2))

    def grads(impl: str) -> list[torch.Tensor]:
        leaves = {k: (None if x is None else x.detach().clone().requires_grad_()) for k, x in inp.items()}
        o, S = run_gla(leaves, impl=impl)
        ((o * w).sum() + S.sum()).backward()
        return [x.grad for x in leaves.values() if x is not None]

    for g_fla, g_ref in zip(grads("fla"), grads("chunk"), strict=True):
        assert rel_err(g_fla, g_ref) < 2 * FLA_TOL[torch.float32]


# ----------------------------------------------------------------------------------------- fla GSA


@needs_fla
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("T", [1024, 1000, 40])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fla_gsa_matches_chunk(dtype, T, init) -> None:
    inp = gsa_inputs(T, dtype, init=init)
    o, (hk, hv) = run_gsa(inp, impl="fla")
    ro, (rhk, rhv) = run_gsa(inp, impl="chunk")
    assert o.dtype == dtype and hk.dtype == torch.float32 and hv.dtype == torch.float32
    assert rel_err(o, ro) < FLA_TOL[dtype]
    assert rel_err(hk, rhk) < FLA_TOL[dtype]
    assert rel_err(hv, rhv) < FLA_TOL[dtype]


@needs_fla
def test_fla_gsa_small_vs_reference_and_decode() -> None:
    inp = gsa_inputs(100, torch.float32, init=True)
    o, (hk, hv) = run_gsa(inp, impl="fla")
    ro, (rhk, rhv) = run_gsa(inp, fn=naive_gated_slot_attention)
    tol = FLA_TOL[torch.float32]
    assert rel_err(o, ro) < tol and rel_err(hk, rhk) < tol and rel_err(hv, rhv) < tol
    # prefill 97 tokens then 3 single-token steps (fla's inference kernel under no_grad)
    head = {k: (x if k == "initial_state" else x[:, :97]) for k, x in inp.items()}
    o1, st = run_gsa(head, impl="fla")
    outs = [o1]
    with torch.no_grad():
        for t in range(97, 100):
            step = {k: (st if k == "initial_state" else x[:, t : t + 1]) for k, x in inp.items()}
            o_t, st = run_gsa(step)
            outs.append(o_t)
    assert rel_err(torch.cat(outs, 1), ro) < tol
    assert rel_err(st[0], rhk) < tol and rel_err(st[1], rhv) < tol


@needs_fla
def test_fla_gsa_gradients() -> None:
    inp = gsa_inputs(300, torch.float32, init=True, seed=3)

    def grads(impl: str) -> list[torch.Tensor]:
        leaves = {k: inp[k].detach().clone().requires_grad_() for k in ("q", "k", "v", "s", "g")}
        h0 = tuple(x.detach().clone().requires_grad_() for x in inp["initial_state"])
        o, (a, b) = gated_slot_attention(*leaves.values(), initial_state=h0, output_final_state=True, impl=impl)
        (o.sin().sum() + a.sum() + b.sum()).backward()
        return [x.grad for x in leaves.values()] + [x.grad for x in h0]

    for g_fla, g_ref in zip(grads("fla"), grads("chunk"), strict=True):
        assert rel_err(g_fla, g_ref) < 2 * FLA_TOL[torch.float32]


# ----------------------------------------------------------------------------------------- window

WIN_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def win_inputs(Tq: int, Tk: int, dtype: torch.dtype, seed: int = 0):
    g = gen(seed)
    return (torch.randn(B, Tq, H, D, device=DEV, generator=g).to(dtype),
            torch.randn(B, Tk, HKV, D, device=DEV, generator=g).to(dtype),
            torch.randn(B, Tk, HKV, D, device=DEV, generator=g).to(dtype))


def left_pad_mask(Tk: int, pads: tuple[int, int] = (300, 0)) -> torch.Tensor:
    mask = torch.ones(B, Tk, dtype=torch.bool, device=DEV)
    for b, p in enumerate(pads):
        mask[b, :p] = False
    return mask


def check_window(o: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert o.dtype == dtype and torch.isfinite(o).all()
    if dtype == torch.float32:
        torch.testing.assert_close(o.float(), ref.float(), rtol=0, atol=WIN_TOL[dtype])
    else:
        assert rel_err(o, ref) < WIN_TOL[dtype]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("T", [1024, 1000])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flex_window_matches_blocked(dtype, T, padded) -> None:
    q, k, v = win_inputs(T, T, dtype)
    mask = left_pad_mask(T) if padded else None
    o = sliding_window_attention(q, k, v, 64, key_mask=mask, impl="flex")
    ref = sliding_window_attention(q, k, v, 64, key_mask=mask, impl="blocked")
    check_window(o, ref, dtype)
    if padded:
        assert (o[0, :300] == 0).all()


@pytest.mark.skipif(not flash_attn_importable(), reason="flash-attn not installed")
@pytest.mark.parametrize("T", [1024, 1000])
def test_flash_attn_window_matches_blocked(T) -> None:
    q, k, v = win_inputs(T, T, torch.bfloat16)
    o = sliding_window_attention(q, k, v, 64, impl="flash_attn")
    ref = sliding_window_attention(q, k, v, 64, impl="blocked")
    check_window(o, ref, torch.bfloat16)
    # a decode step with a cache prefix: Tq < Tk, aligned bottom-right
    q1, k1, v1 = win_inputs(3, 80, torch.bfloat16)
    check_window(sliding_window_attention(q1, k1, v1, 64, impl="flash_attn"),
                 sliding_window_attention(q1, k1, v1, 64, impl="blocked"), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_auto_window_paths(dtype) -> None:
    """auto on CUDA (flash-attn / flex / blocked for short queries) agrees with the blocked path."""
    q, k, v = win_inputs(1000, 1000, dtype)
    check_window(sliding_window_attention(q, k, v, 64), sliding_window_attention(q, k, v, 64, impl="blocked"),
                 dtype)
    mask = left_pad_mask(1000)
    check_window(sliding_window_attention(q, k, v, 64, key_mask=mask),
                 sliding_window_attention(q, k, v, 64, key_mask=mask, impl="blocked"), dtype)
    q1, k1, v1 = win_inputs(1, 65, dtype)  # a decode step against a full window cache
    m1 = left_pad_mask(65, (10, 0))
    check_window(sliding_window_attention(q1, k1, v1, 64, key_mask=m1),
                 naive_sliding_window_attention(q1, k1, v1, 64, key_mask=m1), dtype)


def test_flex_key_mask_cache() -> None:
    """Two different key masks of the same shape in a row: the cached block mask must not be reused."""
    q, k, v = win_inputs(200, 200, torch.float32)
    for pads in ((30, 0), (0, 120), (0, 120), (200, 5)):
        mask = left_pad_mask(200, pads)
        check_window(sliding_window_attention(q, k, v, 8, key_mask=mask, impl="flex"),
                     sliding_window_attention(q, k, v, 8, key_mask=mask, impl="blocked"), torch.float32)


def test_window_small_vs_reference() -> None:
    q, k, v = win_inputs(100, 130, torch.float32)
    mask = left_pad_mask(130, (40, 0))
    ref = naive_sliding_window_attention(q, k, v, 16, key_mask=mask)
    for impl in ("flex", "blocked"):
        check_window(sliding_window_attention(q, k, v, 16, key_mask=mask, impl=impl), ref, torch.float32)


def test_flex_window_gradients() -> None:
    q, k, v = win_inputs(300, 300, torch.float32, seed=4)
    mask = left_pad_mask(300, (50, 0))
    w = torch.randn(B, 300, H, D, device=DEV, generator=gen(5))

    def grads(impl: str) -> list[torch.Tensor]:
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        (sliding_window_attention(*leaves, 64, key_mask=mask, impl=impl) * w).sum().backward()
        return [x.grad for x in leaves]

    for g_flex, g_ref in zip(grads("flex"), grads("blocked"), strict=True):
        assert torch.isfinite(g_flex).all()
        assert rel_err(g_flex, g_ref) < 2 * WIN_TOL[torch.float32]
