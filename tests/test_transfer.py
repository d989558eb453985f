"""LoLCATs training (liger.transfer stage 1, liger.train.finetune stage 2) on a tiny random Llama and SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import liger
from liger import LigerError
from liger.cli import main
from liger.layers.lolcats import LolcatsAttention
from liger.methods import RECIPE_FIELDS
from liger.methods.lolcats import RECIPES
from liger.train import finetune
from liger.train_config import TrainConfig, default_train_config
from liger.transfer import TransferObjective, transfer
from tests.conftest import tiny_model
from tests.test_train import interrupt_at, read_log

OPTIONS = {"method": "lolcats", "window": 8}
RERUN = {"method": "lolcats", "variant": "liger", "window": 8, "feature_dim": 16}
FAST = dict(grad_accum=2, epochs=2, eval_every=0, ckpt_every=0, progress=False, device="cpu")


def cfg(**kw) -> TrainConfig:
    """Stage 1's recipe with small budgets."""
    return TrainConfig(**{**default_train_config(OPTIONS, "transfer").__dict__, **FAST, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_recipes_are_the_specified_hyperparameters():
    assert set(RECIPES["original"]["transfer"]) <= set(RECIPE_FIELDS)
    t, lora = default_train_config(OPTIONS, "transfer"), default_train_config(OPTIONS)
    assert (t.lr, t.weight_decay, t.max_grad_norm, t.grad_accum, t.epochs) == (1e-2, 0.0, 0.0, 8, 2)
    assert (lora.lr, lora.lora_r, lora.lora_alpha, lora.lora_targets, lora.weight_decay, lora.max_grad_norm) == (
        1e-4, 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"], 0.0, 0.0)
    rerun = default_train_config({"method": "lolcats", "variant": "liger"})
    assert (rerun.lora_alpha, rerun.lora_targets, rerun.weight_decay, rerun.eval_every) == (
        8, ["q_proj", "k_proj", "v_proj"], 0.01, 200)
    assert default_train_config({"method": "liger_gla"}) == TrainConfig()


def test_objective_is_the_layer_mean_mse_and_the_teacher_passes_through():
    model = liger.linearize(tiny_model("llama"), "lolcats", window=4)
    base = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    heads = {}  # the per-head outputs (o_proj's input) of layer 0 of each model

    def keep(name):
        return lambda module, args: heads.__setitem__(name, args[0].detach().clone())

    base.model.layers[0].self_attn.o_proj.register_forward_pre_hook(keep("softmax"))
    hook = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(keep("hybrid"))
    with torch.no_grad():
        want_hidden = base.model(ids).last_hidden_state
        hybrid_hidden = model.model(ids).last_hidden_state  # not in transfer mode: the hybrid's output
    hook.remove()
    objective = TransferObjective(model)
    loss = objective(ids, ids, num_items_in_batch=19).loss
    assert not any(layer.transfer for layer in objective.layers)  # transfer mode only inside the objective
    assert (want_hidden - hybrid_hidden).abs().max() > 1e-4
    for layer in objective.layers:
        layer.transfer = True
    with torch.no_grad():
        assert torch.allclose(model.model(ids).last_hidden_state, want_hidden, atol=1e-5)  # teacher forcing
    mses = [float(layer.transfer_mse) for layer in objective.layers]
    # layer 0 sees the embeddings in both models: its MSE by hand
    assert mses[0] == pytest.approx(float((heads["hybrid"] - heads["softmax"]).square().mean()), rel=1e-5)
    assert loss.item() == pytest.approx(1000 * np.mean(mses), rel=1e-5)


def test_stage1_loss_decreases_and_trains_only_feature_maps_and_window_factors(model_dir, data_dir, tmp_path):
    s = transfer(model_dir, data_dir, tmp_path / "t", options=OPTIONS, train=cfg(epochs=4))
    assert s["stage"] == "transfer" and s["optimizer_steps"] == 16 and s["tokens_trained"] == 16 * 2 * 32
    assert s["final_train_loss"] < 0.7 * s["initial_train_loss"] and s["final_val_loss"] < 0.7 * s["initial_val_loss"]
    assert s["trainable_parameters"] == s["added_parameters"] == 2 * (2 * 4 * 16 * 16 + 4)
    before = liger.linearize(tiny_model("llama"), **OPTIONS).state_dict()
    after = weights(tmp_path / "t" / "model")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"model.layers.{i}.self_attn.{p}" for i in range(2)
                       for p in ("feature_map_q.weight", "feature_map_k.weight", "window_factors")}
    rows = read_log(tmp_path / "t" / "train_log.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(17)]


def test_rerun_variant_keeps_the_window_factors(model_dir, data_dir, tmp_path):
    s = transfer(model_dir, data_dir, tmp_path / "t", options=RERUN, train=cfg(max_steps=2))
    after = weights(tmp_path / "t" / "model")
    gammas = [t for n, t in after.items() if n.endswith("window_factors")]
    assert gammas and all(torch.equal(g, torch.full_like(g, -2.1972245773362196)) for g in gammas)
    assert s["trainable_parameters"] == 2 * 2 * 4 * 16 * 16 and s["added_parameters"] == s["trainable_parameters"] + 8


def test_stage1_resume_reproduces_the_uninterrupted_run(model_dir, data_dir, tmp_path):
    settings = cfg(epochs=2, ckpt_every=3)
    ref = transfer(model_dir, data_dir, tmp_path / "a", options=OPTIONS, train=settings)
    with pytest.raises(KeyboardInterrupt):
        transfer(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings, callback=interrupt_at(5))
    again = transfer(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings)
    assert again["resumed_at_steps"] == [3] and again["final_train_loss"] == pytest.approx(ref["final_train_loss"])
    a, b = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_stage1_nan_stops(model_dir, data_dir, tmp_path, monkeypatch):
    from liger.errors import NonFiniteLossError

    calls = {"n": 0}
    original = LolcatsAttention.attention_transfer

    def poisoned(self, *args):
        out = original(self, *args)
        calls["n"] += 1
        if calls["n"] > 6:
            self.transfer_mse = self.transfer_mse * float("nan")
        return out

    monkeypatch.setattr(LolcatsAttention, "attention_transfer", poisoned)
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        transfer(model_dir, data_dir, tmp_path / "t", options=OPTIONS, train=cfg(ckpt_every=1))


def test_stage2_lora_on_the_transferred_model(model_dir, data_dir, tmp_path):
    transfer(model_dir, data_dir, tmp_path / "t", options=OPTIONS, train=cfg(max_steps=2))
    s = finetune(tmp_path / "t" / "model", data_dir, tmp_path / "f", options=OPTIONS,
                 train=TrainConfig(**{**default_train_config(OPTIONS).__dict__, "max_steps": 2, "grad_accum": 2,
                                      "progress": False, "device": "cpu"}))
    # LoRA r 8 on q, k, v, o: per layer 8 x ((64 + 64) + (64 + 32) x 2 + (64 + 64))
    assert s["stage"] == "finetune" and s["trainable_parameters"] == 2 * 8 * (128 + 96 * 2 + 128)
    stage1, merged = weights(tmp_path / "t" / "model"), weights(tmp_path / "f" / "model")
    fmaps = [n for n in stage1 if "feature_map" in n or "window_factors" in n]
    assert fmaps and all(torch.equal(stage1[n], merged[n]) for n in fmaps)  # frozen in stage 2
    assert not torch.equal(stage1["model.layers.0.self_attn.o_proj.weight"],
                           merged["model.layers.0.self_attn.o_proj.weight"])
    assert liger.options_of(liger.load(tmp_path / "f" / "model")).variant == "original"
    with pytest.raises(LigerError, match="already converted"):
        finetune(tmp_path / "t" / "model", data_dir, tmp_path / "g", options=RERUN, train=cfg(max_steps=1))


def test_transfer_errors(model_dir, data_dir, tmp_path):
    with pytest.raises(LigerError, match="method must be lolcats"):
        transfer(model_dir, data_dir, tmp_path / "t", options={"method": "liger_gla"}, train=cfg())
    with pytest.raises(LigerError, match="unknown LoLCATs option"):
        transfer(model_dir, data_dir, tmp_path / "t", options={"method": "lolcats", "windw": 3}, train=cfg())
    with pytest.raises(LigerError, match="missing"):
        transfer(model_dir, tmp_path / "nodata", tmp_path / "t", options=OPTIONS, train=cfg())


def test_cli_transfer_uses_the_recipe(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "t"
    rc = main(["transfer", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--options",
               json.dumps(OPTIONS), "--max-steps", "1", "--grad-accum", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0 and "1 steps" in capsys.readouterr().out
    tc = json.loads((out / "summary.json").read_text())["train_config"]
    assert (tc["lr"], tc["weight_decay"], tc["max_grad_norm"], tc["max_steps"]) == (1e-2, 0.0, 0.0, 1)
    rc = main(["transfer", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "x"),
               "--options", '{"method": "liger_gla"}', "--device", "cpu"])
    assert rc == 2


@pytest.mark.slow
def test_smollm2_both_stages_cpu(smollm2_dir, tmp_path):
    """Stage 1 then stage 2 on the embedded SmolLM2, a few steps each (the GPU run's commands, tiny budgets)."""
    from liger.data import prepare_data

    records = [{"instruction": f"Give {i} tips for staying healthy.", "input": "",
                "output": " ".join(["Eat well, sleep enough and move every day."] * (2 + i % 3))} for i in range(40)]
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps(records))
    data = tmp_path / "data"
    prepare_data(src, smollm2_dir, data, seq_len=128, n_val=4, limit=40, progress=False)
    small = dict(max_steps=2, grad_accum=2, val_limit=2, progress=False, device="cpu")
    for variant in ("original", "liger"):
        opts = {"method": "lolcats", "variant": variant}
        s1 = transfer(smollm2_dir, data, tmp_path / variant / "t", options=opts,
                      train=TrainConfig(**{**default_train_config(opts, "transfer").__dict__, **small}))
        assert s1["final_train_loss"] < s1["initial_train_loss"] and np.isfinite(s1["final_val_loss"])
        f = 64 if variant == "original" else 128
        assert s1["added_parameters"] == 30 * (2 * 9 * 64 * f + 9)
        s2 = finetune(tmp_path / variant / "t" / "model", data, tmp_path / variant / "f", options=opts,
                      train=TrainConfig(**{**default_train_config(opts).__dict__, **small}))
        assert s2["optimizer_steps"] == 2 and np.isfinite(s2["final_val_loss"])
        assert (tmp_path / variant / "f" / "model" / "tokenizer.json").exists()
