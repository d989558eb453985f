"""The method registry (liger.methods): what it describes without torch, the one window convention and the
loading of options saved under the previous one, and a method added from this file alone."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import liger
from liger import LigerError, methods
from liger.layers.base import LinearizedAttention, rotate
from liger.methods import Method, MethodOptions
from liger.methods.liger import LigerOptions
from liger.methods.lolcats import LolcatsOptions
from liger.ops import sliding_window_attention
from tests.conftest import ROOT, tiny_model

HEAVY = ("torch", "transformers", "datasets", "lm_eval", "peft")


def test_the_registry_describes_every_method_without_torch():
    """What `liger plan` and the Snakefile ask: names, stages and recipes, with nothing heavy imported."""
    script = (
        "import sys, liger, liger.plan\n"
        "from liger import methods\n"
        "out = {n: {s: methods.stage_recipe(n, s) for s in methods.get(n).stages} for n in methods.names()}\n"
        "out['lolcats liger transfer'] = methods.stage_recipe('lolcats', 'transfer', {'variant': 'liger'})\n"
        "out['defaults'] = [methods.build_options(n).to_dict() for n in methods.names()]\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_importing_liger_convert_lets_transformers_load_a_converted_folder(tmp_path):
    """`import liger` registers nothing (it imports no torch); `import liger.convert` registers the Auto classes."""
    liger.linearize(tiny_model("llama"), "liger_gla", window=4).save_pretrained(tmp_path)
    script = ("import liger.convert\nfrom transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
              "print(type(model.model.layers[0].self_attn).__name__, model.config.liger['window'])\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["GLAAttention", "4"]


def test_stages_and_recipes():
    assert methods.names() == ["liger_gla", "liger_hgrn2", "liger_gsa", "lolcats"]
    assert methods.names("liger") == ["liger_gla", "liger_hgrn2", "liger_gsa"]
    assert [methods.stages(n) for n in methods.names()] == [("lora",)] * 3 + [("transfer", "lora")]
    gla = methods.stage_recipe("liger_gla", "lora")
    assert (gla["lr"], gla["lora_alpha"], gla["lora_targets"]) == (1e-3, 8, ["q_proj", "k_proj", "v_proj"])
    gla["lora_targets"].append("o_proj")  # a copy
    assert methods.stage_recipe("liger_gla", "lora")["lora_targets"] == ["q_proj", "k_proj", "v_proj"]
    assert methods.stage_recipe("lolcats", "transfer")["weight_decay"] == 0.0
    rerun = methods.stage_recipe("lolcats", "transfer", {"method": "lolcats", "variant": "liger"})
    assert rerun["weight_decay"] == 0.01
    with pytest.raises(LigerError, match="method liger_gla has no transfer stage"):
        methods.stage_recipe("liger_gla", "transfer")
    with pytest.raises(LigerError, match="unknown Liger method 'gla'; choose one of liger_gla, "):
        methods.get("gla")
    assert [methods.get(n).step_decoding for n in methods.names()] == [True] * 3 + [False]
    assert methods.get("lolcats").decodes_exactly(LolcatsOptions(window_shape="sliding"))
    assert methods.get("lolcats").decodes_exactly(LolcatsOptions())  # terraced
    assert methods.get("liger_gsa").decodes_exactly(LigerOptions(method="liger_gsa"))


# ------------------------------------------------------------------------------ one window convention


@pytest.mark.parametrize("window", [1, 6])
def test_a_liger_window_is_the_keys_a_query_attends_to_itself_included(window):
    """The window branch alone (alpha 1, beta 0) is the base model on the first `window` tokens, not after."""
    base = tiny_model("llama")
    model = liger.linearize(tiny_model("llama"), "liger_gla", alpha=1.0, beta=0.0, window=window)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = base(ids).logits, model(ids).logits
    assert torch.allclose(got[:, :window], want[:, :window], atol=1e-5)
    assert not torch.allclose(got[:, window], want[:, window], atol=1e-3)


def test_options_saved_under_version_1_are_read_in_the_current_convention():
    # what the code before version 2 saved for the default Liger-GLA (e.g. the published metrics' `liger` entries)
    old = {"alpha": 0.5, "beta": 0.5, "chunk_size": 16, "feature_map": "softmax", "gate_normalizer": 16.0,
           "gate_source": "k", "hybrid": "liger_attention", "impl": "auto", "method": "liger_gla", "num_slots": 64,
           "softmax_layers": [], "window": 64}
    assert methods.options_from_dict(old) == LigerOptions() and LigerOptions().window == 65
    assert methods.options_from_dict({**LigerOptions(window=9).to_dict()}).window == 9  # version 2: as written
    assert methods.build_options("liger_gla", options_version=1, window=8).window == 9
    lolcats = methods.options_from_dict({"method": "lolcats", "window": 16, "chunk_size": 256})
    assert (lolcats.window, lolcats.query_block) == (16, 256)
    assert LigerOptions().to_dict()["options_version"] == methods.OPTIONS_VERSION == 2
    with pytest.raises(LigerError, match="options_version=3: this liger reads versions 1 to 2"):
        methods.options_from_dict({**old, "options_version": 3})
    with pytest.raises(LigerError, match=r"unknown LoLCATs option\(s\) chunk_size \(chunk_size is now query_block\)"):
        liger.linearize(tiny_model("llama"), "lolcats", chunk_size=8)


def test_the_ablation_options_are_validated_and_older_entries_default_to_the_pooled_gate():
    """Entries saved before `gate` existed (version 1 above, or version 2) read as gate=pooled; bad values and
    combinations are one-line errors naming the option."""
    saved = {k: v for k, v in LigerOptions(window=9).to_dict().items() if k != "gate"}
    assert methods.options_from_dict(saved) == LigerOptions(window=9) and LigerOptions().gate == "pooled"
    for bad, message in [
        ({"gate": "random"}, "gate='random' is not one of pooled, none, projection"),
        ({"feature_map": "hedgehog"}, "feature_map='hedgehog' is not one of softmax, learnable, none"),
        ({"method": "liger_hgrn2", "gate": "none"}, "gate=none is for liger_gla only: liger_hgrn2's keys"),
        ({"method": "liger_gsa", "gate": "none"}, "gate=none is for liger_gla only: liger_gsa's keys"),
        ({"gate": "projection", "gate_source": "v"}, "gate_source='v' needs gate=pooled"),
        ({"feature_map": "learnable", "beta": 0.0}, "act on the recurrent branch, which beta=0 turns off"),
    ]:
        with pytest.raises(LigerError, match=message) as e:
            methods.build_options(**{"method": "liger_gla", **bad})
        assert "\n" not in str(e.value)
    config = tiny_model("llama").config  # hidden 64, 4 heads of 16, 2 kv heads, 2 layers
    count = lambda method, **o: methods.added_parameters(config, methods.build_options(method, **o))  # noqa: E731
    assert [count(m) for m in methods.names("liger")] == [0, 0, 0] and count("liger_gla", gate="none") == 0
    assert count("liger_gla", gate="projection") == 2 * (64 * 16 + 16 * 32 + 32)
    assert count("liger_gsa", gate="projection", num_slots=8) == 2 * (64 * 16 + 16 * 16 + 16)
    assert count("liger_gla", feature_map="learnable") == 2 * (4 + 2) * 16 * 16
    assert count("liger_hgrn2", feature_map="learnable", softmax_layers=[0]) == 4 * 16 * 16  # no key map


def _as_version_1(entry: dict) -> dict:
    """A current `liger` entry written as the code before version 2 wrote it."""
    old = {k: v for k, v in entry.items() if k != "options_version"}
    if old["method"] == "lolcats":
        old["chunk_size"] = old.pop("query_block")
    else:
        old["window"] -= 1
    return old


@pytest.mark.parametrize("method,opts", [("liger_gla", {"window": 6, "chunk_size": 8}),
                                         ("lolcats", {"window": 5, "query_block": 8, "window_shape": "sliding"})])
def test_models_saved_under_version_1_load_to_the_same_model(method, opts, tmp_path):
    model = liger.linearize(tiny_model("llama"), method, **opts)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["liger"] = _as_version_1(config["liger"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        for loaded in (liger.load(tmp_path / "m"), AutoModelForCausalLM.from_pretrained(tmp_path / "m")):
            assert liger.options_of(loaded) == liger.options_of(model)
            assert torch.equal(loaded.eval()(ids).logits, want)
    loaded.save_pretrained(tmp_path / "again")  # saved again: in the current convention
    assert json.loads((tmp_path / "again" / "config.json").read_text())["liger"] == model.config.liger


def test_added_weights_saved_under_version_1_load(tmp_path):
    """`liger merge --added` of a published LoLCATs stage 1 whose liger_options.json predates version 2."""
    from liger.convert import ADAPTER_OPTIONS, save_added

    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = liger.linearize(tiny_model("llama"), "lolcats", window=4, query_block=8)
    save_added(model, tmp_path / "added")
    saved = json.loads((tmp_path / "added" / ADAPTER_OPTIONS).read_text())
    (tmp_path / "added" / ADAPTER_OPTIONS).write_text(json.dumps(_as_version_1(saved)))
    loaded = liger.load(tmp_path / "base", added=tmp_path / "added")
    assert liger.options_of(loaded) == liger.options_of(model)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)


# ------------------------------------------------------------------ a method added from this file alone


@dataclass
class HalfWindowOptions(MethodOptions):
    kind = "half-window"

    method: str = "half_window"
    window: int = 8  # softmax keys per query, its own included
    softmax_layers: list[int] = field(default_factory=list)


class HalfWindowAttention(LinearizedAttention):
    """Half of sliding-window softmax attention: a method no one ships, built on the shared plumbing."""

    @property
    def cached_keys(self) -> int:
        return self.options.window - 1

    def mix(self, q, k, v, position_embeddings, valid, cache):
        cos, sin = position_embeddings
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v, valid = cache.extend_window(k, v, valid)
        return 0.5 * sliding_window_attention(q, k, v, self.options.window - 1, scale=self.scaling, key_mask=valid)


HALF_WINDOW = Method(name="half_window", family="half_window", options=HalfWindowOptions,
                     layer="tests.test_methods:HalfWindowAttention", recipes=lambda options: {"lora": {"lr": 3e-4}})


@pytest.fixture
def half_window():
    methods.register(HALF_WINDOW)
    yield HALF_WINDOW
    methods.unregister(HALF_WINDOW.name)
    assert "half_window" not in methods.names()


def test_a_registered_method_converts_saves_loads_and_trains(half_window, tmp_path):
    from liger.decode import GraphDecoder
    from liger.pipeline import check_config
    from liger.plan import plan
    from liger.train_config import default_train_config

    base = tiny_model("llama")
    n = liger.count_parameters(base)
    model = liger.linearize(base, "half_window")
    assert liger.count_parameters(model) == n and "half_window" in methods.names()
    assert all(isinstance(layer.self_attn, HalfWindowAttention) for layer in model.model.layers)
    # within the window, half of softmax attention is the base model with o_proj halved
    halved = tiny_model("llama")
    for layer in halved.model.layers:
        layer.self_attn.o_proj.weight.data.mul_(0.5)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, halved(ids).logits, atol=1e-5)
        longer = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(4))
        full, cache = model(longer).logits, DynamicCache()
        steps = [model(longer[:, :5], past_key_values=cache, use_cache=True).logits]
        steps += [model(longer[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(5, 20)]
        assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(liger.load(tmp_path / "m")(ids).logits, model(ids).logits)
    assert default_train_config({"method": "half_window"}).lr == 3e-4
    config = {"run": "t", "models": {"tiny": {"embedded": "smollm2-135m"}}, "data": {"source": "alpaca.json"},
              "methods": {"base": {}, "half": {"method": "half_window"}}, "train": {}, "eval": {"tasks": ["piqa"]}}
    assert plan(check_config(config, "test"))["models"]["tiny"]["training_stages"] == 1
    with pytest.raises(LigerError, match="not HalfWindowAttention"):
        GraphDecoder(model)
    with pytest.raises(LigerError, match="already registered"):
        methods.register(HALF_WINDOW)


# ------------------------------------------------------------------------------------------ imports


def import_graph() -> dict[str, set[str]]:
    """Static imports between the modules of liger/ (module level and inside functions)."""
    import ast

    root = ROOT / "liger"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {r for t in targets if (r := resolve(t)) and r != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module."""
    reach = {m: set() for m in graph}
    for m in graph:
        todo = list(graph[m])
        while todo:
            n = todo.pop()
            if n not in reach[m]:
                reach[m].add(n)
                todo += graph.get(n, ())
    found = []
    for m in graph:
        component = {m} | {n for n in reach[m] if m in reach[n]}
        if len(component) > 1 and component not in found:
            found.append(component)
    return found


MODEL = ("liger.ops", "liger.methods", "liger.layers", "liger.cache", "liger.decode", "liger.convert")


def test_no_import_cycles_and_the_model_imports_no_stage():
    graph = import_graph()
    assert "liger.methods.liger" in graph and "liger.layers.base" in graph
    assert cycles(graph) == []
    model = {m for m in graph if m.startswith(MODEL)}
    below = model | {"liger", "liger.errors", "liger.fileio", "liger.models"}
    assert {m: graph[m] - below for m in model if graph[m] - below} == {}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]  # the check can fail
