"""Converted models on CUDA through fla's kernels: decoding vs the parallel forward, fla vs the chunked path.

Tolerance: fla runs fp32 products in TF32 (relative 2^-11 per product), so logits are compared at 5e-3 of
their largest magnitude instead of the CPU tests' 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from liger import linearize
from liger.ops._fla import fla_importable
from tests.conftest import tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or not fla_importable(), reason="needs CUDA and fla"),
]
TOL = 5e-3
VARIANTS = [
    ("liger_gla", {}),
    ("liger_hgrn2", {}),
    ("liger_gsa", {"num_slots": 16}),
    ("liger_gla", {"hybrid": "none"}),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("method,opts", VARIANTS, ids=str)
def test_fla_forward_and_decode_match_chunked(method, opts):
    tokens = torch.randint(0, 128, (2, 300), generator=torch.Generator().manual_seed(0)).cuda()
    fla = linearize(tiny_model("llama"), method, window=16, **opts).cuda()
    ref = linearize(tiny_model("llama"), method, window=16, impl="chunk", **opts).cuda()
    with torch.no_grad():
        want = ref(tokens).logits
        got = fla(tokens).logits
        assert rel(got, want) <= TOL
        cache = DynamicCache()
        steps = [fla(tokens[:, :200], past_key_values=cache, use_cache=True).logits]
        for t in range(200, 300):
            steps.append(fla(tokens[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        assert rel(torch.cat(steps, 1), want) <= TOL
