"""Data preparation: Alpaca records -> prompt/response tokens -> packed, masked training chunks.

The recipe (docs/method.md#fine-tuning-recipe): each record is rendered with the Alpaca template; the prompt is
tokenized with the tokenizer's special tokens, the response without them and followed by EOS; only the
response and its EOS are training targets. Records are concatenated and cut into ``seq_len`` chunks
(the tail is dropped, as are chunks without any target). Records ``0..n_val-1`` are the validation
split, the rest the training split, whose chunks are shuffled with a seeded numpy Generator.

The output folder is in the packed-data format (`liger.packed`, which writes it atomically); an existing folder
that is not an earlier prepare-data output is refused (`liger.fileio`).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liger.fileio import check_output
from liger.models import load_tokenizer
from liger.packed import ARRAYS, FORMAT, id_dtype, write_packed
from liger.records import DEFAULT_SOURCE, DataError, format_prompt, load_records, source_info

TOKENIZE_BATCH = 1000

COMMAND = "prepare-data"  # the output folder's owner (liger.fileio)


# ---------------------------------------------------------------------------------------- tokenizing


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name} has no EOS token; use the model's own tokenizer (with eos_token set)")
    return int(eos)


def _join(prompt_ids: Sequence[int], response_ids: Sequence[int], eos: int) -> tuple[list[int], list[bool]]:
    ids = [*prompt_ids, *response_ids, eos]
    mask = [False] * len(prompt_ids) + [True] * (len(response_ids) + 1)
    return ids, mask


def tokenize_record(tokenizer: Any, record: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response + EOS and the target mask (False on the prompt, True after)."""
    prompt = tokenizer(format_prompt(record), add_special_tokens=True)["input_ids"]
    response = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    return _join(prompt, response, _eos_id(tokenizer))


def _tokenize_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Tokenize all records in batches; return the concatenated ids (int64), mask, and per-record lengths."""
    from tqdm.auto import tqdm

    eos = _eos_id(tokenizer)
    id_chunks: list[np.ndarray] = []
    mask_chunks: list[np.ndarray] = []
    lengths: list[int] = []
    with tqdm(total=len(records), desc="tokenize", unit="rec", disable=not progress) as bar:
        for start in range(0, len(records), TOKENIZE_BATCH):
            batch = records[start : start + TOKENIZE_BATCH]
            prompts = tokenizer([format_prompt(r) for r in batch], add_special_tokens=True)["input_ids"]
            responses = tokenizer([r["output"] for r in batch], add_special_tokens=False)["input_ids"]
            for p, r in zip(prompts, responses, strict=True):
                n = len(p) + len(r) + 1
                ids = np.empty(n, dtype=np.int64)
                ids[: len(p)] = p
                ids[len(p) : n - 1] = r
                ids[n - 1] = eos
                mask = np.zeros(n, dtype=bool)
                mask[len(p) :] = True
                id_chunks.append(ids)
                mask_chunks.append(mask)
                lengths.append(n)
            bar.update(len(batch))
    if not id_chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), lengths
    return np.concatenate(id_chunks), np.concatenate(mask_chunks), lengths


# ------------------------------------------------------------------------------------------- packing


def pack(
    ids: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut a concatenated token stream into ``seq_len`` chunks.

    Returns ``(ids, mask, dropped_tail)``: arrays of shape (n_chunks, seq_len) in stream order, keeping the
    dtype of ``ids``; the partial last chunk is dropped (its length is ``dropped_tail``), and so is every
    chunk without a target token.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    ids_a = np.asarray(ids)
    mask_a = np.asarray(mask, dtype=bool)
    if ids_a.ndim != 1 or ids_a.shape != mask_a.shape:
        raise ValueError(f"ids and mask must be 1-D and of equal length, got {ids_a.shape} and {mask_a.shape}")
    n_chunks = len(ids_a) // seq_len
    kept = n_chunks * seq_len
    ids_2d = ids_a[:kept].reshape(n_chunks, seq_len)
    mask_2d = mask_a[:kept].reshape(n_chunks, seq_len)
    has_target = mask_2d.any(axis=1)
    return (
        np.ascontiguousarray(ids_2d[has_target]),
        np.ascontiguousarray(mask_2d[has_target]),
        int(len(ids_a) - kept),
    )


# ------------------------------------------------------------------------------------------- prepare


def _tokenizer(tokenizer_path_or_obj: Any) -> tuple[Any, str]:
    """The tokenizer (a model folder's, `liger.models.load_tokenizer`, or the object given) and its name."""
    if isinstance(tokenizer_path_or_obj, str | os.PathLike):
        path = Path(tokenizer_path_or_obj).expanduser()
        return load_tokenizer(path), str(path)
    tok = tokenizer_path_or_obj
    return tok, str(getattr(tok, "name_or_path", "") or type(tok).__name__)


def _bos_added(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def prepare_data(
    source: str | os.PathLike[str],
    tokenizer_path_or_obj: Any,
    out_dir: str | os.PathLike[str],
    *,
    seq_len: int = 1024,
    n_val: int = 200,
    seed: int = 0,
    epochs: int = 2,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load, tokenize, split, pack and write the data to ``out_dir``; return the meta (also in meta.json)."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    if n_val < 0:
        raise DataError(f"n_val must be >= 0, got {n_val}")
    if epochs < 1:
        raise DataError(f"epochs must be >= 1, got {epochs}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1 (or omitted), got {limit}")
    out = Path(out_dir).expanduser()
    tok_path = tokenizer_path_or_obj if isinstance(tokenizer_path_or_obj, str | os.PathLike) else None
    check_output(out, COMMAND, inputs={"--source": source, "--tokenizer": tok_path})
    records = load_records(source)
    n_total_source = len(records)
    if limit is not None:
        records = records[:limit]
    if len(records) < n_val + 1:
        raise DataError(
            f"{os.fspath(source)}: {len(records)} records but n_val={n_val} validation records plus at least one "
            "training record are needed; lower --n-val or raise --limit"
        )
    tokenizer, tok_name = _tokenizer(tokenizer_path_or_obj)
    eos = _eos_id(tokenizer)
    vocab = len(tokenizer)
    dtype = id_dtype(vocab)

    splits: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for split, recs in (("val", records[:n_val]), ("train", records[n_val:])):
        ids, mask, _ = _tokenize_records(tokenizer, recs, progress=progress)
        if ids.size and (ids.min() < 0 or ids.max() >= np.iinfo(dtype).max + 1):
            raise DataError(f"token id {int(ids.max())} does not fit {np.dtype(dtype).name}; tokenizer vocab={vocab}")
        c_ids, c_mask, tail = pack(ids.astype(dtype), mask, seq_len)
        n_full = len(ids) // seq_len
        if len(c_ids) == 0 and len(recs) > 0:
            raise DataError(
                f"{split} split: {len(recs)} records give {len(ids)} tokens, not one full {seq_len}-token chunk "
                "with a target; use more records (--limit, --n-val) or a smaller --seq-len"
            )
        if split == "train":
            perm = np.random.default_rng(seed).permutation(len(c_ids))
            c_ids, c_mask = c_ids[perm], c_mask[perm]
        arrays[f"{split}_ids"] = np.ascontiguousarray(c_ids)
        arrays[f"{split}_mask"] = np.ascontiguousarray(c_mask)
        splits[split] = {
            "records": len(recs),
            "tokens": int(len(ids)),
            "target_tokens": int(mask.sum()),
            "chunks": int(len(c_ids)),
            "chunk_tokens": int(c_ids.size),
            "chunk_target_tokens": int(c_mask.sum()),
            "dropped_tail_tokens": tail,
            "dropped_no_target_chunks": int(n_full - len(c_ids)),
            "shuffled": split == "train",
        }
    arrays = {k: arrays[k] for k in ARRAYS}  # the files in a fixed order: train first
    train_tokens = splits["train"]["chunk_tokens"]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "source": source_info(source, n_total_source),
        "tokenizer": {
            "name_or_path": tok_name,
            "class": type(tokenizer).__name__,
            "vocab_size": vocab,
            "bos_token_id": tokenizer.bos_token_id,
            "bos_added": _bos_added(tokenizer),
            "eos_token_id": eos,
        },
        "template": "alpaca",
        "seq_len": seq_len,
        "seed": seed,
        "n_val": n_val,
        "limit": limit,
        "ids_dtype": np.dtype(dtype).name,
        "mask": "bool, True = training target (response tokens and EOS)",
        "records": {"source_total": n_total_source, "total": len(records), "train": len(records) - n_val, "val": n_val},
        "splits": {"train": splits["train"], "val": splits["val"]},
        "packing": "records concatenated per split and cut into seq_len chunks; the last partial chunk is "
        "dropped, as are chunks without a target token; train chunks shuffled (numpy default_rng(seed)), "
        "val chunks in order",
        "epochs": epochs,
        "tokens_per_epoch": train_tokens,
        "planned_training_tokens": epochs * train_tokens,
        "planned_training_target_tokens": epochs * splits["train"]["chunk_target_tokens"],
        "files": {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()},
    }
    if splits["val"]["chunks"] == 0:
        warnings.warn("no validation chunks (n_val=0)", stacklevel=2)
    return write_packed(out, arrays, meta, COMMAND)


# ----------------------------------------------------------------------------------------------- CLI


def _summary(meta: dict[str, Any], out: str) -> str:
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    return (
        f"prepared {meta['records']['total']} records -> {out}: train {tr['chunks']} chunks "
        f"({tr['records']} records, {tr['target_tokens']} target tokens), val {va['chunks']} chunks "
        f"({va['records']} records); seq_len {meta['seq_len']}, {meta['tokens_per_epoch']} tokens/epoch, "
        f"{meta['planned_training_tokens']} planned over {meta['epochs']} epochs"
    )


def _cli_prepare(args: argparse.Namespace) -> int:
    meta = prepare_data(
        args.source,
        args.tokenizer,
        args.out,
        seq_len=args.seq_len,
        n_val=args.n_val,
        seed=args.seed,
        epochs=args.epochs,
        limit=args.limit,
    )
    print(_summary(meta, args.out))
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prepare-data`` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "prepare-data",
        help="tokenize Alpaca and pack it into masked training chunks",
        description="Alpaca template, tokenize (prompt masked, response + EOS as targets), pack into chunks.",
    )
    p.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help=f"hub dataset id, .json/.jsonl file, or folder (default {DEFAULT_SOURCE})",
    )
    p.add_argument("--tokenizer", required=True, help="model folder holding the tokenizer")
    p.add_argument("--out", required=True, help="output folder, e.g. resources/data/{model}")
    p.add_argument("--seq-len", type=int, default=1024, help="chunk length in tokens (default 1024)")
    p.add_argument("--n-val", type=int, default=200, help="first N records are validation (default 200)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for training chunks (default 0)")
    p.add_argument("--epochs", type=int, default=2, help="epochs, for the planned token count (default 2)")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N records (smoke runs)")
    p.set_defaults(func=_cli_prepare)
    return p
