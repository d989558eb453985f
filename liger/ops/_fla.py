"""Dispatch to flash-linear-attention (fla 0.6.0) Triton kernels; CUDA only, imported lazily.

fla 0.6.0 facts this module relies on (read from fla/ops/gla and fla/ops/gsa):
- ``chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, ...)``: layout (B,T,H,K);
  ``scale=None`` means 1/sqrt(K), so scale=1.0 is passed explicitly; the initial state must be float32
  (asserted); q, k and g must have the same shape; no value-dim gate; o comes back in v's dtype.
- ``fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False)``:
  supports a key-dim gate, a value-dim gate, both or none; o comes back in q's dtype; state float32.
- ``chunk_gsa(q, k, v, s, g, scale=None, initial_state=(hk0, hv0), output_final_state=False)`` and
  ``fused_recurrent_gsa(...)`` with the same arguments: they return ``(o, [hk, hv])`` (a list) with
  hk (B,H,K,M) and hv (B,H,M,V) float32; ``scale=None`` again means 1/sqrt(K).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

# fla autotunes each kernel at every new shape (97 s in a new process on an H200, Llama-3-8B shape): keep the
# results on disk beside Triton's compiled kernels, so later processes reuse them. Read when fla's kernels are
# imported, which happens below, lazily; an explicit TRITON_CACHE_AUTOTUNING=0 is kept.
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
# fla's own layers switch from the fused recurrent kernel to the chunked one above 64 tokens.
FUSED_RECURRENT_MAX_T = 64


@functools.cache
def fla_importable() -> bool:
    """True when fla's Triton kernels can be imported (needs triton; fla.ops imports it eagerly)."""
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("fla") is None:
        return False
    try:
        import fla.ops.gla  # noqa: F401
        import fla.ops.gsa  # noqa: F401
    except Exception:  # any import failure means "not usable"
        return False
    if torch.cuda.is_available():
        from liger.ops.tuning import start

        start()  # configurations chosen ahead, where a table has them (liger.ops.tuning)
    return True


def fla_usable(*tensors: Tensor | None) -> bool:
    """True when all given tensors live on CUDA and fla imports."""
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(t.is_cuda for t in ts) and fla_importable()


def _state(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.float().contiguous()


def fla_gated_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor | None,
    gv: Tensor | None,
    initial_state: Tensor | None,
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """GLA recurrence through fla: chunk_gla for T > 64 and gv None, fused_recurrent_gla otherwise."""
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    T = q.shape[1]
    h0 = _state(initial_state)
    if gv is None and T > FUSED_RECURRENT_MAX_T:
        g = gk if gk is not None else torch.zeros_like(q, dtype=torch.float32)
        o, ht = chunk_gla(q, k, v, g, scale=1.0, initial_state=h0, output_final_state=output_final_state)
    else:
        o, ht = fused_recurrent_gla(
            q, k, v, gk=gk, gv=gv, scale=1.0, initial_state=h0, output_final_state=output_final_state
        )
    return o.to(v.dtype), (ht if output_final_state else None)


def fla_gated_slot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    initial_state: tuple[Tensor, Tensor] | None,
    output_final_state: bool,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """GSA through fla: chunk_gsa for T > 64, fused_recurrent_gsa otherwise (scale 1)."""
    from fla.ops.gsa import chunk_gsa, fused_recurrent_gsa

    T = q.shape[1]
    h0 = None if initial_state is None else (_state(initial_state[0]), _state(initial_state[1]))
    fn = chunk_gsa if T > FUSED_RECURRENT_MAX_T else fused_recurrent_gsa
    o, final = fn(q, k, v, s, g, scale=1.0, initial_state=h0, output_final_state=output_final_state)
    state = (final[0], final[1]) if output_final_state else None
    return o.to(v.dtype), state
