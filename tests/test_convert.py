"""Liger conversion of tiny Llama / Mistral / Qwen2 / Qwen3 models: parameters, decoding, padding, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import liger
from liger import LigerCache, LigerError, count_parameters, linearize
from liger.layers.base import repeat_heads, rotate
from liger.methods import added_parameters
from liger.ops import gated_recurrence
from liger.ops.reference import naive_gated_recurrence, naive_gated_slot_attention, naive_sliding_window_attention
from tests.conftest import ARCHS, LIGER_ABLATIONS, LIGER_VARIANTS, perturb_added, tiny_model

VARIANTS = LIGER_VARIANTS
# A small window and chunk so that 23 tokens cross chunk boundaries and evict from the window.
SMALL = {"window": 5, "chunk_size": 8}
ATOL = 1e-4  # fp32 decoding vs the parallel forward (docs/method.md#decoding-state)


def converted(arch: str, method: str, **options):
    return linearize(tiny_model(arch), method, **{**SMALL, **options})


def ids(batch: int = 1, length: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_batch(seqs: list[torch.Tensor], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `seqs` padded (with 0) to the longest, on the given side."""
    width = max(len(s) for s in seqs)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        batch[i, cols], mask[i, cols] = s, 1
    return batch, mask


def decode_logits(model, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of every position from a prefill of `prefill` tokens then one token at a time."""
    cache = DynamicCache()
    out = []
    if prefill:
        out.append(model(tokens[:, :prefill], past_key_values=cache, use_cache=True).logits)
    for t in range(prefill, tokens.shape[1]):
        out.append(model(tokens[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,opts", VARIANTS, ids=lambda v: v if isinstance(v, str) else str(v))
def test_parameters_unchanged_and_decoding_matches_forward(arch, method, opts):
    base = tiny_model(arch)
    n = count_parameters(base)
    model = linearize(base, method, **{**SMALL, **opts})
    assert count_parameters(model) == n
    tokens = ids()
    with torch.no_grad():
        full = model(tokens).logits
        assert torch.isfinite(full).all()
        for prefill in (0, 11):
            step = decode_logits(model, tokens, prefill)
            assert (step - full).abs().max().item() <= ATOL, f"prefill {prefill}"


@pytest.mark.parametrize("method,opts", VARIANTS[:5], ids=lambda v: v if isinstance(v, str) else str(v))
def test_cache_is_constant_in_length(method, opts):
    cache_sizes(converted("llama", method, **opts))


def cache_sizes(model) -> LigerCache:
    """Feed 1000 tokens in chunks of 100 through a LigerCache; check its size after 100 and 1000 tokens."""
    cache = LigerCache(model)
    sizes = {}
    with torch.no_grad():
        model(ids(length=100), past_key_values=cache, use_cache=True)
        sizes[100] = cache.nbytes()
        for chunk in range(9):
            model(ids(length=100, seed=chunk + 2), past_key_values=cache, use_cache=True)
        sizes[1000] = cache.nbytes()
    assert cache.get_seq_length() == 1000
    assert sizes[100] == sizes[1000] > 0
    return cache


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("method,opts", VARIANTS, ids=lambda v: v if isinstance(v, str) else str(v))
def test_left_padded_batch_equals_singles(arch, method, opts):
    model = converted(arch, method, **opts)
    seqs = [ids(length=n, seed=10 + n)[0] for n in (23, 15, 8)]
    batch, mask = padded_batch(seqs)
    width = batch.shape[1]
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            alone = model(s[None]).logits[0]
            assert (padded[i, width - len(s):] - alone).abs().max().item() <= ATOL


@pytest.mark.parametrize("method,opts", VARIANTS[:3], ids=lambda v: v if isinstance(v, str) else str(v))
def test_generate_left_padded_equals_singles(method, opts):
    model = converted("llama", method, **opts)
    seqs = [ids(length=n, seed=n)[0] for n in (12, 7)]
    batch = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, 12 - len(s):] = s
        mask[i, 12 - len(s):] = 1
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, **kw)[:, 12:]
        for i, s in enumerate(seqs):
            alone = model.generate(s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long), **kw)
            assert torch.equal(together[i], alone[0, len(s):])


def test_generate_matches_greedy_by_full_forward():
    model = converted("mistral", "liger_gla")
    prompt = ids(length=9)
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(10):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen, seq)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_roundtrip(arch, tmp_path):
    model = converted(arch, "liger_gsa", num_slots=8, softmax_layers=[0])
    model.save_pretrained(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == f"liger_{arch}"
    assert cfg["liger"]["method"] == "liger_gsa" and cfg["liger"]["num_slots"] == 8
    tokens = ids()
    with torch.no_grad():
        want = model(tokens).logits
        for loaded in (liger.load(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
            assert liger.options_of(loaded).to_dict() == liger.options_of(model).to_dict()
            assert torch.equal(loaded.eval()(tokens).logits, want)


def test_lora_attaches_to_qkv():
    from peft import LoraConfig, get_peft_model

    model = converted("llama", "liger_gla")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    per_layer = 8 * ((64 + 64) + (64 + cfg.num_key_value_heads * d) * 2)
    assert trainable == per_layer * cfg.num_hidden_layers
    out = peft_model(ids()).logits
    out.sum().backward()
    grads = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


def test_bad_input_errors():
    with pytest.raises(LigerError, match="unknown Liger method 'liger_mamba'"):
        linearize(tiny_model("llama"), "liger_mamba")
    with pytest.raises(LigerError, match="unknown Liger option.*windw"):
        linearize(tiny_model("llama"), "liger_gla", windw=3)
    with pytest.raises(LigerError, match="out of range"):
        linearize(tiny_model("llama"), "liger_gla", softmax_layers=[5])
    model = converted("llama", "liger_gla")
    with pytest.raises(LigerError, match="already linearized"):
        linearize(model, "liger_gla")


@pytest.mark.slow
def test_smollm2_gla_save_reload_same_logits(smollm2_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    n = count_parameters(model)
    linearize(model, "liger_gla")
    assert count_parameters(model) == n
    model.save_pretrained(tmp_path)
    tokens = ids(length=80)
    with torch.no_grad():
        want = model.eval()(tokens).logits
        got = liger.load(tmp_path).eval()(tokens).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("method,opts", [("liger_gla", {}), ("liger_gla", {"softmax_layers": [1]}),
                                         ("lolcats", {}), ("lolcats", {"softmax_layers": [0]})])
def test_linearize_leaves_the_callers_config_alone(method, opts):
    """Two models from one config: converting the first changes neither the config nor the second."""
    from transformers import LlamaConfig

    from tests.conftest import TINY

    cfg = LlamaConfig(**TINY)
    first, second = (AutoModelForCausalLM.from_config(cfg) for _ in range(2))
    linearize(first, method, **opts)
    assert type(cfg) is LlamaConfig and not hasattr(cfg, "liger") and cfg.model_type == "llama"
    assert liger.options_of(second) is None
    assert all(m.config is first.config for m in first.modules() if hasattr(m, "config"))
    assert first.config.liger["method"] == method and first.config.model_type == "liger_llama"
    linearize(second, method, **opts)
    assert liger.options_of(second).to_dict() == liger.options_of(first).to_dict()
    for model in (first, second):
        with pytest.raises(LigerError, match="already linearized"):
            linearize(model, "liger_gla", softmax_layers=[0])


def test_softmax_layers_keeping_every_layer_are_refused():
    """Nothing would be converted, and a second conversion could not tell the model had been."""
    with pytest.raises(LigerError, match="keep every layer as softmax attention"):
        linearize(tiny_model("llama"), "liger_gla", softmax_layers=[0, 1])


@pytest.fixture
def saved_converted(tmp_path):
    path = tmp_path / "converted"
    converted("llama", "liger_gla").save_pretrained(path)
    return path


def _edit_config(path, edit) -> None:
    import json

    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def test_config_that_lost_its_conversion(saved_converted, capsys):
    """A converted config records its conversion twice (a liger_<type> model type and the liger entry): without
    the entry it cannot be rebuilt; with the entry but a plain model type it would load unconverted."""
    from liger.cli import main
    from liger.evaluate import evaluate

    path = saved_converted
    _edit_config(path, lambda c: c.pop("liger"))
    loaders = (liger.load, AutoModelForCausalLM.from_pretrained, lambda p: evaluate(p, p.parent / "e.json"))
    for load in loaders:
        with pytest.raises(LigerError, match=r"model_type 'liger_llama' marks a converted model, but the config has "
                                             r"no 'liger' entry"):
            load(path)
    assert main(["convert", "--model", str(path), "--out", str(path.parent / "o"), "--options",
                 '{"method": "liger_gla"}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"liger convert: error: {path / 'config.json'}: model_type")
    _edit_config(path, lambda c: c.update(liger={"method": "liger_gla"}, model_type="llama"))
    with pytest.raises(LigerError, match="has a 'liger' entry .* but model_type 'llama', which loads unconverted"):
        liger.load(path)
    (path / "config.json").write_text('{"model_type": ')
    with pytest.raises(LigerError, match=r"config\.json: not a JSON object"):
        liger.load(path)


def test_truncated_weights_are_named(model_dir, tmp_path, capsys):
    import shutil

    from liger.cli import main
    from liger.profile import build_variant

    path = tmp_path / "model"
    shutil.copytree(model_dir, path)
    weights = (path / "model.safetensors").read_bytes()
    for cut, problem in ((len(weights) // 2, f"has {len(weights) // 2} bytes, its header describes {len(weights)}"),
                         (4, "no readable safetensors header in its 4 bytes")):
        (path / "model.safetensors").write_bytes(weights[:cut])
        with pytest.raises(LigerError, match=rf"{path}: could not load the model \(model\.safetensors:? {problem}"):
            liger.load(path)
        with pytest.raises(LigerError, match=problem):
            build_variant("base_sdpa", path, None, "cpu", torch.float32)
        assert main(["convert", "--model", str(path), "--out", str(tmp_path / "o"), "--options",
                     '{"method": "liger_gla"}']) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0]


def test_options_without_a_method():
    from liger.methods import build_options, options_from_dict

    for make in (lambda: build_options(window=32), lambda: options_from_dict({"window": 32})):
        with pytest.raises(LigerError, match=r"options \{'window': 32\} name no method: add \"method\" \(one of "
                                             r"liger_gla, .*lolcats\)"):
            make()


# ------------------------------------------------------------------------ ablation options (paper's Table 12)

ABLATION_IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items() if k != 'num_slots')}" for m, o in LIGER_ABLATIONS]
# float64 layer vs its float64 reference: the same math in another order, exact up to rounding; fp32 layer vs the
# float64 reference: max |diff| / max |ref| within 1e-5 (tests/test_ops.py's fp32 tolerance for the recurrences).
TOL_F64, TOL_F32 = 1e-10, 1e-5


def ablation(arch: str, method: str, **options):
    """A tiny model converted with an ablation option, its added parameters moved off their init."""
    return perturb_added(converted(arch, method, **options))


def reference_layer(layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A converted Liger layer's output in float64, written from docs/method.md term by term: the gate logits
    (pooled k, none, or x W1 W2 + b), the feature maps (softmax of q, k or of their per-head maps), the float64
    step-by-step recurrence, the float64 window, alpha * window + beta * recurrence, o_proj."""
    o = layer.options
    B, T, _ = x.shape
    d, Hkv, n = layer.head_dim, layer.num_kv_heads, layer.n_rep
    x = x.double()
    w = {name: getattr(layer, name).weight.double() for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    q, k, v = ((x @ w[f"{p}_proj"].T).view(B, T, -1, d) for p in "qkv")
    per_head = o.num_slots if o.method == "liger_gsa" else d
    if o.gate == "pooled":
        flat = k.reshape(B, T, -1)
        logits = flat if flat.shape[-1] == Hkv * per_head else torch.nn.functional.adaptive_avg_pool1d(
            flat.reshape(B * T, 1, -1), Hkv * per_head).reshape(B, T, -1)
    elif o.gate == "projection":
        gp = layer.gk_proj
        logits = x @ gp.down.double() @ gp.up.double() + gp.bias.double()
    else:
        logits = None
    g = None if logits is None else torch.nn.functional.logsigmoid(logits).view(B, T, Hkv, per_head) / o.gate_normalizer

    def phi(t: torch.Tensor, maps) -> torch.Tensor:
        if o.feature_map == "none":
            return t
        if o.feature_map == "learnable":
            t = torch.stack([t[:, :, h] @ maps.weight[h].double() for h in range(t.shape[2])], dim=2)
        return t.softmax(dim=-1)

    rep = lambda t: repeat_heads(t, n)  # noqa: E731
    if o.method == "liger_gsa":
        s = -torch.expm1(g)
        rec, _ = naive_gated_slot_attention(phi(q, layer.feature_map_q), rep(phi(k, layer.feature_map_k)), rep(v),
                                            rep(s), rep(g))
    else:
        keys = -torch.expm1(g) if o.method == "liger_hgrn2" else phi(k, layer.feature_map_k)
        gk = rep(g) if g is not None else torch.zeros(B, T, layer.num_heads, d, dtype=torch.float64)
        rec, _ = naive_gated_recurrence(phi(q, layer.feature_map_q), rep(keys), rep(v), gk)
    win = naive_sliding_window_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, o.window - 1,
                                         scale=layer.scaling)
    return (o.alpha * win + o.beta * rec).reshape(B, T, -1) @ w["o_proj"].T


@pytest.mark.parametrize("method,opts", LIGER_ABLATIONS, ids=ABLATION_IDS)
def test_ablation_layers_match_the_float64_reference(method, opts):
    """Each ablation option's parallel forward (chunked recurrence, 23 tokens over chunks of 8) against the
    reference above: in float64 and in float32."""
    model = ablation("llama", method, **opts)
    T = 23
    x = torch.randn(2, T, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for dtype, tol in ((torch.float64, TOL_F64), (torch.float32, TOL_F32)):
            model.to(dtype)
            layer = model.model.layers[0].self_attn
            cos, sin = model.model.rotary_emb(x.to(dtype), torch.arange(T)[None])
            got = layer(x.to(dtype), position_embeddings=(cos, sin))[0]
            want = reference_layer(layer, x, cos.double(), sin.double())
            err = ((got.double() - want).abs().max() / want.abs().max()).item()
            assert err <= tol, f"{dtype}: {err}"


@pytest.mark.parametrize("impl", ["recurrent", "chunk"])
def test_gate_none_is_the_ungated_recurrence(impl):
    """gate: none feeds no log-gate, which is a log-gate of 0 everywhere: the same numbers step by step, the same up
    to rounding in the chunked form (its no-gate path skips the decay products)."""
    model = converted("llama", "liger_gla", gate="none", impl=impl)
    layer = model.model.layers[0].self_attn
    x = torch.randn(2, 19, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, k, v = layer.project(x)
        got, _ = layer.recurrence(q, k, v, None, None, want_state=False)
        n = layer.n_rep
        fq, fk = q.softmax(dim=-1), repeat_heads(k.softmax(dim=-1), n)
        want, _ = gated_recurrence(fq, fk, repeat_heads(v, n), gk=torch.zeros_like(fk), impl=impl, chunk_size=8)
    if impl == "recurrent":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,opts", LIGER_ABLATIONS, ids=ABLATION_IDS)
def test_ablation_parameters_decoding_and_padding(method, opts):
    """The parameter count grows by `added_parameters` (the added ones alone trainable by name), decoding token
    by token equals the parallel forward, and a left-padded batch equals its rows alone."""
    base = tiny_model("llama")
    n = count_parameters(base)
    model = perturb_added(linearize(base, method, **{**SMALL, **opts}))
    extra = added_parameters(model.config, liger.options_of(model))
    assert count_parameters(model) - n == extra and (extra > 0) == (opts.get("gate") != "none")
    new = {name for name, _ in model.named_parameters()} - {name for name, _ in tiny_model("llama").named_parameters()}
    assert sum(dict(model.named_parameters())[name].numel() for name in new) == extra
    tokens = ids()
    with torch.no_grad():
        full = model(tokens).logits
        for prefill in (0, 11):
            assert (decode_logits(model, tokens, prefill) - full).abs().max().item() <= ATOL, f"prefill {prefill}"
        seqs = [ids(length=n, seed=10 + n)[0] for n in (23, 8)]
        batch, mask = padded_batch(seqs)
        padded = model(batch, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            assert (padded[i, batch.shape[1] - len(s):] - model(s[None]).logits[0]).abs().max().item() <= ATOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["liger_gla", "liger_hgrn2"])
def test_the_defaults_compute_what_they_did_before_the_ablation_options(method, dtype):
    """No parameter added, and the recurrent branch bit for bit as the code before `gate` computed it: the pooled
    k in float32, logsigmoid / c, softmax features in float32 cast back (HGRN2: keys 1 - exp(g))."""
    base = tiny_model("llama").to(dtype)
    names = set(base.state_dict())
    model = linearize(base, method, **SMALL)
    assert set(model.state_dict()) == names
    layer = model.model.layers[0].self_attn
    x = torch.randn(2, 19, model.config.hidden_size, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        q, k, v = layer.project(x)
        got, _ = layer.recurrence(q, k, v, None, None, want_state=False)
        g = torch.nn.functional.logsigmoid(k.float()) / layer.options.gate_normalizer
        fq = q.float().softmax(dim=-1).to(dtype)
        fk = (-torch.expm1(g)).to(dtype) if method == "liger_hgrn2" else k.float().softmax(dim=-1).to(dtype)
        n = layer.n_rep
        want, _ = gated_recurrence(fq, repeat_heads(fk, n), repeat_heads(v, n), gk=repeat_heads(g, n),
                                   impl=layer.options.impl, chunk_size=8)
    assert torch.equal(got, want.to(dtype))


@pytest.mark.parametrize("method", ["liger_gla", "liger_hgrn2", "liger_gsa"])
def test_ablation_options_at_conversion(method):
    """A learnable feature map starts as the identity (the converted model computes the softmax one exactly); the
    gate projection is drawn from a fixed seed per layer (two conversions agree), in the model's dtype."""
    slots = {"num_slots": 8} if method == "liger_gsa" else {}
    tokens = ids()
    with torch.no_grad():
        default = converted("llama", method, **slots, feature_map="softmax")(tokens).logits
        learnable = converted("llama", method, **slots, feature_map="learnable")(tokens).logits
    assert torch.equal(learnable, default)
    a, b = (converted("llama", method, **slots, gate="projection").model.layers for _ in range(2))
    assert torch.equal(a[0].self_attn.gk_proj.down, b[0].self_attn.gk_proj.down)
    assert not torch.equal(a[0].self_attn.gk_proj.down, a[1].self_attn.gk_proj.down)
    bf16 = linearize(tiny_model("llama").to(torch.bfloat16), method, **slots, gate="projection",
                     feature_map="learnable")
    layer = bf16.model.layers[0].self_attn
    assert {p.dtype for p in layer.finetune_parameters()} == {torch.bfloat16}
    assert len(layer.finetune_parameters()) == 3 + (1 if method == "liger_hgrn2" else 2)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_ablation_save_and_load_roundtrip(arch, tmp_path):
    model = ablation(arch, "liger_gla", gate="projection", feature_map="learnable")
    model.save_pretrained(tmp_path)
    tokens = ids()
    with torch.no_grad():
        want = model(tokens).logits
        for loaded in (liger.load(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
            assert torch.equal(loaded.eval()(tokens).logits, want)
