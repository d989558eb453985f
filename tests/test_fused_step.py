"""The fused Liger-GLA decoding step (`liger.ops.fused_step`) against the unfused one it replaces.

On the CPU the kernel runs under Triton's interpreter, which must be on (TRITON_INTERPRET=1) before triton is
first imported: `test_the_kernel_under_the_interpreter` runs this file's CPU tests again in a process started with
it. Skipped where triton is not installed. On CUDA (`-m gpu`) the kernel runs compiled, inside the captured graph.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from liger import LigerError, linearize
from liger.decode import GraphDecoder
from tests.conftest import ARCHS, ROOT, assert_same_decoding, tiny_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
FUSABLE = [{}, {"hybrid": "none"}, {"beta": 0.0}, {"alpha": 0.3, "beta": 0.9}]


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="run by test_the_kernel_under_the_interpreter")


def test_the_kernel_under_the_interpreter():
    """This file's CPU tests, in a process with Triton's interpreter on from the start."""
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", __file__],
                         env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def steps(model, prompt, new, *, fused, **kw):
    """Greedy steps after the prompt: (logits of each step, the tokens, the final buffers)."""
    dec = GraphDecoder(model, prompt.shape[0], fused=fused, **kw)
    logits = [dec.prefill(prompt).clone()]
    for _ in range(new - 1):
        logits.append(dec.step().clone())
    return torch.stack(logits, 1), dec


@interpreted
@pytest.mark.parametrize("arch,opts", [(a, {}) for a in ARCHS] + [("llama", o) for o in FUSABLE[1:]], ids=str)
def test_fused_step_equals_the_unfused_one(arch, opts):
    """fp32, GQA, a ring of 7 slots wrapped twice, prompts shorter and longer than the window: the logits of every
    step within 1e-5 (the same sums in another order) and the buffers (state, ring, slot) equal."""
    model = linearize(tiny_model(arch), "liger_gla", window=8, **opts)
    for length in (3, 21):
        prompt = torch.randint(0, 128, (2, length), generator=torch.Generator().manual_seed(length))
        want, ref = steps(model, prompt, 16, fused=False, graph=False, compile=False)
        got, dec = steps(model, prompt, 16, fused=True, graph=False, compile=False)
        assert (got - want).abs().max().item() <= 1e-5
        for a, b in zip(dec.buffers, ref.buffers, strict=True):
            for x, y in zip(a.snapshot(), b.snapshot(), strict=True):
                assert (x.double() - y.double()).abs().max().item() <= 1e-5


@interpreted
def test_fused_step_is_refused_where_it_does_not_apply(monkeypatch):
    """One-line errors: layers the kernel does not compute (HGRN2, an ablation's gate), or no way to run it."""
    for method, opts in [("liger_hgrn2", {}), ("liger_gla", {"gate": "none"}), ("liger_gla", {"gate_source": "q"})]:
        model = linearize(tiny_model("llama"), method, window=8, **opts)
        with pytest.raises(LigerError, match="fused=True needs default Liger-GLA layers"):
            GraphDecoder(model, 1, graph=False, compile=False, fused=True)
    monkeypatch.delenv("TRITON_INTERPRET")
    model = linearize(tiny_model("llama"), "liger_gla", window=8)
    with pytest.raises(LigerError, match=r"fused=True: it runs on CUDA \(or the CPU under TRITON_INTERPRET=1\), "):
        GraphDecoder(model, 1, graph=False, compile=False, fused=True)


@interpreted
def test_a_fused_decoder_leaves_the_model_unfused_for_other_decoders(monkeypatch):
    """`fused` belongs to the decoder (its buffers), not the model: an unfused decoder created after, or beside, a
    fused one on the same model never calls the kernel."""
    import liger.layers.liger as layers

    model = linearize(tiny_model("llama"), "liger_gla", window=8)
    prompt = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    fused = GraphDecoder(model, 1, graph=False, compile=False, fused=True)
    fused.generate(prompt, 3)
    plain = GraphDecoder(model, 1, graph=False, compile=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the unfused decoder ran the fused step")

    monkeypatch.setattr(layers, "gla_step", refuse)
    plain.generate(prompt, 3)
    with pytest.raises(AssertionError, match="ran the fused step"):
        fused.generate(prompt, 3)  # the fused one still takes the kernel's path


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_fused_graph_equals_the_unfused_graph_on_cuda(dtype):
    """Compiled blocks and CUDA graphs both ways: logits within 2e-2 relative (bf16: the branches round to bf16 in
    the same places) or 1e-4 and the same tokens (fp32)."""
    assert os.environ.get("TRITON_INTERPRET") != "1"
    model = linearize(tiny_model("llama"), "liger_gla", window=8).to("cuda", dtype)
    prompt = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert_same_decoding(GraphDecoder(model, 2), GraphDecoder(model, 2, fused=True), prompt, 24, tol,
                         same_tokens=dtype == torch.float32)
