"""GraphDecoder: fixed-buffer decoding equals the parallel forward (CPU, fp32, 1e-4) and, on CUDA, its graph replay.

The CPU tests run the same in-place step that the CUDA graph captures, without the graph.
"""

from __future__ import annotations

import pytest
import torch

from liger import LigerError, linearize
from liger.decode import GraphDecoder
from liger.ops import sliding_window_attention, window_decode_step
from tests.conftest import ARCHS, LIGER_ABLATIONS, LIGER_VARIANTS, assert_same_decoding, perturb_added, tiny_model

VARIANTS = [v for v in LIGER_VARIANTS if not v[1].get("softmax_layers")]  # graph decoding needs every layer
TOL = 1e-4


def check_against_forward(model, prompt: torch.Tensor, new: int, **kw) -> torch.Tensor:
    """Decode greedily; every step's logits must equal the parallel forward's on the generated sequence."""
    dec = GraphDecoder(model, prompt.shape[0], graph=False, compile=False, **kw)
    logits = [dec.prefill(prompt).clone()]
    tokens = [dec.token.clone()]
    for _ in range(new - 1):
        logits.append(dec.step().clone())
        tokens.append(dec.token.clone())
    seq = torch.cat([prompt, *tokens], dim=1)
    with torch.no_grad():
        full = model(seq).logits[:, prompt.shape[1] - 1:-1]
    assert (torch.stack(logits, 1) - full).abs().max().item() <= TOL
    return seq


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,opts", VARIANTS, ids=str)
def test_decoder_matches_forward(arch, method, opts):
    model = linearize(tiny_model(arch), method, window=8, **opts)
    prompt = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(0))
    seq = check_against_forward(model, prompt, 20, prefill_chunk=5)  # 20 steps wrap the 8-slot ring twice
    model.generation_config.eos_token_id = None  # no early stop: compare all 20 tokens
    ref = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(seq, ref)


@pytest.mark.parametrize("method,opts", LIGER_ABLATIONS, ids=str)
def test_decoder_matches_forward_with_the_ablation_options(method, opts):
    """The fixed-buffer step with each Table 12 option (the gate projection reads the step's own input), its
    added parameters off their init; and `generate` with the Liger cache gives the same tokens."""
    model = perturb_added(linearize(tiny_model("llama"), method, window=8, **opts))
    prompt = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(0))
    seq = check_against_forward(model, prompt, 12, prefill_chunk=5)
    model.generation_config.eos_token_id = None
    assert torch.equal(seq, model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize("length", [3, 8, 30])  # shorter than, equal to and longer than the window
def test_prompt_lengths_around_the_window(length):
    model = linearize(tiny_model("llama"), "liger_gla", window=8)
    prompt = torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(length))
    check_against_forward(model, prompt, 12, prefill_chunk=None)


def test_left_padded_batch_equals_singles():
    model = linearize(tiny_model("llama"), "liger_gla", window=4)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 128, (n,), generator=g) for n in (9, 5)]
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, 9 - len(s):], mask[i, 9 - len(s):] = s, 1
    together = GraphDecoder(model, 2, graph=False, compile=False, prefill_chunk=4).generate(batch, 10, mask)
    for i, s in enumerate(seqs):
        alone = GraphDecoder(model, 1, graph=False, compile=False).generate(s[None], 10)
        assert torch.equal(together[i, 9:], alone[0, len(s):])


def test_buffers_are_reused_across_prompts():
    model = linearize(tiny_model("llama"), "liger_gla", window=4)
    dec = GraphDecoder(model, 1, graph=False, compile=False)
    a, b = (torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(n)) for n in (6, 11))
    dec.generate(a, 5)
    buffers = [id(t) for buf in dec.buffers for t in (buf.state, buf.win_k)]
    again = dec.generate(b, 5)
    assert [id(t) for buf in dec.buffers for t in (buf.state, buf.win_k)] == buffers
    assert torch.equal(again, GraphDecoder(model, 1, graph=False, compile=False).generate(b, 5))


def test_window_decode_step_matches_sliding_window_attention():
    g = torch.Generator().manual_seed(0)
    B, W, H, Hkv, D, T = 2, 5, 4, 2, 8, 13
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, Hkv, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, Hkv, D, generator=g, dtype=torch.float64)
    want = sliding_window_attention(q, k, v, W, scale=0.3, impl="reference")
    win_k, win_v = k.new_zeros(B, W, Hkv, D), v.new_zeros(B, W, Hkv, D)
    win_mask = torch.zeros(B, W, dtype=torch.bool)
    slot = torch.zeros(1, dtype=torch.long)
    got = torch.cat([window_decode_step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], win_k, win_v, win_mask, slot, 0.3)
                     for t in range(T)], dim=1)
    assert (got - want).abs().max().item() <= 1e-12


def test_inter_layer_hybrid_and_bad_inputs_are_refused():
    model = linearize(tiny_model("llama"), "liger_gla", softmax_layers=[1])
    with pytest.raises(LigerError, match="layers \\[1\\] keep softmax attention"):
        GraphDecoder(model)
    with pytest.raises(LigerError, match="not LolcatsAttention"):
        GraphDecoder(linearize(tiny_model("llama"), "lolcats"))
    model = linearize(tiny_model("llama"), "liger_gla")
    with pytest.raises(LigerError, match="CUDA graphs need"):
        GraphDecoder(model, graph=True)
    dec = GraphDecoder(model, 2, graph=False, compile=False)
    with pytest.raises(LigerError, match="call prefill"):
        dec.step()
    with pytest.raises(LigerError, match="takes batch 2"):
        dec.prefill(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.slow
def test_compiled_block_equals_eager():
    """torch.compile'd blocks (one compilation for all layers) give the eager step's tokens."""
    model = linearize(tiny_model("llama", num_hidden_layers=3), "liger_gla", window=4)
    prompt = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    eager = GraphDecoder(model, graph=False, compile=False).generate(prompt, 6)
    compiled = GraphDecoder(model, graph=False, compile=True).generate(prompt, 6)
    assert torch.equal(compiled, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method,opts,dtype", [(m, o, torch.bfloat16) for m, o in VARIANTS]
                         + [("liger_gla", {}, torch.float32)], ids=str)
def test_cuda_graph_replay_equals_eager_steps(method, opts, dtype):
    """The captured graph (with compiled blocks) replays the eager step: same tokens, logits within 1e-3 relative
    (fp32; compiled kernels may reorder sums) or 2e-2 (bf16)."""
    model = linearize(tiny_model("llama"), method, window=8, **opts).to("cuda", dtype)
    prompt = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    eager = GraphDecoder(model, 2, graph=False, compile=False)
    graph = GraphDecoder(model, 2, graph=True, compile=True)
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    assert_same_decoding(eager, graph, prompt, 24, tol, same_tokens=dtype == torch.float32)
