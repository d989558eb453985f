"""Alpaca records: reading them from a .json array, a .jsonl file, a folder of them or a Hugging Face dataset, and
the Alpaca prompt template (docs/method.md#data-and-template) that renders one."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from liger.errors import LigerError
from liger.fileio import sha256_file

DEFAULT_SOURCE = "yahma/alpaca-cleaned"
CLEANED_HUB_ID = "yahma/alpaca-cleaned"
ORIGINAL_ALPACA_RECORDS = 52002  # tatsu-lab/stanford_alpaca alpaca_data.json

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PREFIX = "hf:"


class DataError(LigerError, ValueError):
    """Bad data-preparation input; the message names the file/record and says what to do."""


def _check_record(obj: Any, where: str) -> dict[str, str]:
    """Validate one raw record and return it as {instruction, input, output} (missing input -> "")."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with instruction/input/output, got {type(obj).__name__}")
    for key in ("instruction", "output"):
        if key not in obj:
            raise DataError(f"{where}: record has no '{key}' field; every record needs 'instruction' and 'output'")
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}; fix the record")
    inp = obj.get("input")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: field 'input' must be a string (or missing), got {type(inp).__name__}")
    return {"instruction": obj["instruction"], "input": inp, "output": obj["output"]}


def _not_utf8(path: Path, e: UnicodeDecodeError, line: int, offset: int) -> DataError:
    """The error for the byte at `offset` in `path` (0-based, in the file), on 1-based `line`."""
    return DataError(f"{path}: not valid UTF-8 at line {line}, byte offset {offset} of the file ({e.reason}); "
                     "re-save it as UTF-8")


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, JSON value) of each non-blank line of a JSON Lines file; a DataError naming the file
    and the line (and byte) of the first line that is not UTF-8 or not JSON."""
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, e, lineno, offset + e.start) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}: invalid JSON at line {lineno} ({e.msg}, column {e.colno}); "
                    "a .jsonl file needs one JSON object per line: fix or remove that line"
                ) from None
            yield lineno, value


def _load_jsonl(path: Path) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    for lineno, obj in read_jsonl(path):
        records.append(_check_record(obj, f"{path}: record {len(records)} (line {lineno})"))
    return records


def _load_json(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e, data.count(b"\n", 0, e.start) + 1, e.start) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (it looks like JSON Lines: rename it to .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}){hint}") from None
    if not isinstance(data, list):
        raise DataError(
            f"{path}: a .json source must be a JSON array of records [{{instruction, input, output}}, ...], "
            f"got a JSON {type(data).__name__}; convert it, or use a .jsonl file with one object per line"
        )
    return [_check_record(obj, f"{path}: record {i}") for i, obj in enumerate(data)]


def _load_file(path: Path) -> list[dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        return _load_json(path)
    raise DataError(f"{path}: unsupported file type '{path.suffix}'; give a .json (array) or .jsonl file")


def data_files(folder: Path) -> list[Path]:
    """The .json and .jsonl files of a source folder, by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".jsonl"))


def _is_hub_id(source: str) -> bool:
    return source.startswith(_HUB_PREFIX) or (
        _HUB_ID.match(source) is not None and not source.lower().endswith((".json", ".jsonl"))
    )


def _load_hub(dataset_id: str) -> list[dict[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # network, missing dataset, auth ...
        raise DataError(
            f"could not load Hugging Face dataset '{dataset_id}' ({type(e).__name__}: {e}); check the id and "
            "the network, or give a local .json/.jsonl file or folder instead"
        ) from e
    return [_check_record(obj, f"{dataset_id}: record {i}") for i, obj in enumerate(ds)]


def load_records(source: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Load Alpaca records from a .json array, a .jsonl file, a folder of them, or a hub dataset id.

    A local path wins over a hub id of the same spelling; ``hf:owner/name`` forces the hub.
    Each record is returned as ``{"instruction", "input", "output"}`` (a missing input becomes "").
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        records = _load_file(path)
        where = str(path)
    elif path.is_dir():
        files = data_files(path)
        if not files:
            raise DataError(f"{path}: folder has no .json or .jsonl files; put the Alpaca data there")
        records = [r for f in files for r in _load_file(f)]
        where = str(path)
    elif isinstance(source, str) and _is_hub_id(text):
        hub_id = text.removeprefix(_HUB_PREFIX)
        records = _load_hub(hub_id)
        where = f"Hugging Face dataset {hub_id}"
    else:
        raise DataError(
            f"{text}: no such file or folder; give a .json/.jsonl file, a folder of them, "
            f"or a Hugging Face dataset id such as {DEFAULT_SOURCE}"
        )
    if not records:
        raise DataError(f"{where}: the dataset is empty (no records); check that it is the right file")
    return records


def format_prompt(record: dict[str, Any]) -> str:
    """Render the Alpaca prompt; an empty or missing ``input`` selects the no-input template."""
    inp = record.get("input") or ""
    if inp:
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=inp)
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def source_info(source: str | os.PathLike[str], n_records_total: int) -> dict[str, Any]:
    """Where the records came from, for meta.json: the files and their sha256, or the hub id; a note when the
    source looks like the original Stanford Alpaca rather than the cleaned set the paper used."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    info: dict[str, Any] = {}
    if path.exists():
        files = [path] if path.is_file() else data_files(path)
        info["kind"] = "file" if path.is_file() else "folder"
        info["path"] = str(path.resolve())
        info["files"] = [{"name": f.name, "sha256": sha256_file(f)} for f in files]
        name_hint = " ".join(f.name.lower() for f in files)
        original = ("cleaned" not in name_hint and "alpaca_data" in name_hint) or n_records_total == (
            ORIGINAL_ALPACA_RECORDS
        )
    else:
        hub_id = text.removeprefix(_HUB_PREFIX)
        info["kind"] = "hub"
        info["hub_id"] = hub_id
        original = hub_id == "tatsu-lab/alpaca" or (
            hub_id != CLEANED_HUB_ID and n_records_total == ORIGINAL_ALPACA_RECORDS
        )
    if original:
        info["note"] = (
            "original Stanford Alpaca (tatsu-lab, 52,002 records), not the cleaned yahma/alpaca-cleaned "
            "(~51.7k records) that the paper used"
        )
    return info
