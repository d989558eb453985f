"""Rebuilding trained models from the small files a run publishes: `save_added` / `load(added=...)` and
`liger merge` (adapter, added parameters, both), `liger restore` (a LoLCATs stage, a Liger fine-tune whose
ablation options added parameters: adapter/ and added/), and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import liger
from liger import LigerError
from liger.cli import main
from liger.convert import ADAPTER_OPTIONS, ADDED_WEIGHTS, save_added
from liger.methods.lolcats import added_parameters
from liger.train import finetune
from liger.train_config import TrainConfig, default_train_config
from liger.transfer import transfer

LOLCATS = {"method": "lolcats", "window": 8}
GLA = {"method": "liger_gla", "hybrid": "liger_attention", "window": 8, "chunk_size": 16}
ABLATION = {**GLA, "gate": "projection", "feature_map": "learnable"}  # both add parameters, trained with LoRA
FAST = dict(grad_accum=2, max_steps=2, eval_every=0, ckpt_every=0, progress=False, device="cpu")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=atol, rtol=0), name


@pytest.fixture(scope="module")
def lolcats_run(model_dir, data_dir, tmp_path_factory) -> Path:
    """Both LoLCATs stages, two steps each: t/ (stage 1) and f/ (stage 2)."""
    root = tmp_path_factory.mktemp("lolcats_run")
    transfer(model_dir, data_dir, root / "t", options=LOLCATS,
             train=TrainConfig(**{**default_train_config(LOLCATS, "transfer").__dict__, **FAST}))
    finetune(root / "t" / "model", data_dir, root / "f", options=LOLCATS,
             train=TrainConfig(**{**default_train_config(LOLCATS).__dict__, **FAST}))
    return root


def test_transfer_writes_the_added_parameters_alone(lolcats_run, model_dir):
    added = lolcats_run / "t" / "added"
    tensors = load_file(str(added / ADDED_WEIGHTS))
    assert tensors and all(("feature_map_" in k) or k.endswith("window_factors") for k in tensors)
    model = liger.load(lolcats_run / "t" / "model")
    assert sum(t.numel() for t in tensors.values()) == added_parameters(model.config, liger.options_of(model))
    assert json.loads((added / ADAPTER_OPTIONS).read_text()) == liger.options_of(model).to_dict()
    trained = weights(lolcats_run / "t" / "model")
    assert all(torch.equal(trained[k], v) for k, v in tensors.items())


def test_merge_rebuilds_both_lolcats_stages_from_the_base_model(lolcats_run, model_dir, tmp_path):
    t, f = lolcats_run / "t", lolcats_run / "f"
    assert main(["merge", "--model", str(model_dir), "--added", str(t / "added"), "--out", str(tmp_path / "s1")]) == 0
    assert_same_weights(tmp_path / "s1", t / "model")  # stage 1: exactly the transferred model
    assert main(["merge", "--model", str(model_dir), "--added", str(t / "added"), "--adapter", str(f / "adapter"),
                 "--out", str(tmp_path / "s2")]) == 0
    assert_same_weights(tmp_path / "s2", f / "model", atol=1e-6)  # stage 2: the LoRA merged the same way
    assert liger.options_of(liger.load(tmp_path / "s2")) == liger.options_of(liger.load(f / "model"))


def test_merge_rebuilds_a_liger_finetune_from_its_adapter(model_dir, data_dir, tmp_path):
    finetune(model_dir, data_dir, tmp_path / "f", options=GLA, train=TrainConfig(lr=1e-2, **FAST))
    assert main(["merge", "--model", str(model_dir), "--adapter", str(tmp_path / "f" / "adapter"),
                 "--dtype", "float32", "--out", str(tmp_path / "m")]) == 0
    assert_same_weights(tmp_path / "m", tmp_path / "f" / "model", atol=1e-6)
    assert not torch.equal(weights(tmp_path / "m")["model.layers.0.self_attn.q_proj.weight"],
                           weights(model_dir)["model.layers.0.self_attn.q_proj.weight"])


def test_save_added_needs_a_converted_model(model_dir, tmp_path):
    with pytest.raises(LigerError, match="not converted"):
        save_added(liger.load(model_dir), tmp_path / "a")
    assert not load_file(str(save_added(liger.linearize(liger.load(model_dir), **GLA), tmp_path / "g")
                             / ADDED_WEIGHTS))  # a Liger conversion adds no parameters


def test_merge_errors(lolcats_run, model_dir, tmp_path, capsys):
    added = lolcats_run / "t" / "added"

    def merge(*extra: str) -> str:
        assert main(["merge", "--model", str(model_dir), *extra, "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err

    assert "nothing to merge" in merge()
    assert "no such folder" in merge("--added", str(tmp_path / "missing"))
    assert "not a LoRA adapter folder" in merge("--adapter", str(added))
    assert "needs added.safetensors" in merge("--added", str(lolcats_run / "f" / "adapter"))
    assert "already converted" in main_err(["merge", "--model", str(lolcats_run / "t" / "model"), "--added",
                                            str(added), "--out", str(tmp_path / "out")], capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ADAPTER_OPTIONS).write_text((added / ADAPTER_OPTIONS).read_text())
    (broken / ADDED_WEIGHTS).write_bytes(b"not safetensors")
    assert "unreadable" in merge("--added", str(broken))
    tensors = load_file(str(added / ADDED_WEIGHTS))
    save_file({**tensors, "model.layers.0.self_attn.extra": torch.zeros(2)}, str(broken / ADDED_WEIGHTS))
    assert "unexpected ['model.layers.0.self_attn.extra']" in merge("--added", str(broken))
    first = sorted(tensors)[0]
    save_file({**tensors, first: torch.zeros(3)}, str(broken / ADDED_WEIGHTS))
    assert "has shape (3,)" in merge("--added", str(broken))
    (broken / ADAPTER_OPTIONS).write_text("{not json")
    assert "not the options of a conversion" in merge("--added", str(broken))
    assert not (tmp_path / "out").exists()


def main_err(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def publish(run_dir: Path, dest: Path, *parts: str) -> Path:
    """What a run publishes: its adapter/, added/ or both, summary.json and train_log.csv (no model/)."""
    dest.mkdir(parents=True)
    for part in parts:
        shutil.copytree(run_dir / part, dest / part)
    for name in ("summary.json", "train_log.csv"):
        shutil.copyfile(run_dir / name, dest / name)
    return dest


def test_restore_rebuilds_published_runs(lolcats_run, model_dir, tmp_path, capsys):
    t, f = lolcats_run / "t", lolcats_run / "f"
    stage1 = publish(t, tmp_path / "pub" / "transferred", "added")
    stage2 = publish(f, tmp_path / "pub" / "finetuned", "adapter")
    assert main(["restore", "--model", str(model_dir), "--run", str(stage1), "--out", str(tmp_path / "t")]) == 0
    assert main(["restore", "--model", str(tmp_path / "t" / "model"), "--run", str(stage2), "--out",
                 str(tmp_path / "f")]) == 0
    assert_same_weights(tmp_path / "t" / "model", t / "model")
    assert_same_weights(tmp_path / "f" / "model", f / "model", atol=1e-6)
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["restored_from"] == str(stage2)
    assert {k: v for k, v in summary.items() if k != "restored_from"} == json.loads((f / "summary.json").read_text())
    assert (tmp_path / "f" / "train_log.csv").read_text() == (f / "train_log.csv").read_text()
    assert (tmp_path / "f" / "adapter" / "adapter_model.safetensors").is_file()
    assert "restored from" in capsys.readouterr().out


def test_restore_errors(lolcats_run, model_dir, tmp_path, capsys):
    run = publish(lolcats_run / "f", tmp_path / "run", "adapter")

    def restore(folder: Path) -> str:
        assert main(["restore", "--model", str(model_dir), "--run", str(folder), "--out", str(tmp_path / "o")]) == 2
        return capsys.readouterr().err

    (run / "train_log.csv").unlink()
    assert "missing: ['train_log.csv']" in restore(run)
    shutil.rmtree(run / "adapter")
    assert "found neither" in restore(run)
    no_weights = publish(lolcats_run / "f", tmp_path / "no_weights", "adapter")
    (no_weights / "adapter" / "adapter_model.safetensors").unlink()
    assert "adapter_model.safetensors: missing" in restore(no_weights)
    bad = publish(lolcats_run / "f", tmp_path / "bad", "adapter")
    (bad / "summary.json").write_text("{oops")
    assert "not JSON" in restore(bad)
    assert not (tmp_path / "o" / "model").exists()


@pytest.fixture(scope="module")
def ablation_run(model_dir, data_dir, tmp_path_factory) -> Path:
    """A two-step Liger fine-tune with both ablation options that add parameters."""
    out = tmp_path_factory.mktemp("ablation_run") / "f"
    finetune(model_dir, data_dir, out, options=ABLATION, train=TrainConfig(lr=1e-2, **FAST))
    return out


def test_restore_rebuilds_a_finetune_that_trained_added_parameters(ablation_run, model_dir, tmp_path, capsys):
    """Its published adapter/ and added/ rebuild model/ on the base model (the same logits); the adapter alone
    is refused, as it would leave the added parameters at their init."""
    added = load_file(str(ablation_run / "added" / ADDED_WEIGHTS))
    assert added and all(".gk_proj." in k or ".feature_map_" in k for k in added)
    run = publish(ablation_run, tmp_path / "pub", "adapter", "added")
    assert main(["restore", "--model", str(model_dir), "--run", str(run), "--out", str(tmp_path / "r")]) == 0
    assert_same_weights(tmp_path / "r" / "model", ablation_run / "model", atol=1e-6)
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"model", "adapter", "added", "summary.json"}
    tokens = torch.randint(0, 128, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = liger.load(ablation_run / "model")(tokens).logits
        got = liger.load(tmp_path / "r" / "model")(tokens).logits
        untrained = liger.linearize(liger.load(model_dir), **ABLATION)(tokens).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (want - untrained).abs().max() > 1e-3
    with pytest.raises(LigerError, match="give the run's added/ too"):
        liger.load(model_dir, adapter=ablation_run / "adapter")
    no_added = publish(ablation_run, tmp_path / "no_added", "adapter")
    assert "give the run's added/ too" in main_err(["restore", "--model", str(model_dir), "--run", str(no_added),
                                                    "--out", str(tmp_path / "o")], capsys)
