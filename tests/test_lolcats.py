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
    # docs/lolcats.md#windows-terraced-and-sliding: w = 4, L = 10, blocks {0,1}, {2..5}, {6..9}
    sets = lolcats_sets(10, 4, "terraced")
    assert sets[6] == ([2, 3, 4, 5, 6], [0, 1])
    assert sets[5] == ([0, 1, 2, 3, 4, 5], [])
    assert sets[9] == ([2, 3, 4, 5, 6, 7, 8, 9], [0, 1])
    assert lolcats_sets(10, 4, "sliding")[6] == ([3, 4, 5, 6], [0, 1, 2])


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
                           shape=shape, offset=(-T) % window if shape == "terraced" else 0, scale=0.3, eps=eps)
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


def test_terraced_prefill_is_exact_and_decoding_continues_with_the_sliding_window():
    """The original's terraced window: a prefill gives the terraced parallel output; the tokens after it decode
    with the sliding window (as the original code does), i.e. exactly the sliding model's continuation."""
    one_layer = dict(num_hidden_layers=1)  # so that the two models' keys and values are the same
    terraced = linearize(tiny_model("llama", **one_layer), "lolcats", window_shape="terraced", **SMALL)
    sliding = linearize(tiny_model("llama", **one_layer), "lolcats", window_shape="sliding", **SMALL)
    tokens = ids()
    with torch.no_grad():
        cache = DynamicCache()
        pre = terraced(tokens[:, :11], past_key_values=cache, use_cache=True).logits
        assert (pre - terraced(tokens[:, :11]).logits).abs().max().item() <= ATOL
        nxt = terraced(tokens[:, 11:12], past_key_values=cache, use_cache=True).logits
        # the state after a prefill is the sliding split: decoding 11 -> 12 equals the sliding model's
        cache2 = DynamicCache()
        sliding(tokens[:, :11], past_key_values=cache2, use_cache=True)
        want = sliding(tokens[:, 11:12], past_key_values=cache2, use_cache=True).logits
        assert (nxt - want).abs().max().item() <= ATOL
        # and it is not the terraced parallel output at position 11 (that one is not decodable exactly)
        assert (nxt[:, 0] - terraced(tokens[:, :12]).logits[:, 11]).abs().max().item() > 1e-3


def test_cache_is_constant_in_length():
    layer = cache_sizes(lolcats("llama", window_shape="sliding")).layers[0]
    S, z = layer.state
    assert S.shape == (1, 4, 2 * 16, 16) and z.shape == (1, 4, 2 * 16) and layer.win_k.shape[1] == 5


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
    """lm-eval's log-likelihood batches are right-padded: terraced blocks align to each row's last real token."""
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
    """The original's terraced model loaded with the sliding window it decodes with: the same weights, the sliding
    model's outputs (what `liger evaluate --layer-options` scores)."""
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
