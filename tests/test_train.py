"""LoRA fine-tuning (liger.train) on a tiny random Llama: learning, resume, NaN stop, outputs, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import liger
from liger import LigerError, steps
from liger.checkpoints import list_checkpoints
from liger.cli import main
from liger.errors import NonFiniteLossError
from liger.fileio import OUTPUT_MARKER
from liger.stages import LORA
from liger.train import finetune
from liger.train_config import TrainConfig
from tests.conftest import tiny_model

OPTIONS = {"method": "liger_gla", "hybrid": "liger_attention", "window": 8, "chunk_size": 16}
SEQ = 32
VOCAB = 128


def write_packed(folder: Path, n_train: int = 8, n_val: int = 2, seq_len: int = SEQ, vocab: int = VOCAB,
                 seed: int = 0) -> Path:
    """Packed chunks in prepare_data's format: a prompt-like first half (masked out), a target second half."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = rng.integers(0, vocab, size=(n, seq_len)).astype(np.uint16)
        mask = np.zeros((n, seq_len), dtype=bool)
        mask[:, seq_len // 2:] = True
        np.save(folder / f"{split}_ids.npy", ids)
        np.save(folder / f"{split}_mask.npy", mask)
    meta = {"format": "liger-alpaca-packed/1", "seq_len": seq_len,
            "tokenizer": {"vocab_size": vocab, "eos_token_id": 2}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def cfg(**kw) -> TrainConfig:
    base = dict(grad_accum=2, epochs=2, lr=1e-2, eval_every=0, ckpt_every=0, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def interrupt_at(step: int):
    """A training callback that stops the run (as Ctrl-C would) after optimizer step `step`."""

    def interrupt(info):
        if info["step"] == step:
            raise KeyboardInterrupt

    return interrupt


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def lora_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_schedule_budget_and_order():
    c = TrainConfig(micro_batch=1, grad_accum=3, epochs=2)
    assert steps.planned_steps(8, SEQ, c) == 6  # 3 steps per epoch (3 + 3 + 2 chunks)
    assert steps.planned_steps(8, SEQ, TrainConfig(grad_accum=3, max_steps=4)) == 4
    # the budget counts micro-batch tokens and cuts the step that reaches it
    assert steps.planned_steps(8, SEQ, TrainConfig(grad_accum=3, max_tokens=4 * SEQ)) == 2
    assert steps.budget_cut([np.array([0]), np.array([1]), np.array([2])], 3 * SEQ, SEQ, 4 * SEQ) == [np.array([0])]
    a, b = steps.epoch_order(50, 0, 1), steps.epoch_order(50, 0, 1)
    assert (a == b).all() and not (a == steps.epoch_order(50, 0, 0)).all() and sorted(a) == list(range(50))


def test_max_tokens_stops_early(model_dir, data_dir, tmp_path):
    summary = finetune(model_dir, data_dir, tmp_path / "o", options=OPTIONS, train=cfg(max_tokens=5 * SEQ))
    assert summary["tokens_trained"] == 5 * SEQ and summary["optimizer_steps"] == 3


def test_loss_decreases_on_a_repeated_batch(model_dir, tmp_path):
    data = write_packed(tmp_path / "one", n_train=1, n_val=1)
    summary = finetune(model_dir, data, tmp_path / "out", options=OPTIONS,
                       train=cfg(grad_accum=1, epochs=30, lr=3e-2))
    rows = [r for r in read_log(tmp_path / "out" / "train_log.csv") if r["loss"]]
    assert len(rows) == 30 and summary["optimizer_steps"] == 30
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.5, losses
    assert sum(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)) >= 25, losses
    assert summary["final_train_loss"] == pytest.approx(losses[-1])
    assert summary["tokens_trained"] == 30 * SEQ


def test_resume_reproduces_the_uninterrupted_run(model_dir, data_dir, tmp_path):
    # 8 chunks, global batch 2: 4 steps per epoch, so 6 steps cross an epoch boundary.
    settings = cfg(max_steps=6, ckpt_every=3, eval_every=2)
    ref = finetune(model_dir, data_dir, tmp_path / "a", options=OPTIONS, train=settings)

    with pytest.raises(KeyboardInterrupt):
        finetune(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings, callback=interrupt_at(5))
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-00000003"]
    assert not (tmp_path / "b" / "summary.json").exists()

    again = finetune(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings)
    assert again["resumed_at_steps"] == [3] and ref["resumed_at_steps"] == []
    assert again["optimizer_steps"] == ref["optimizer_steps"] == 6
    assert again["tokens_trained"] == ref["tokens_trained"] == 6 * 2 * SEQ
    assert again["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-6, abs=1e-7)
    assert again["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-6, abs=1e-7)
    wa, wb = lora_weights(tmp_path / "a"), lora_weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-6, atol=1e-7), k
    cols = ("step", "epoch", "loss", "lr", "tokens_seen", "val_loss")
    log_a = [[r[c] for c in cols] for r in read_log(tmp_path / "a" / "train_log.csv")]
    log_b = [[r[c] for c in cols] for r in read_log(tmp_path / "b" / "train_log.csv")]
    assert [r[0] for r in log_b] == [str(i) for i in range(7)]
    for ra, rb in zip(log_a, log_b, strict=True):
        assert ra[:2] == rb[:2] and ra[4] == rb[4]
        for x, y in zip(ra[2:], rb[2:], strict=True):
            assert (x == y == "") or float(x) == pytest.approx(float(y), rel=1e-6)
    # a third call resumes at the end: nothing left to train, same result
    third = finetune(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings)
    assert third["optimizer_steps"] == 6 and third["final_train_loss"] == again["final_train_loss"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(model_dir, data_dir, tmp_path, monkeypatch):
    real = steps.micro_loss
    calls = {"n": 0}

    def poisoned(model, input_ids, labels, n_items):
        loss = real(model, input_ids, labels, n_items)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:  # grad_accum 1: step 5
                return loss * float("nan")
        return loss

    monkeypatch.setattr(steps, "micro_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(grad_accum=1, max_steps=8, ckpt_every=2))
    assert isinstance(info.value, LigerError)
    msg = str(info.value)
    kept = out / "checkpoints" / "step-00000004"
    assert "step 5" in msg and "nan" in msg and str(kept) in msg and "learning rate" in msg and "--restart" in msg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004"]
    assert json.loads((kept / "state.json").read_text())["state"]["step"] == 4
    assert not (out / "summary.json").exists() and not (out / "model").exists()


def max_weight(path: Path) -> float:
    return max(float(t.abs().max()) for t in load_file(str(path)).values())


def test_a_diverged_update_is_never_kept_and_a_lower_lr_then_trains(model_dir, data_dir, tmp_path):
    """lr 1e6: step 1's update leaves LoRA weights of 1e6 whose gradients overflow; no checkpoint may keep them."""
    out = tmp_path / "o"
    with pytest.raises(NonFiniteLossError, match=r"step 1: the gradient norm after the update is inf") as info:
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(grad_accum=1, max_steps=4, ckpt_every=1,
                                                                      lr=1e6))
    assert "no checkpoint had been written yet" in str(info.value)
    assert list_checkpoints(out / "checkpoints") == []
    summary = finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(grad_accum=1, max_steps=4, ckpt_every=1))
    assert summary["optimizer_steps"] == 4 and summary["resumed_at_steps"] == [] and summary["resume_changes"] == []
    assert np.isfinite(summary["final_train_loss"]) and max_weight(out / "adapter" / "adapter_model.safetensors") < 1


def test_a_diverged_run_resumes_from_its_last_good_checkpoint_with_a_lower_lr(model_dir, data_dir, tmp_path,
                                                                              monkeypatch):
    real, calls = steps.train_step, {"n": 0}

    def lr_blows_up_at_step_3(model, params, opt, batches, max_grad_norm):
        calls["n"] += 1
        if calls["n"] == 3:
            for group in opt.param_groups:
                group["lr"] = 1e6
        return real(model, params, opt, batches, max_grad_norm)

    out = tmp_path / "o"
    settings = dict(grad_accum=1, max_steps=6, ckpt_every=1)
    monkeypatch.setattr(steps, "train_step", lr_blows_up_at_step_3)
    with pytest.raises(NonFiniteLossError) as info:
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(**settings))
    kept = out / "checkpoints" / "step-00000002"
    assert "step 3:" in str(info.value) and f"kept at {kept}: rerun with a lower learning rate" in str(info.value)
    assert list_checkpoints(out / "checkpoints") == [kept] and max_weight(kept / "lora.safetensors") < 1
    monkeypatch.undo()

    summary = finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(**settings, lr=5e-3))
    assert summary["resumed_at_steps"] == [2] and summary["optimizer_steps"] == 6
    assert summary["train_config"]["lr"] == 5e-3 and summary["resume_changes"] == [{"after_step": 2,
                                                                                    "lr": [1e-2, 5e-3]}]
    assert np.isfinite(summary["final_train_loss"]) and np.isfinite(summary["final_val_loss"])
    assert [float(r["lr"]) for r in read_log(out / "train_log.csv") if r["loss"]] == [1e-2] * 2 + [5e-3] * 4
    # once resumed, the new lr is the run's: a later resume needs it
    with pytest.raises(LigerError, match=r"lr 0\.005, now 0\.01"):
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(**settings))


def test_a_resume_with_other_result_changing_settings_is_refused(model_dir, data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    settings = {"max_steps": 2, "ckpt_every": 1}
    first = finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(**settings))
    for changed in ({"lr": 5e-4}, {"eval_every": 1}, {"max_steps": 3}, {"seed": 1}, {"max_grad_norm": 0.5}):
        refused = rf"\({next(iter(changed))} .*, now .*new --out.*--restart.*delete .*checkpoints"
        with pytest.raises(LigerError, match=refused):
            finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(**{**settings, **changed}))
    other_model = tmp_path / "other_model"
    tiny_model("llama", seed=1).save_pretrained(other_model)
    with pytest.raises(LigerError, match=r"other settings \(the model\)"):
        finetune(other_model, data_dir, out, options=OPTIONS, train=cfg(**settings))
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(first))  # untouched
    # how often to checkpoint and where to run do not change the result
    again = finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(max_steps=2, ckpt_every=5))
    assert again["resumed_at_steps"] == [2] and again["final_train_loss"] == first["final_train_loss"]

    argv = ["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--options",
            json.dumps(OPTIONS), "--max-steps", "2", "--grad-accum", "2", "--lr", "5e-4", "--eval-every", "0",
            "--no-progress", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err  # the weights' loading bar, then the error line
    assert "Traceback" not in err and err.splitlines()[-1].startswith("liger finetune: error: ")
    assert "lr 0.01, now 0.0005" in err.splitlines()[-1]
    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(LORA, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        main([*argv, "--restart"])
    monkeypatch.undo()
    assert not (out / "summary.json").exists()  # the discarded run's summary does not outlive it
    assert main([*argv, "--restart"]) == 0
    restarted = json.loads((out / "summary.json").read_text())
    assert restarted["train_config"]["lr"] == 5e-4 and restarted["resumed_at_steps"] == []
    assert restarted["optimizer_steps"] == 2 and restarted["final_train_loss"] != first["final_train_loss"]


def test_checkpoints_copied_without_the_rest_of_the_run_resume(model_dir, data_dir, tmp_path):
    settings = cfg(max_steps=4, ckpt_every=2)
    ref = finetune(model_dir, data_dir, tmp_path / "a", options=OPTIONS, train=settings)
    with pytest.raises(KeyboardInterrupt):
        finetune(model_dir, data_dir, tmp_path / "b", options=OPTIONS, train=settings, callback=interrupt_at(3))
    copied = tmp_path / "elsewhere"
    copied.mkdir()
    shutil.copytree(tmp_path / "b" / "checkpoints", copied / "checkpoints")  # no marker, no log
    again = finetune(model_dir, data_dir, copied, options=OPTIONS, train=settings)
    assert again["resumed_at_steps"] == [2] and again["final_val_loss"] == pytest.approx(ref["final_val_loss"])
    # anything else beside the checkpoints, or checkpoints that are not a run's, is still refused and kept
    for extra, name in (("notes.txt", "notes.txt"), (None, "checkpoints/step-00000002/state.json")):
        odd = tmp_path / f"odd-{name.replace('/', '_')}"
        shutil.copytree(tmp_path / "b" / "checkpoints", odd / "checkpoints")
        if extra:
            (odd / extra).write_text("mine")
        else:
            (odd / name).write_text("{}")
        before = sorted(p.relative_to(odd) for p in odd.rglob("*"))
        with pytest.raises(LigerError, match="not an output of `liger finetune`"):
            finetune(model_dir, data_dir, odd, options=OPTIONS, train=settings)
        assert sorted(p.relative_to(odd) for p in odd.rglob("*")) == before


def test_training_writes_only_into_its_own_output_folder(model_dir, tmp_path):
    data = write_packed(tmp_path / "inputs" / "data")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(LigerError, match=r"not an output of `liger finetune`.*thesis\.txt"):
        finetune(model_dir, data, mine, options=OPTIONS, train=cfg(max_steps=1))
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    for out, how, flag in ((data, "is", "--data"), (data.parent, "holds", "--data"), (model_dir, "is", "--model")):
        with pytest.raises(LigerError, match=rf"--out {out} {how} the input {flag}"):
            finetune(model_dir, data, out, options=OPTIONS, train=cfg(max_steps=1))
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / OUTPUT_MARKER).write_text('{"command": "convert"}')
    with pytest.raises(LigerError, match=r"written by `liger convert`, not `liger finetune`"):
        finetune(model_dir, data, converted, options=None, train=cfg())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "inputs", "mine"]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_outputs_parameter_count_and_merged_model(model_dir, data_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "out"
    summary = finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(max_steps=3, ckpt_every=2))
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model/config.json",
                 "train_log.csv", "summary.json", "checkpoints/step-00000003/state.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints" / "step-00000002").exists()  # only the last checkpoint is kept
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("tokens_trained", "optimizer_steps", "wall_time_s", "tokens_per_s", "initial_train_loss",
                "final_train_loss", "initial_val_loss", "final_val_loss", "trainable_parameters", "versions",
                "device", "train_config", "options"):
        assert summary[key] is not None, key
    assert set(summary["versions"]) >= {"torch", "transformers", "peft", "liger"}

    c = tiny_model("llama").config
    d = c.hidden_size // c.num_attention_heads
    outs = {"q_proj": c.num_attention_heads * d, "k_proj": c.num_key_value_heads * d,
            "v_proj": c.num_key_value_heads * d}
    expected = c.num_hidden_layers * sum(8 * (c.hidden_size + o) for o in outs.values())
    assert summary["trainable_parameters"] == expected

    merged = liger.load(out / "model")
    assert liger.options_of(merged).method == "liger_gla" and liger.options_of(merged).window == 8
    base = liger.linearize(liger.load(model_dir), **OPTIONS)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = merged(tokens).logits, peft_model(tokens).logits
        untrained = liger.linearize(liger.load(model_dir), **OPTIONS)(tokens).logits
        from_base = liger.load(model_dir, adapter=out / "adapter").eval()(tokens).logits  # converts, then merges
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4) and torch.allclose(from_base, a, atol=1e-4, rtol=1e-4)
    assert (a - untrained).abs().max() > 1e-3  # the LoRA did change the model
    assert summary["base_val_loss"] is not None and summary["base_val_loss"] != summary["initial_val_loss"]
    with pytest.raises(LigerError, match="was trained on a model converted with"):
        liger.load(liger_gsa_folder(model_dir, tmp_path), adapter=out / "adapter")


def test_the_parameters_an_ablation_option_added_train_beside_lora(model_dir, data_dir, tmp_path):
    """gate: projection and feature_map: learnable: their parameters are trained with LoRA (in the optimizer and
    the checkpoints), counted in the summary, and written alone to added/."""
    from liger.checkpoints import WEIGHTS
    from liger.convert import ADDED_WEIGHTS
    from liger.methods import added_parameters

    options = {**OPTIONS, "gate": "projection", "feature_map": "learnable"}
    out = tmp_path / "out"
    summary = finetune(model_dir, data_dir, out, options=options, train=cfg(max_steps=2))
    start = liger.linearize(liger.load(model_dir), **options)
    n_added = added_parameters(start.config, liger.options_of(start))
    added = load_file(str(out / "added" / ADDED_WEIGHTS))
    assert summary["added_parameters"] == n_added == sum(t.numel() for t in added.values()) > 0
    init = start.state_dict()
    assert all(not torch.equal(t, init[name]) for name, t in added.items())  # every added tensor moved
    lora = lora_weights(out)
    assert all(bool(t.abs().sum() > 0) for name, t in lora.items() if "lora_B" in name)  # LoRA too (B starts at 0)
    assert summary["trainable_parameters"] == sum(t.numel() for t in lora.values()) + n_added
    ckpt = load_file(str(next((out / "checkpoints").glob("step-*")) / WEIGHTS))
    assert sum(t.numel() for t in ckpt.values()) == summary["trainable_parameters"]
    trained = liger.load(out / "model").state_dict()
    assert all(torch.equal(trained[name], t) for name, t in added.items())


def liger_gsa_folder(model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model converted with another method, saved."""
    folder = tmp_path / "gsa"
    liger.linearize(liger.load(model_dir), "liger_gsa", num_slots=4).save_pretrained(folder)
    return folder


def test_method_base_trains_nothing(model_dir, tmp_path):
    for options in (None, {"method": "base"}):
        out = tmp_path / str(options is None)
        summary = finetune(model_dir, tmp_path / "no-data", out, options=options, train=cfg())
        assert summary["status"] == "skipped" and summary["optimizer_steps"] == 0
        assert json.loads((out / "summary.json").read_text())["method"] == "base"
        assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "summary.json"]


def test_clear_errors(model_dir, data_dir, tmp_path):
    missing = write_packed(tmp_path / "missing")
    (missing / "val_mask.npy").unlink()
    with pytest.raises(LigerError, match=r"val_mask\.npy.*prepare-data"):
        finetune(model_dir, missing, tmp_path / "o1", options=OPTIONS, train=cfg(max_steps=1))

    other = write_packed(tmp_path / "other", vocab=VOCAB)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer"]["vocab_size"] = 50000
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LigerError, match=r"vocabulary of 50000.*do not match"):
        finetune(model_dir, other, tmp_path / "o2", options=OPTIONS, train=cfg(max_steps=1))

    with pytest.raises(LigerError, match="unknown Liger method"):
        finetune(model_dir, data_dir, tmp_path / "o3", options={"method": "nope"}, train=cfg(max_steps=1))

    out = tmp_path / "o4"
    finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(max_steps=2, ckpt_every=1))
    with pytest.raises(LigerError, match=r"other settings \(lora_r 8, now 4; max_steps 2, now 3\)"):
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(max_steps=3, lora_r=4))
    (out / "checkpoints" / "step-00000002" / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(LigerError, match=r"optimizer\.pt.*corrupt.*--restart"):
        finetune(model_dir, data_dir, out, options=OPTIONS, train=cfg(max_steps=2))

    with pytest.raises(LigerError, match="invalid training settings"):
        TrainConfig(grad_accum=0)


def test_cli_finetune(model_dir, data_dir, tmp_path, capsys):
    from liger.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
               "--options", json.dumps(OPTIONS), "--max-steps", "2", "--grad-accum", "1", "--lora-r", "4",
               "--lora-targets", "q_proj,v_proj", "--lr", "0.005", "--no-progress", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer_steps"] == 2 and summary["train_config"]["lora_r"] == 4
    assert summary["train_config"]["lora_targets"] == ["q_proj", "v_proj"] and summary["train_config"]["lr"] == 0.005
    assert main(["finetune", "--model", str(model_dir), "--data", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "cli2"), "--options", json.dumps(OPTIONS)]) == 2
    assert "prepare-data" in capsys.readouterr().err


def test_cli_finetune_options_without_a_method(model_dir, data_dir, tmp_path, capsys):
    from liger.cli import main

    assert main(["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "o"),
                 "--options", '{"window": 32}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liger finetune: error: options {'window': 32} name no method")


@pytest.mark.slow
def test_smollm2_cpu_smoke(smollm2_dir, tmp_path):
    from liger.data import prepare_data

    records = [
        {"instruction": f"Give {i} tips for staying healthy.", "input": "" if i % 2 else f"person {i}",
         "output": " ".join(["Eat well, sleep enough and move every day."] * (2 + i % 3))}
        for i in range(40)
    ]
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps(records))
    data = tmp_path / "data"
    meta = prepare_data(src, smollm2_dir, data, seq_len=128, n_val=4, limit=40, progress=False)
    assert meta["splits"]["train"]["chunks"] >= 6
    out = tmp_path / "out"
    summary = finetune(smollm2_dir, data, out, options={"method": "liger_gla", "hybrid": "liger_attention"},
                       train=TrainConfig(max_steps=3, grad_accum=2, val_limit=2, progress=False, device="cpu"))
    assert summary["optimizer_steps"] == 3 and summary["tokens_trained"] == 3 * 2 * 128
    assert np.isfinite(summary["final_train_loss"]) and np.isfinite(summary["final_val_loss"])
    model = liger.load(out / "model")
    assert liger.options_of(model).method == "liger_gla"
    assert (out / "model" / "tokenizer.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_finetune_learns_and_resumes(tmp_path):
    """On CUDA: bf16 weights, fp32 LoRA, fla kernels when installed (head dim 64, 128-token chunks).

    About 3.5 minutes on an H100 with a cold Triton cache (fla compiles its kernels on the first steps), seconds
    after that.
    """
    model_dir = tmp_path / "model"
    tiny_model("llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=2).save_pretrained(model_dir)
    data = write_packed(tmp_path / "data", n_train=2, n_val=1, seq_len=128)
    opts = {"method": "liger_gla", "hybrid": "liger_attention"}
    settings = TrainConfig(grad_accum=1, epochs=15, lr=1e-2, eval_every=0, ckpt_every=10, progress=False)
    ref = finetune(model_dir, data, tmp_path / "a", options=opts, train=settings)
    assert ref["device"].startswith("cuda") and ref["dtype"] == "bfloat16"
    assert ref["final_train_loss"] < ref["initial_train_loss"] - 0.3
    assert all(v.dtype == torch.float32 for v in lora_weights(tmp_path / "a").values())
    with pytest.raises(KeyboardInterrupt):
        finetune(model_dir, data, tmp_path / "b", options=opts, train=settings, callback=interrupt_at(13))
    again = finetune(model_dir, data, tmp_path / "b", options=opts, train=settings)
    assert again["resumed_at_steps"] == [10]
    assert again["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-2)
    wa, wb = lora_weights(tmp_path / "a"), lora_weights(tmp_path / "b")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-2, atol=1e-4), k
    merged = liger.load(tmp_path / "a" / "model", dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        assert torch.isfinite(merged(torch.randint(0, VOCAB, (1, 128), device="cuda")).logits).all()


def test_micro_batch_of_the_whole_step_equals_accumulation(model_dir, data_dir, tmp_path):
    """Micro batch 2 x accumulation 1 trains like micro batch 1 x accumulation 2 (the paper's recipe): the step
    loss is the token-weighted mean over the same chunks either way, so GPUs can run the step as one batch."""
    one = finetune(model_dir, data_dir, tmp_path / "accum", options=OPTIONS, train=cfg(micro_batch=1, grad_accum=2))
    two = finetune(model_dir, data_dir, tmp_path / "micro", options=OPTIONS, train=cfg(micro_batch=2, grad_accum=1))
    assert one["final_train_loss"] == pytest.approx(two["final_train_loss"], rel=1e-5)
    a, b = lora_weights(tmp_path / "accum"), lora_weights(tmp_path / "micro")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
