"""Sequence-mixing kernels for Liger: gated linear recurrences, gated slot attention, sliding-window attention.

Layout is (batch, time, heads, dim) everywhere, as in flash-linear-attention. Each op has pure PyTorch paths
(any device, differentiable) and dispatches to fla / flash-attn / flex attention on CUDA when ``impl="auto"``.
"""

from liger.ops.recurrence import gated_recurrence, gated_slot_attention
from liger.ops.window import sliding_window_attention, window_decode_step

__all__ = ["gated_recurrence", "gated_slot_attention", "sliding_window_attention", "window_decode_step"]
