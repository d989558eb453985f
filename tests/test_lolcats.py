"""The LoLCATs layer (liger.layers.lolcats, liger.methods.lolcats): feature map, the hybrid against a float64
term-by-term reference, decoding, padding, parameters, save/load, and the two variants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import liger
from liger import LigerError, count_parameters, linearize
from liger.cache import LigerCacheLayer
from liger.layers.base import repeat_heads, rotate
from liger.layers.lolcats import HedgehogFeatureMap, LolcatsAttention, init_feature_maps
from liger.methods.lolcats import INIT_WINDOW_FACTOR, LolcatsOptions, added_parameters
from liger.ops.hybrid import absorb, hybrid_attention
from liger.ops.reference import lolcats_sets, naive_hedgehog, naive_lolcats_attention
from tests.conftest import ARCHS, tiny_model
from tests.test_convert import ATOL, cache_sizes, decode_logits, ids, padded_batch

SMALL = {"window": 5, "query_block": 8}  # 23 tokens: several query blocks, and keys leave the window


def lolcats(arch: str = "llama", **options):
    return linearize(tiny_model(arch), "lolcats", **{**SMALL, **options})


def attentions(model) -> list[LolcatsAttention]:
    return [m for m in model.modules() if isinstance(m, LolcatsAttention)]


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------ feature map


def test_feature_map_shape_and_identity_init():
    fq, fk = HedgehogFeatureMap(3, 16, 8), HedgehogFeatureMap(3, 16, 8)
    init_feature_maps(fq, fk, "identity")
    assert fq.weight.shape == (3, 16, 8) and fq.weight.dtype == torch.float32
    eye = torch.eye(16, 8)
    assert all(torch.equal(fq.weight[h], eye) and torch.equal(fk.weight[h], eye) for h in range(3))
    x = rand(2, 5, 3, 16)
    phi = fq(x)
    assert phi.shape == (2, 5, 3, 16) and phi.dtype == torch.float64
    # identity: [softmax(x[:8]), softmax(-x[:8])], summing to 1 + 1, clamped at 1e-12
    want = torch.cat([x[..., :8].softmax(-1), (-x[..., :8]).softmax(-1)], dim=-1)
    assert torch.allclose(phi, want, atol=1e-15)
    assert torch.allclose(phi.sum(-1), torch.full((2, 5, 3), 2.0, dtype=torch.float64))
    assert (fq(rand(1, 1, 3, 16) * 1e4) >= 1e-12).all()


def test_feature_map_matches_float64_reference_per_head():
    fq, fk = HedgehogFeatureMap(4, 16, 12), HedgehogFeatureMap(4, 16, 12)
    torch.manual_seed(0)
    init_feature_maps(fq, fk, "normal")
    assert not torch.equal(fq.weight, fk.weight)  # the re-run draws q and k independently
    assert abs(fq.weight.std().item() - 0.02) < 0.003
    x = rand(2, 7, 4, 16, dtype=torch.float32)
    assert torch.allclose(fq(x).double(), naive_hedgehog(x, fq.weight), atol=1e-6)
    init_feature_maps(fq, fk, "kaiming")
    assert torch.equal(fq.weight, fk.weight) and fq.weight.abs().max() <= 1 / math.sqrt(16 * 12)


def test_layer_parameters_and_variant_defaults():
    model = lolcats("llama", window_shape="sliding")
    layer = attentions(model)[0]
    H, D = 4, 16
    assert layer.feature_map_q.weight.shape == layer.feature_map_k.weight.shape == (H, D, 16)  # min(64, D)
    assert torch.equal(layer.feature_map_q.weight, layer.feature_map_k.weight)
    assert torch.allclose(torch.sigmoid(layer.window_factors), torch.full((H,), 0.1))
    opts = liger.options_of(model)
    assert (opts.window_shape, opts.feature_init, opts.eps, opts.train_window_factor) == ("sliding", "identity", 0,
                                                                                           True)
    rerun = LolcatsOptions(variant="liger")
    assert (rerun.window_shape, rerun.feature_dim, rerun.feature_init, rerun.eps, rerun.train_window_factor) == (
        "sliding", 128, "normal", 1e-6, False)
    assert LolcatsOptions().window_shape == "terraced" and LolcatsOptions().init_window_factor == INIT_WINDOW_FACTOR


@pytest.mark.parametrize("variant", ["original", "liger"])
@pytest.mark.parametrize("softmax_layers", [[], [1]])
def test_added_parameters_are_the_feature_maps_and_window_factors(variant, softmax_layers):
    base = tiny_model("llama")
    n = count_parameters(base)
    model = linearize(base, "lolcats", variant=variant, softmax_layers=softmax_layers)
    f = 16 if variant == "original" else 128
    per_layer = 2 * 4 * 16 * f + 4  # two (H, D, F) maps + H window factors
    converted = 2 - len(softmax_layers)
    assert count_parameters(model) - n == per_layer * converted == added_parameters(model.config,
                                                                                    liger.options_of(model))
    new = {name for name, _ in model.named_parameters()} - {name for name, _ in tiny_model("llama").named_parameters()}
    assert len(new) == 3 * converted and all(name.split(".")[-2:][0] in ("feature_map_q", "feature_map_k")
                                             or name.endswith("window_factors") for name in new)


# ------------------------------------------------------------------------------ the hybrid vs float64


def test_terraced_sets_match_the_specification_example():
    # docs/lolcats.md#windows-terraced-and-sliding: w = 4, L = 10, blocks {0..3}, {4..7}, {8, 9}
    sets = lolcats_sets(10, 4, "terraced")
    assert sets[8] == ([4, 5, 6, 7, 8], [0, 1, 2, 3])
    assert sets[7] == ([0, 1, 2, 3, 4, 5, 6, 7], [])
    assert sets[9] == ([4, 5, 6, 7, 8, 9], [0, 1, 2, 3])
    assert sets[:7] == lolcats_sets(7, 4, "terraced")  # a query's sets do not depend on the length after it
    assert lolcats_sets(10, 4, "sliding")[6] == ([3, 4, 5, 6], [0, 1, 2])


def _end_aligned_sets(length: int, window: int) -> list[tuple[list[int], list[int]]]:
    """LoLCATs' code's terraced cut: blocks end at the last position (block(j) = (j + (-length) % w) // w)."""
    off = (-length) % window
    sets = []
    for i in range(length):
        win = [j for j in range(i + 1) if (j + off) // window >= (i + off) // window - 1]
        sets.append((win, [j for j in range(i + 1) if j not in win]))
    return sets


@pytest.mark.parametrize("window", [1, 3, 4, 5])
def test_start_and_end_aligned_cuts_coincide_on_whole_blocks(window):
    """The cut from the start equals LoLCATs' cut from the end when the length is a multiple of w (and when it is at
    most 2w: no query then has a linear part); otherwise they differ."""
    for length in range(1, 5 * window + 3):
        same = lolcats_sets(length, window, "terraced") == _end_aligned_sets(length, window)
        assert same == (length % window == 0 or length <= 2 * window), length


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_training_chunks_of_whole_blocks_compute_as_before(arch, monkeypatch):
    """Unpadded chunks of 1024 tokens (a multiple of every block length used): the model's outputs are bit for bit
    those of the end-aligned cut, so models trained before the change stay valid; 1000 tokens differ."""
    tokens = ids(length=1024, seed=3)
    for window, query_block in ((64, 1024), (16, 256)):
        model = lolcats(arch, window=window, query_block=query_block, window_shape="terraced")
        with torch.no_grad():
            start = model(tokens).logits
            part = model(tokens[:, :1000]).logits
            # the end-aligned cut, as the blocks starting at T % w (block indices shifted by a constant)
            monkeypatch.setattr(LolcatsAttention, "first_real", staticmethod(lambda valid, n, T, w=window: T % w))
            end = model(tokens).logits
            end_part = model(tokens[:, :1000]).logits
            monkeypatch.undo()
        assert torch.equal(start, end), window
        assert (part - end_part).abs().max().item() > 1e-3, window


def _hybrid_inputs(B=2, T=13, H=3, D=8, F=6, seed=0):
    q, k, v = (rand(B, T, H, D, seed=seed + i) for i in range(3))
    fq, fk = (rand(B, T, H, F, seed=seed + 3 + i).softmax(-1) for i in range(2))
    gamma = torch.sigmoid(rand(H, seed=seed + 5))
    return q, k, v, fq, fk, gamma


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
@pytest.mark.parametrize("window,eps", [(4, 0.0), (3, 1e-6), (1, 0.0), (20, 0.0)])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_hybrid_normalisation_matches_float64_term_by_term(shape, window, eps, dtype, atol):
    q, k, v, fq, fk, gamma = _hybrid_inputs()
    T = q.shape[1]
    want = naive_lolcats_attention(q, k, v, fq, fk, gamma, window, shape, scale=0.3, eps=eps)
    pos = torch.arange(T)
    got = hybrid_attention(*(t.to(dtype) for t in (q, k, v, fq, fk, gamma)), window=window, qpos=pos, kpos=pos,
                           shape=shape, scale=0.3, eps=eps)
    assert got.dtype == dtype
    assert (got.double() - want).abs().max().item() <= atol


def test_the_window_max_shift_is_part_of_the_function():
    """The window terms are shifted by their max, the linear ones are not: scaling all logits changes y."""
    q, k, v, fq, fk, gamma = _hybrid_inputs(B=1, T=9)
    a = naive_lolcats_attention(q, k, v, fq, fk, gamma, 3, scale=0.3)
    b = naive_lolcats_attention(q, k, v, fq, fk, gamma, 3, scale=0.6)
    assert (a - b)[:, 3:].abs().max() > 1e-3  # rows with a linear part
    # the largest window term equals gamma: with zero features the window part alone is a softmax
    zero = naive_lolcats_attention(q, k, v, fq * 0, fk * 0, gamma, 3, scale=0.3)
    pos = torch.arange(9)
    got = hybrid_attention(q, k, v, fq * 0, fk * 0, gamma, window=3, qpos=pos, kpos=pos, scale=0.3)
    assert torch.allclose(got, zero, atol=1e-12)


def test_state_and_key_blocks_equal_one_pass():
    """Keys given as (S, z) plus a later block of keys: the same output as all keys at once."""
    q, k, v, fq, fk, gamma = _hybrid_inputs(T=17)
    pos = torch.arange(17)
    full = hybrid_attention(q, k, v, fq, fk, gamma, window=4, qpos=pos, kpos=pos, scale=0.3)
    first = 7  # keys 0..6 in the state; queries 11.. never see them in their window
    state = absorb(None, fk[:, :first], v[:, :first], None)
    part = hybrid_attention(q[:, 11:], k[:, first:], v[:, first:], fq[:, 11:], fk[:, first:], gamma, window=4,
                            qpos=pos[11:], kpos=pos[first:], scale=0.3, state=state)
    assert (part - full[:, 11:]).abs().max().item() <= 1e-12


def test_gradients_reach_feature_maps_and_window_factors():
    model = lolcats("llama", window_shape="terraced")
    model(ids()).logits.square().mean().backward()
    for layer in attentions(model):
        for p in (layer.feature_map_q.weight, layer.feature_map_k.weight, layer.window_factors):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["original", "liger"])
def test_decoding_equals_parallel_forward_with_the_sliding_window(arch, variant):
    model = lolcats(arch, variant=variant, window_shape="sliding")
    tokens = ids()
    with torch.no_grad():
        full = model(tokens).logits
        for prefill in (0, 1, 11):
            step = decode_logits(model, tokens, prefill)
            assert (step - full).abs().max().item() <= ATOL, f"prefill {prefill}"


def test_query_blocks_do_not_change_the_output():
    tokens = ids(length=40)
    for shape in ("sliding", "terraced"):
        with torch.no_grad():
            one = lolcats("mistral", window_shape=shape, query_block=64)(tokens).logits
            blocks = lolcats("mistral", window_shape=shape, query_block=7)(tokens).logits
        assert (one - blocks).abs().max().item() <= ATOL, shape


W = SMALL["window"]
TERRACED_ATOL = 1e-5  # fp32 decoding vs the parallel forward (seen: 2.4e-7)
F64_ATOL = 1e-12  # the same in float64 (seen: 3.3e-16)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("variant", ["original", "liger"])
@pytest.mark.parametrize("prefill", [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 22])
def test_terraced_decoding_equals_parallel_forward(arch, variant, prefill):
    """Decoding from the first token (prefill 0) or after a prompt of any length (shorter than a block, up to
    w + 1, ending before, at or after a multiple of the window, over several query blocks): the logits equal the
    parallel forward's at every step of a sequence of 23 tokens (not a multiple of the window)."""
    model = lolcats(arch, variant=variant, window_shape="terraced")
    tokens = ids(batch=2)
    with torch.no_grad():
        step, full = decode_logits(model, tokens, prefill), model(tokens).logits
    assert (step - full).abs().max().item() <= TERRACED_ATOL


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
@pytest.mark.parametrize("prefill", [0, 4, 7, 11])
def test_decoding_equals_parallel_forward_in_float64(shape, prefill):
    model = lolcats("mistral", window_shape=shape).double()
    tokens = ids(batch=2)
    with torch.no_grad():
        step, full = decode_logits(model, tokens, prefill), model(tokens).logits
    assert step.dtype == torch.float64 and (step - full).abs().max().item() <= F64_ATOL


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("variant", ["original", "liger"])
@pytest.mark.parametrize("lengths", [(12, 6), (8, 1), (3, 5)])
def test_terraced_left_padded_generate_equals_parallel_forward(arch, variant, lengths):
    """`generate` (left padding, batch 2, its cache): the logits of every step equal the parallel forward's over
    the generated sequences, whose blocks start at each row's first real token."""
    model = lolcats(arch, variant=variant, window_shape="terraced")
    model.generation_config.eos_token_id = None
    batch, mask = padded_batch([ids(length=n, seed=n)[0] for n in lengths])
    new = 2 * W + 3
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        steps = torch.stack(out.logits, dim=1)
        mask = torch.cat([mask, torch.ones(2, new, dtype=mask.dtype)], dim=1)
        full = model(out.sequences, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    width = batch.shape[1]
    assert (steps - full[:, width - 1:-1]).abs().max().item() <= TERRACED_ATOL


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, TERRACED_ATOL), (torch.float64, F64_ATOL)])
def test_a_position_does_not_depend_on_later_tokens(shape, dtype, atol):
    """The parallel forward over the first n tokens gives the first n outputs of the forward over all of them
    (lm-eval scores a continuation with one forward over prompt and continuation)."""
    model = lolcats("llama", window_shape=shape).to(dtype)
    tokens = ids(batch=2, length=31)
    with torch.no_grad():
        full = model(tokens).logits
        for n in (1, 4, 5, 6, 9, 13, 17, 22, 30):
            assert (model(tokens[:, :n]).logits - full[:, :n]).abs().max().item() <= atol, n


def test_terraced_layer_matches_the_float64_reference():
    """One layer in float64 (grouped-query heads) over 3 + 4 blocks, in parallel (in query blocks) and token by
    token from the first, against the term-by-term reference, whose blocks are cut from the start."""
    model = lolcats("mistral", window_shape="terraced").double()
    layer = attentions(model)[0]
    T = 3 + 4 * W
    x = rand(2, T, model.config.hidden_size)
    cache, got = LigerCacheLayer(layer.cached_keys), []
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(x, torch.arange(T)[None])
        q, k, v = layer.project(x)
        qr, kr = rotate(q, cos, sin), repeat_heads(rotate(k, cos, sin), layer.n_rep)
        want = naive_lolcats_attention(qr, kr, repeat_heads(v, layer.n_rep), layer.feature_map_q(qr),
                                       layer.feature_map_k(kr), torch.sigmoid(layer.window_factors), W, "terraced",
                                       scale=layer.scaling, eps=layer.options.eps)
        parallel = layer.mix(q, k, v, (cos, sin), None, None)
        for t in range(T):
            got.append(layer.mix(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], (cos[:, t:t + 1], sin[:, t:t + 1]),
                                 None, cache))
            cache.seen += 1
    assert (parallel - want).abs().max().item() <= 1e-12
    assert (torch.cat(got, dim=1) - want).abs().max().item() <= 1e-12


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
def test_bf16_decoding_follows_the_parallel_forward(shape):
    model = lolcats("llama", window_shape=shape).to(torch.bfloat16)
    tokens = ids(length=11 + 3 * W)
    with torch.no_grad():
        step, full = decode_logits(model, tokens, 11).float(), model(tokens).logits.float()
    assert ((step - full).abs().max() / full.abs().max()).item() <= 2e-2


def test_terraced_left_padded_generate_equals_singles():
    """`generate` pads on the left: every row's blocks start at its first real token, as its own."""
    model = lolcats("llama", window_shape="terraced")
    model.generation_config.eos_token_id = None
    seqs = [ids(length=n, seed=n)[0] for n in (12, 6)]  # 6 pads: not a whole block
    batch, mask = padded_batch(seqs)
    kw = dict(max_new_tokens=2 * W + 2, do_sample=False, pad_token_id=0, output_logits=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        together = torch.stack(model.generate(batch, attention_mask=mask, **kw).logits, dim=1)
        for i, s in enumerate(seqs):
            alone = torch.stack(model.generate(s[None], **kw).logits, dim=1)
            assert (together[i] - alone[0]).abs().max().item() <= TERRACED_ATOL


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
@pytest.mark.parametrize("prefill", [0, 3, 8])
def test_prompt_in_several_forwards_equals_parallel_forward(shape, prefill):
    """A left-padded prompt fed in two forwards (the first holding only padding for one row when prefill is 3),
    then decoding: the blocks still start at each row's first real token."""
    model = lolcats("mistral", window_shape=shape, query_block=4)
    batch, mask = padded_batch([ids(length=n, seed=n)[0] for n in (14, 8)])
    tokens = torch.cat([batch, ids(batch=2, length=2 * W + 1, seed=5)], dim=1)
    mask = torch.cat([mask, torch.ones(2, 2 * W + 1, dtype=mask.dtype)], dim=1)
    cache, out = DynamicCache(), []
    with torch.no_grad():
        full = model(tokens, attention_mask=mask).logits
        for a, b in [(0, prefill), (prefill, 14)] + [(t, t + 1) for t in range(14, tokens.shape[1])]:
            if b > a:
                out.append(model(tokens[:, a:b], attention_mask=mask[:, :b], past_key_values=cache,
                                 use_cache=True).logits)
    assert (torch.cat(out, dim=1) - full)[mask.bool()].abs().max().item() <= TERRACED_ATOL


def test_terraced_decoding_after_right_padding_continues_its_blocks():
    """A right-padded prompt (lm-eval's batches) then decoding: the padding keeps its positions, so the outputs are
    those of the parallel forward over the same padded sequence, blocks counted from the first token."""
    model = lolcats("llama", window_shape="terraced")
    batch, mask = padded_batch([ids(length=n, seed=n)[0] for n in (12, 8)], side="right")
    tokens = torch.cat([batch, ids(batch=2, length=2 * W + 1, seed=4)], dim=1)
    mask = torch.cat([mask, torch.ones(2, 2 * W + 1, dtype=mask.dtype)], dim=1)
    cache, out = DynamicCache(), []
    with torch.no_grad():
        full = model(tokens, attention_mask=mask).logits
        out.append(model(batch, attention_mask=mask[:, :12], past_key_values=cache, use_cache=True).logits)
        for t in range(12, tokens.shape[1]):
            out.append(model(tokens[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache,
                             use_cache=True).logits)
    assert (torch.cat(out, dim=1) - full)[mask.bool()].abs().max().item() <= TERRACED_ATOL


@pytest.mark.parametrize("shape,kept", [("sliding", W), ("terraced", 2 * W - 1)])
def test_cache_is_constant_in_length(shape, kept):
    model = lolcats("llama", window_shape=shape)
    cache = cache_sizes(model)  # 1000 tokens in chunks of 100
    layer = cache.layers[0]
    S, z, start = layer.state
    assert S.shape == (1, 4, 2 * 16, 16) and z.shape == (1, 4, 2 * 16) and layer.win_k.shape[1] == kept
    size = cache.nbytes()
    with torch.no_grad():
        for t in range(4 * W + 3):  # token by token over four block boundaries
            model(ids(length=1, seed=t), past_key_values=cache, use_cache=True)
    assert cache.nbytes() == size and layer.win_k.shape[1] == kept


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
def test_left_padded_batch_equals_singles(shape):
    """With position ids counted from each row's first token (as `generate` does): the feature maps act on the
    rotated q and k, so LoLCATs, unlike Liger, depends on absolute positions."""
    model = lolcats("qwen3", window_shape=shape)
    seqs = [ids(length=n, seed=10 + n)[0] for n in (23, 15, 8)]
    batch, mask = padded_batch(seqs)
    width = batch.shape[1]
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        for i, s in enumerate(seqs):
            alone = model(s[None]).logits[0]
            assert (padded[i, width - len(s):] - alone).abs().max().item() <= ATOL


@pytest.mark.parametrize("shape", ["sliding", "terraced"])
def test_right_padded_batch_equals_singles(shape):
    """lm-eval's log-likelihood batches are right-padded: the real tokens of each row are cut as alone."""
    model = lolcats("llama", window_shape=shape)
    seqs = [ids(length=n, seed=n)[0] for n in (23, 17, 9)]
    batch, mask = padded_batch(seqs, side="right")
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            assert (padded[i, :len(s)] - model(s[None]).logits[0]).abs().max().item() <= ATOL


def test_generate_matches_greedy_by_full_forward():
    model = lolcats("mistral", variant="liger")
    prompt = ids(length=9)
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(10):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen, seq)


# ---------------------------------------------------------------------------------- save, load, errors


@pytest.mark.parametrize("variant", ["original", "liger"])
def test_save_and_load_roundtrip(variant, tmp_path):
    model = lolcats("qwen2", variant=variant, softmax_layers=[0])
    with torch.no_grad():
        for layer in attentions(model):  # trained-looking weights, so that loading them is checked
            layer.feature_map_q.weight.add_(0.1 * torch.randn_like(layer.feature_map_q.weight))
            layer.window_factors.add_(torch.randn_like(layer.window_factors))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "liger_qwen2" and cfg["liger"]["method"] == "lolcats"
    assert cfg["liger"]["variant"] == variant
    tokens = ids()
    with torch.no_grad():
        want = model(tokens).logits
        for loaded in (liger.load(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
            assert liger.options_of(loaded) == liger.options_of(model)
            assert torch.equal(loaded.eval()(tokens).logits, want)


def test_loading_with_other_layer_options_computes_the_same_weights_otherwise(tmp_path):
    """The original's terraced model loaded with the sliding window: the same weights, the sliding model's outputs
    (what `liger evaluate --layer-options` scores)."""
    model = lolcats("llama", window_shape="terraced")
    with torch.no_grad():
        for layer in attentions(model):
            layer.feature_map_k.weight.add_(0.1 * torch.randn_like(layer.feature_map_k.weight))
    model.save_pretrained(tmp_path / "m")
    sliding = lolcats("llama", window_shape="sliding")
    sliding.load_state_dict(model.state_dict())
    loaded = liger.load(tmp_path / "m", layer_options={"window_shape": "sliding"}).eval()
    assert liger.options_of(loaded) == liger.options_of(sliding)
    tokens = ids()
    with torch.no_grad():
        got, terraced = loaded(tokens).logits, model(tokens).logits
        assert (got - sliding.eval()(tokens).logits).abs().max().item() <= ATOL
        assert (got - terraced).abs().max().item() > 1e-3
    with pytest.raises(LigerError, match=r"\['feature_dim'\]: only window, window_shape, query_block"):
        liger.load(tmp_path / "m", layer_options={"feature_dim": 8})
    with pytest.raises(LigerError, match="window_shape='tk'"):
        liger.load(tmp_path / "m", layer_options={"window_shape": "tk"})
    tiny_model("llama").save_pretrained(tmp_path / "base")
    with pytest.raises(LigerError, match="not a converted model"):
        liger.load(tmp_path / "base", layer_options={"window": 8})


def test_bad_options_are_one_line_errors():
    with pytest.raises(LigerError, match="variant='lg'"):
        linearize(tiny_model("llama"), "lolcats", variant="lg")
    with pytest.raises(LigerError, match="unknown LoLCATs option.*windw"):
        linearize(tiny_model("llama"), "lolcats", windw=3)
    with pytest.raises(LigerError, match="window_shape='tk'"):
        linearize(tiny_model("llama"), "lolcats", window_shape="tk")
    with pytest.raises(LigerError, match="window, query_block"):
        linearize(tiny_model("llama"), "lolcats", window=0)
    with pytest.raises(LigerError, match="already linearized"):
        linearize(lolcats(), "lolcats")
    with pytest.raises(LigerError, match="lolcats"):
        linearize(tiny_model("llama"), "lolcat")


@pytest.mark.slow
def test_smollm2_added_parameters_both_variants(smollm2_dir):
    counts = {}
    for variant in ("original", "liger"):
        model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
        n = count_parameters(model)
        linearize(model, "lolcats", variant=variant)
        counts[variant] = count_parameters(model) - n
    # 30 layers x (2 maps x 9 heads x 64 x f + 9 window factors), f = 64 (original) or 128 (re-run)
    assert counts == {"original": 30 * (2 * 9 * 64 * 64 + 9), "liger": 30 * (2 * 9 * 64 * 128 + 9)}
