"""Triton configurations chosen ahead (liger.ops.tuning): record what fla's autotuners chose, preload it elsewhere.

Stand-ins for Triton's autotuner and config run everywhere; the last test uses Triton's own classes when triton
is importable (no GPU needed: nothing is compiled or launched).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from liger.ops import tuning

ENV = {"gpu": "NVIDIA H200", "triton": "3.6.0", "fla": "0.6.0"}


class Config:
    """Triton's Config's constructor and fields."""

    def __init__(self, kwargs, num_warps=4, num_stages=3, num_ctas=1, maxnreg=None, pre_hook=None, ir_override=None):
        self.kwargs, self.num_warps, self.num_stages, self.num_ctas = kwargs, num_warps, num_stages, num_ctas
        self.maxnreg, self.pre_hook, self.ir_override = maxnreg, pre_hook, ir_override

    def __eq__(self, other):
        return vars(self) == vars(other)


class Tuner:
    """Triton's Autotuner as far as the module uses it: `cache` (key tuple -> config), `base_fn`, `fn`."""

    def __init__(self, fn):
        self.fn = self.base_fn = fn
        self.cache = {}


class Heuristics:
    def __init__(self, fn):
        self.fn = fn


def _kernels(module_name: str):
    """A module of two autotuned kernels (one behind heuristics, one also exported under a second name)."""
    module = types.ModuleType(module_name)

    def chunk_fwd_kernel():
        pass

    def cumsum_kernel():
        pass

    for fn in (chunk_fwd_kernel, cumsum_kernel):
        fn.__module__, fn.__qualname__ = module_name, fn.__name__
    module.chunk_fwd_kernel = Tuner(chunk_fwd_kernel)
    module.cumsum_kernel = Heuristics(Tuner(cumsum_kernel))
    module.also_chunk = module.chunk_fwd_kernel
    module.not_a_kernel, module.a_class = 3, Tuner
    return module


@pytest.fixture
def fla_module(monkeypatch):
    """A fake `fla.ops.fake` module, and a module outside fla with an autotuner the table must not touch."""
    module = _kernels("fla.ops.fake")
    monkeypatch.setitem(sys.modules, "fla.ops.fake", module)
    monkeypatch.setitem(sys.modules, "elsewhere", _kernels("elsewhere"))
    return module


KEY = (64, 128, True, "torch.bfloat16", "torch.float32")


def _choose(module):
    module.chunk_fwd_kernel.cache[KEY] = Config({"BK": 64, "BV": 32}, num_warps=4, num_stages=2)
    module.cumsum_kernel.fn.cache[(8, 12, 64, False, "torch.float32")] = Config({}, num_warps=2)


def test_every_fla_autotuner_once_named_by_its_kernel(fla_module):
    names = [name for name, _ in tuning.autotuners(Tuner)]
    assert sorted(names) == ["fla.ops.fake.chunk_fwd_kernel", "fla.ops.fake.cumsum_kernel"]


def test_recorded_choices_preload_into_a_new_process(fla_module, tmp_path):
    _choose(fla_module)
    path = tmp_path / "h200.json"
    assert tuning.record(path, ENV, Tuner) == 2
    table = json.loads(path.read_text())
    assert table["environment"] == ENV
    assert table["kernels"]["fla.ops.fake.chunk_fwd_kernel"] == [
        {"key": list(KEY), "config": {"kwargs": {"BK": 64, "BV": 32}, "num_warps": 4, "num_stages": 2,
                                      "num_ctas": 1, "maxnreg": None, "ir_override": None}}]

    fresh = _kernels("fla.ops.fake")  # a new process: the same kernels, nothing chosen yet
    sys.modules["fla.ops.fake"] = fresh
    assert tuning.preload(tuning.read(path), ENV, Tuner, Config) == 2
    assert fresh.chunk_fwd_kernel.cache == {KEY: Config({"BK": 64, "BV": 32}, num_warps=4, num_stages=2)}
    assert fresh.cumsum_kernel.fn.cache == {(8, 12, 64, False, "torch.float32"): Config({}, num_warps=2)}
    assert sys.modules["elsewhere"].chunk_fwd_kernel.cache == {}


def test_a_table_of_another_gpu_or_version_is_not_used(fla_module, tmp_path):
    _choose(fla_module)
    path = tmp_path / "t.json"
    tuning.record(path, ENV, Tuner)
    fresh = _kernels("fla.ops.fake")
    sys.modules["fla.ops.fake"] = fresh
    for other in ({**ENV, "gpu": "NVIDIA A100-SXM4-80GB"}, {**ENV, "triton": "3.5.1"}, {**ENV, "fla": "0.5.0"}):
        assert tuning.preload(tuning.read(path), other, Tuner, Config) == 0
    assert fresh.chunk_fwd_kernel.cache == {}


def test_a_choice_made_in_this_process_is_kept(fla_module, tmp_path):
    _choose(fla_module)
    path = tmp_path / "t.json"
    tuning.record(path, ENV, Tuner)
    mine = Config({"BK": 32, "BV": 32}, num_warps=8)
    fla_module.chunk_fwd_kernel.cache[KEY] = mine
    assert tuning.preload(tuning.read(path), ENV, Tuner, Config) == 0
    assert fla_module.chunk_fwd_kernel.cache[KEY] is mine


def test_recording_merges_into_the_table_and_replaces_another_environments(fla_module, tmp_path):
    path = tmp_path / "t.json"
    fla_module.chunk_fwd_kernel.cache[KEY] = Config({"BK": 64}, num_warps=4)
    tuning.record(path, ENV, Tuner)
    other_key = (64, 64, True, "torch.bfloat16", "torch.float32")
    fla_module.chunk_fwd_kernel.cache = {other_key: Config({"BK": 32}), KEY: Config({"BK": 16})}
    assert tuning.record(path, ENV, Tuner) == 2
    entries = tuning.read(path)["kernels"]["fla.ops.fake.chunk_fwd_kernel"]
    assert {json.dumps(e["key"]): e["config"]["kwargs"] for e in entries} == {
        json.dumps(list(KEY)): {"BK": 64}, json.dumps(list(other_key)): {"BK": 32}}  # the table's entry kept
    assert tuning.record(path, {**ENV, "gpu": "NVIDIA H100 80GB HBM3"}, Tuner) == 2
    assert tuning.read(path)["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_choice_that_is_not_plain_data_is_not_recorded(fla_module):
    fla_module.chunk_fwd_kernel.cache[KEY] = Config({"BK": 64}, pre_hook=lambda args: None)
    fla_module.cumsum_kernel.fn.cache[(8, object())] = Config({})
    assert tuning.choices(Tuner) == {}
    fla_module.cumsum_kernel.fn.cache[(8, "torch.float32")] = Config({})
    assert list(tuning.choices(Tuner)) == ["fla.ops.fake.cumsum_kernel"]


def test_start_preloads_the_given_table_records_into_it_at_exit_and_warns_on_a_bad_one(
        fla_module, tmp_path, monkeypatch):
    _choose(fla_module)
    good = tmp_path / "good.json"
    tuning.record(good, ENV, Tuner)
    sys.modules["fla.ops.fake"] = fresh = _kernels("fla.ops.fake")
    registered = []
    monkeypatch.setattr(tuning, "environment", lambda: ENV)
    monkeypatch.setattr(tuning.atexit, "register", lambda *args: registered.append(args))
    monkeypatch.setenv(tuning.ENV, str(good))
    assert tuning.start(Tuner, Config) == 2 and len(fresh.chunk_fwd_kernel.cache) == 1
    assert registered == [(tuning.record, good, ENV)]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"environment": ENV, "kernels": {"fla.ops.fake.chunk_fwd_kernel": [{"key": [1]}]}}))
    monkeypatch.setenv(tuning.ENV, str(bad))
    with pytest.warns(UserWarning, match="bad.json: not a table of Triton configurations"):
        assert tuning.start(Tuner, Config) == 0
    monkeypatch.setenv(tuning.ENV, str(tmp_path / "missing.json"))  # a first run: nothing to preload yet
    assert tuning.start(Tuner, Config) == 0


def test_without_the_variable_the_table_shipped_for_this_gpu_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "SHIPPED", tmp_path)
    assert tuning.shipped(ENV) == tmp_path / "NVIDIA_H200.json"
    assert tuning.shipped({**ENV, "gpu": "NVIDIA H100 80GB HBM3"}).name == "NVIDIA_H100_80GB_HBM3.json"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (no GPU)")
def test_with_tritons_own_autotuner_and_config(monkeypatch, tmp_path):
    import triton

    source = Path(__file__).with_name("_triton_kernels.py")  # a real kernel module, loaded under an fla name
    spec = importlib.util.spec_from_file_location("fla.ops.liger_test", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fla.ops.liger_test", module)
    spec.loader.exec_module(module)
    key = (128, "torch.bfloat16")
    module.scale_kernel.cache[key] = module.CONFIGS[1]
    path = tmp_path / "t.json"
    assert tuning.record(path, ENV) == 1

    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fla.ops.liger_test", fresh)
    spec.loader.exec_module(fresh)
    assert tuning.preload(tuning.read(path), ENV) == 1
    chosen = fresh.scale_kernel.cache[key]
    assert isinstance(chosen, triton.Config) and chosen.kwargs == {"BLOCK": 64} and chosen.num_warps == 2
