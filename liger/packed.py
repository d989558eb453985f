"""The packed-data format: the folder `prepare-data` writes (`liger.data`) and the training stages read.

Files: ``{train,val}_ids.npy`` (unsigned token ids, `id_dtype`), ``{train,val}_mask.npy`` (bool, True on the
training targets), each split one (chunks, seq_len) array, and ``meta.json`` (how the chunks were made, with the
sha256 of each array file). `write_packed` writes a folder atomically; `load_packed` opens one read-only
(memory-mapped) and checks it; `PackedData.fingerprint` is what a resumed run compares.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liger.errors import TrainError
from liger.fileio import atomic_dir, sha256_file

FORMAT = "liger-alpaca-packed/1"  # meta.json's "format"
ARRAYS = ("train_ids", "train_mask", "val_ids", "val_mask")  # in the order they are written
DATA_FILES = (*(f"{name}.npy" for name in ARRAYS), "meta.json")


def id_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def write_packed(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], command: str) -> dict[str, Any]:
    """Write `arrays` ({name: array} of `ARRAYS`) and `meta` as the output folder `out_dir` of `liger command`
    (`liger.fileio.atomic_dir`); returns the meta written: `meta` with the sha256 of each array file."""
    with atomic_dir(out_dir, command) as tmp:
        hashes: dict[str, str] = {}
        for name, arr in arrays.items():
            file = tmp / f"{name}.npy"
            np.save(file, arr, allow_pickle=False)
            hashes[file.name] = sha256_file(file)
        meta = {**meta, "sha256": hashes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


@dataclass
class PackedData:
    """The packed chunks of one data folder (memory-mapped) and its meta.json."""

    path: Path
    train_ids: np.ndarray
    train_mask: np.ndarray
    val_ids: np.ndarray
    val_mask: np.ndarray
    meta: dict[str, Any]

    @property
    def seq_len(self) -> int:
        return int(self.train_ids.shape[1])

    def fingerprint(self) -> str:
        """What identifies the data for resuming: the file hashes prepare_data recorded, else the shapes."""
        sha = self.meta.get("sha256")
        if sha:
            return json.dumps(sha, sort_keys=True)
        return json.dumps([list(self.train_ids.shape), list(self.val_ids.shape)])


def load_packed(data_dir: str | os.PathLike[str], val_limit: int | None = None) -> PackedData:
    """Open a prepare_data folder read-only (mmap) and check its files; clear errors for missing or bad files.
    `val_limit`: keep only the first N validation chunks."""
    path = Path(data_dir).expanduser()
    for name in DATA_FILES:
        if not (path / name).is_file():
            raise TrainError(
                f"{path / name}: missing; the data folder must come from prepare-data: run "
                f"`python -m liger prepare-data --tokenizer MODEL_DIR --out {path}` first"
            )
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"{path / 'meta.json'}: unreadable ({e}); run prepare-data again") from e
    arrays = {}
    for name in ARRAYS:
        try:
            arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TrainError(f"{path / name}.npy: unreadable ({e}); run prepare-data again") from e
    for split in ("train", "val"):
        ids, mask = arrays[f"{split}_ids"], arrays[f"{split}_mask"]
        if ids.ndim != 2 or ids.shape != mask.shape or ids.dtype.kind != "u" or mask.dtype != np.bool_:
            raise TrainError(
                f"{path}: {split}_ids {ids.dtype}{list(ids.shape)} and {split}_mask {mask.dtype}{list(mask.shape)} "
                "are not the packed format (unsigned ids and bool mask of one (chunks, seq_len) shape); "
                "run prepare-data again"
            )
    if arrays["train_ids"].shape[0] == 0:
        raise TrainError(f"{path}: no training chunks; prepare more records (prepare-data --limit)")
    if arrays["val_ids"].shape[0] and arrays["val_ids"].shape[1] != arrays["train_ids"].shape[1]:
        raise TrainError(f"{path}: train and val chunks have different lengths; run prepare-data again")
    if meta.get("seq_len") not in (None, arrays["train_ids"].shape[1]):
        raise TrainError(f"{path}: meta.json says seq_len {meta['seq_len']} but the chunks have "
                         f"{arrays['train_ids'].shape[1]} tokens; run prepare-data again")
    if val_limit is not None:
        arrays["val_ids"], arrays["val_mask"] = arrays["val_ids"][:val_limit], arrays["val_mask"][:val_limit]
    return PackedData(path=path, meta=meta, **arrays)


def check_vocab(data: PackedData, config: Any, tokenizer: Any | None) -> None:
    """Fail when the data was tokenized with another tokenizer than the model's (meta.json records it)."""
    tok_meta = data.meta.get("tokenizer", {})
    vocab = tok_meta.get("vocab_size")
    model_vocab = int(config.vocab_size)
    hint = "run prepare-data with this model's tokenizer (--tokenizer MODEL_DIR) into a new data folder"
    if vocab is not None and vocab > model_vocab:
        raise TrainError(f"{data.path}: tokenized with a vocabulary of {vocab} tokens but the model has "
                         f"{model_vocab} embeddings: data and model do not match; {hint}")
    if tokenizer is not None:
        if vocab is not None and len(tokenizer) != vocab:
            raise TrainError(f"{data.path}: tokenized with a vocabulary of {vocab} tokens but the model's "
                             f"tokenizer has {len(tokenizer)}: data and model do not match; {hint}")
        eos = tok_meta.get("eos_token_id")
        if eos is not None and tokenizer.eos_token_id is not None and eos != tokenizer.eos_token_id:
            raise TrainError(f"{data.path}: EOS id {eos} in the data but {tokenizer.eos_token_id} in the model's "
                             f"tokenizer: data and model do not match; {hint}")
    for split, ids in (("train", data.train_ids), ("val", data.val_ids)):
        if ids.size and int(ids.max()) >= model_vocab:
            raise TrainError(f"{data.path}: {split} token id {int(ids.max())} >= the model's vocabulary size "
                             f"{model_vocab}: data and model do not match; {hint}")
