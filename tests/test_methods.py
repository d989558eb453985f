"""The method registry (liger.methods): the one window convention and the loading of options saved under the
previous one."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import liger
from liger import LigerError, methods
from liger.methods.liger import LigerOptions
from tests.conftest import tiny_model

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
