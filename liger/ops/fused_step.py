"""A Liger-GLA layer's attention decoding step in one Triton kernel (`_triton_step`).

At batch 1 a decoding step should cost little more than reading each weight once. The unfused step runs the
gate, the feature maps, the state update and read, the window attention and the mix as separate operations on a
few kilobytes each (torch.compile fuses the elementwise ones, not the rest); the kernel does all of them for every
head in one launch, and three in-place copies then write the new key and value into the ring buffer. Same inputs
and outputs as `WindowedHybrid.step`'s attention part (tests compare them); `GraphDecoder(fused=True)` uses it.
Its speed is for `benchmarks/bench_decode.py` to measure.

CUDA, or the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, for the tests); float32, bfloat16 or float16.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch
from torch import Tensor

from liger.cache import StepBuffers
from liger.ops.window import advance_ring

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unavailable(device: torch.device) -> str | None:
    """Why the fused step cannot run on `device` (None: it can, and its kernel is imported, so that a compiled
    step finds it loaded)."""
    if importlib.util.find_spec("triton") is None:
        return "it needs triton, which is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"it runs on CUDA (or the CPU under TRITON_INTERPRET=1), not {device.type}"
    importlib.import_module("liger.ops._triton_step")
    return None


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def gla_step(q: Tensor, k: Tensor, v: Tensor, q_rot: Tensor, k_rot: Tensor, buffers: StepBuffers, *,
             scale: float, gate_normalizer: float, alpha: float, beta: float, use_recurrence: bool,
             use_window: bool, scale_recurrence: bool) -> Tensor:
    """One token through a Liger-GLA layer's attention: (B, 1, H, DV) in q's dtype; the buffers updated in place.

    q, q_rot (B, 1, H, D) before and after rotary, k, k_rot (B, 1, Hkv, D), v (B, 1, Hkv, DV); the gate is
    logsigmoid(k) / gate_normalizer and the feature maps softmax (the default Liger-GLA layer); the recurrence's
    output is scaled by beta when `scale_recurrence` (the hybrid), the window's by alpha.
    """
    from liger.ops._triton_step import gla_step_kernel

    B, _, H, D = q.shape
    Hkv, DV = k.shape[2], v.shape[-1]
    if q.dtype not in _DTYPES:
        raise ValueError(f"the fused step runs in float32, bfloat16 or float16, not {q.dtype}")
    W = buffers.win_k.shape[1] if use_window else 0
    out = torch.empty(B, H, DV, dtype=q.dtype, device=q.device)
    BV = min(64, _pow2(DV))
    dummy = out  # pointers a branch that is off never reads
    gla_step_kernel[(B, H, -(-DV // BV))](
        q.contiguous(), k.contiguous(), v.contiguous(), q_rot.contiguous(), k_rot.contiguous(),
        buffers.state if use_recurrence else dummy,
        buffers.win_k if use_window else dummy, buffers.win_v if use_window else dummy,
        buffers.win_mask if use_window else dummy,
        out, H, Hkv, W, D, DV, float(scale), 1.0 / float(gate_normalizer), float(alpha), float(beta),
        BD=_pow2(D), BV=BV, BW=max(_pow2(W), 1),
        USE_REC=use_recurrence, USE_WINDOW=use_window, SCALE_REC=scale_recurrence,
    )  # fmt: skip
    if use_window:
        advance_ring(buffers.win_k, buffers.win_v, buffers.win_mask, buffers.slot, k_rot, v)
    return out.view(B, 1, H, DV)
