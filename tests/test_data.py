"""Tests for liger.data: Alpaca template, tokenization, packing, splits, output files, bad input."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from liger import LigerError
from liger import data as D
from liger import records as R
from liger.cli import main
from liger.data import pack, prepare_data, tokenize_record
from liger.fileio import OUTPUT_MARKER
from liger.packed import id_dtype
from liger.records import DataError, format_prompt, load_records, source_info

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "resources" / "models" / "smollm2-135m"

WORDS = (
    "Below is an instruction that describes a task , paired with input provides further context . Write "
    "response appropriately completes the request ### Instruction : Input Response give three tips for "
    "staying healthy eat well sleep move add numbers sum of and one two three four five six seven eight "
    "nine ten hello world yes no maybe"
).split()

# docs/method.md#data-and-template, character for character.
EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
    "### Input:\n2 and 3\n\n### Response:\n"
)
EXPECTED_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nGive three tips.\n\n### Response:\n"
)


def _shared_data() -> Path:
    env = os.environ.get("LIGER_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _make_tokenizer(folder: Path, *, bos: bool) -> Path:
    """A tiny WordLevel tokenizer (whitespace/punctuation split) with <s>, </s>; BOS prepended iff bos."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "bos": _make_tokenizer(root / "bos", bos=True),
        "nobos": _make_tokenizer(root / "nobos", bos=False),
    }


@pytest.fixture(scope="module")
def tok_bos(tok_dirs: dict[str, Path]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dirs["bos"]))


@pytest.fixture(scope="module")
def tok_nobos(tok_dirs: dict[str, Path]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dirs["nobos"]))


def _records(n: int) -> list[dict[str, str]]:
    """Deterministic small records; every third has an input, one has an empty input."""
    rng = np.random.default_rng(123)
    recs = []
    for i in range(n):
        out = " ".join(rng.choice(WORDS[-22:], size=int(rng.integers(1, 12))))
        rec = {"instruction": f"give three tips {i}", "output": f"{out} ."}
        if i % 3 == 0:
            rec["input"] = "one two three"
        elif i % 3 == 1:
            rec["input"] = ""
        recs.append(rec)
    return recs


def _write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def _stream(tok, recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    ids: list[int] = []
    mask: list[bool] = []
    for r in recs:
        i, m = tokenize_record(tok, r)
        ids += i
        mask += m
    return np.asarray(ids), np.asarray(mask, dtype=bool)


# ------------------------------------------------------------------------------------------ template


def test_template_with_input_exact() -> None:
    assert format_prompt({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}) == EXPECTED_WITH_INPUT


@pytest.mark.parametrize("rec", [{"input": ""}, {}, {"input": None}])
def test_template_without_input_exact(rec: dict) -> None:
    rec = {"instruction": "Give three tips.", "output": "x", **rec}
    assert format_prompt(rec) == EXPECTED_NO_INPUT


def _documented_template(markdown: str, info: str) -> str:
    """The text of the fenced block opened with ```info, with its final newline."""
    match = re.search(rf"^```{info}\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no ```{info} block"
    return match.group(1)


def test_template_matches_the_documented_one() -> None:
    md = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    with_input = _documented_template(md, "alpaca-with-input")
    no_input = _documented_template(md, "alpaca-without-input")
    assert with_input == R.PROMPT_WITH_INPUT
    assert no_input == R.PROMPT_NO_INPUT
    rec = {"instruction": "Add the numbers.", "input": "2 and 3"}
    assert with_input.format(**rec) == EXPECTED_WITH_INPUT


# ---------------------------------------------------------------------------------------- tokenizing


@pytest.mark.parametrize("which", ["tok_bos", "tok_nobos"])
def test_tokenize_record_eos_and_mask(which: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(which)
    for rec in _records(6):
        ids, mask = tokenize_record(tok, rec)
        prompt = tok(format_prompt(rec), add_special_tokens=True)["input_ids"]
        response = tok(rec["output"], add_special_tokens=False)["input_ids"]
        assert ids == prompt + response + [tok.eos_token_id]
        assert mask == [False] * len(prompt) + [True] * (len(response) + 1)
        assert ids[-1] == tok.eos_token_id and mask[-1]
        assert ids.count(tok.eos_token_id) == 1


def test_bos_present_iff_tokenizer_adds_one(tok_bos, tok_nobos) -> None:
    rec = _records(1)[0]
    ids_bos, _ = tokenize_record(tok_bos, rec)
    ids_nobos, _ = tokenize_record(tok_nobos, rec)
    assert ids_bos[0] == tok_bos.bos_token_id and ids_bos.count(tok_bos.bos_token_id) == 1
    assert tok_nobos.bos_token_id not in ids_nobos
    assert ids_bos[1:] == ids_nobos


def test_batched_tokenization_matches_per_record(tok_bos, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "TOKENIZE_BATCH", 4)  # several batches, a partial last one
    recs = _records(11)
    ids, mask, lengths = D._tokenize_records(tok_bos, recs, progress=False)
    ref_ids, ref_mask = _stream(tok_bos, recs)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert len(lengths) == 11 and sum(lengths) == len(ref_ids)


# ------------------------------------------------------------------------------------------- packing


def test_pack_boundaries_tail_and_order() -> None:
    ids = np.arange(25, dtype=np.uint16)
    mask = np.ones(25, dtype=bool)
    mask[4:8] = False  # chunk 1 has no target -> dropped
    c_ids, c_mask, tail = pack(ids, mask, 4)
    assert tail == 1
    assert c_ids.dtype == np.uint16 and c_mask.dtype == bool
    assert c_ids.shape == c_mask.shape == (5, 4)
    np.testing.assert_array_equal(c_ids.reshape(-1), np.r_[0:4, 8:24])
    assert c_mask.all()


def test_pack_exact_multiple_and_short() -> None:
    c_ids, _, tail = pack([1, 2, 3, 4], [False, True, False, False], 2)
    assert tail == 0 and c_ids.tolist() == [[1, 2]]
    c_ids, c_mask, tail = pack([1, 2, 3], [True, True, True], 8)
    assert tail == 3 and c_ids.shape == (0, 8) and c_mask.shape == (0, 8)


def test_id_dtype() -> None:
    assert id_dtype(49152) is np.uint16
    assert id_dtype(65536) is np.uint16
    assert id_dtype(65537) is np.uint32
    assert id_dtype(128256) is np.uint32


# ------------------------------------------------------------------------------------------- prepare


def _load_out(out: Path) -> dict[str, np.ndarray]:
    return {k: np.load(out / f"{k}.npy", mmap_mode="r") for k in ("train_ids", "train_mask", "val_ids", "val_mask")}


def test_prepare_data_chunks_split_and_meta(tmp_path: Path, tok_dirs: dict[str, Path], tok_bos) -> None:
    recs = _records(60)
    src = _write_jsonl(tmp_path / "alpaca.jsonl", recs)
    out = tmp_path / "resources" / "data" / "tiny"
    seq_len, n_val, seed = 64, 10, 7
    meta = prepare_data(src, tok_dirs["bos"], out, seq_len=seq_len, n_val=n_val, seed=seed, epochs=2, progress=False)
    arrs = _load_out(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [OUTPUT_MARKER, "meta.json", "train_ids.npy", "train_mask.npy", "val_ids.npy", "val_mask.npy"]
    )
    assert json.loads((out / "meta.json").read_text()) == meta
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's 0700
    for k in ("train", "val"):
        assert arrs[f"{k}_ids"].dtype == np.uint16 and arrs[f"{k}_mask"].dtype == bool
        assert arrs[f"{k}_ids"].shape == arrs[f"{k}_mask"].shape == (meta["splits"][k]["chunks"], seq_len)
        assert arrs[f"{k}_mask"].any(axis=1).all()

    # validation = the first n_val records, packed in order
    val_ids, val_mask = _stream(tok_bos, recs[:n_val])
    n = len(val_ids) // seq_len
    assert meta["splits"]["val"]["dropped_tail_tokens"] == len(val_ids) - n * seq_len
    assert meta["splits"]["val"]["dropped_no_target_chunks"] == 0  # every 64-window holds a response token
    np.testing.assert_array_equal(arrs["val_ids"].reshape(-1), val_ids[: n * seq_len])
    np.testing.assert_array_equal(arrs["val_mask"].reshape(-1), val_mask[: n * seq_len])

    # training = the rest; chunks reassemble to the stream once the seeded shuffle is undone
    tr_ids, tr_mask = _stream(tok_bos, recs[n_val:])
    n = len(tr_ids) // seq_len
    assert meta["splits"]["train"]["chunks"] == n
    assert meta["splits"]["train"]["dropped_tail_tokens"] == len(tr_ids) - n * seq_len
    perm = np.random.default_rng(seed).permutation(n)
    unshuffled = np.empty_like(np.asarray(arrs["train_ids"]))
    unshuffled[perm] = arrs["train_ids"]
    assert not np.array_equal(unshuffled, arrs["train_ids"])  # it was shuffled
    np.testing.assert_array_equal(unshuffled.reshape(-1), tr_ids[: n * seq_len])
    unshuffled_mask = np.empty_like(np.asarray(arrs["train_mask"]))
    unshuffled_mask[perm] = arrs["train_mask"]
    np.testing.assert_array_equal(unshuffled_mask.reshape(-1), tr_mask[: n * seq_len])

    # meta
    assert meta["records"] == {"source_total": 60, "total": 60, "train": 50, "val": 10}
    assert meta["seq_len"] == seq_len and meta["seed"] == seed and meta["n_val"] == n_val
    assert meta["splits"]["train"]["tokens"] == len(tr_ids)
    assert meta["splits"]["train"]["target_tokens"] == int(tr_mask.sum())
    assert meta["tokens_per_epoch"] == n * seq_len
    assert meta["planned_training_tokens"] == 2 * n * seq_len
    assert meta["tokenizer"]["bos_added"] is True and meta["tokenizer"]["eos_token_id"] == 2
    assert meta["source"]["kind"] == "file" and meta["source"]["path"] == str(src.resolve())
    assert "note" not in meta["source"]
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_prepare_data_deterministic(tmp_path: Path, tok_dirs: dict[str, Path]) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", _records(40))
    kw = {"seq_len": 32, "n_val": 5, "seed": 3, "progress": False}
    prepare_data(src, tok_dirs["nobos"], tmp_path / "o1", **kw)
    prepare_data(src, tok_dirs["nobos"], tmp_path / "o2", **kw)
    names = sorted(p.name for p in (tmp_path / "o1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "o2").iterdir())
    for name in names:
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes(), name
    prepare_data(src, tok_dirs["nobos"], tmp_path / "o3", **{**kw, "seed": 4})
    assert (tmp_path / "o3" / "val_ids.npy").read_bytes() == (tmp_path / "o1" / "val_ids.npy").read_bytes()
    assert (tmp_path / "o3" / "train_ids.npy").read_bytes() != (tmp_path / "o1" / "train_ids.npy").read_bytes()


def test_prepare_data_limit_and_tokenizer_object(tmp_path: Path, tok_nobos) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", _records(50))
    meta = prepare_data(src, tok_nobos, tmp_path / "o", seq_len=16, n_val=3, limit=20, progress=False)
    assert meta["records"] == {"source_total": 50, "total": 20, "train": 17, "val": 3}
    assert meta["tokenizer"]["bos_added"] is False
    assert meta["limit"] == 20


def test_prepare_replaces_only_its_own_output(tmp_path: Path, tok_dirs: dict[str, Path], capsys) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", _records(30))
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is taken
    prepare_data(src, tok_dirs["bos"], out, seq_len=16, n_val=3, progress=False)
    (out / "stale.txt").write_text("old")
    prepare_data(src, tok_dirs["bos"], out, seq_len=8, n_val=3, progress=False)  # its own earlier output: replaced
    assert not (out / "stale.txt").exists() and json.loads((out / "meta.json").read_text())["seq_len"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "out"]

    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(LigerError, match=r"not an output of `liger prepare-data`.*notes/, thesis\.txt.*nothing was"):
        prepare_data(src, tok_dirs["bos"], mine, seq_len=16, n_val=3, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes", "thesis.txt"]

    # the source (a folder, or a file inside --out) is never the output
    folder = tmp_path / "alpaca"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", _records(30))
    argv = ["prepare-data", "--tokenizer", str(tok_dirs["bos"]), "--seq-len", "16", "--n-val", "3"]
    for source in (folder, folder / "a.jsonl"):
        assert main([*argv, "--source", str(source), "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("liger prepare-data: error: --out") and "input --source" in err, err
        assert err.count("\n") == 1
    assert [p.name for p in folder.iterdir()] == ["a.jsonl"]


# -------------------------------------------------------------------------------------------- sources


def test_load_json_array_jsonl_and_folder(tmp_path: Path) -> None:
    recs = _records(7)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.json").write_text(json.dumps(recs[3:]), encoding="utf-8")
    _write_jsonl(tmp_path / "d" / "a.jsonl", recs[:3])
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    got = load_records(tmp_path / "d")
    assert [r["instruction"] for r in got] == [r["instruction"] for r in recs]
    assert all(set(r) == {"instruction", "input", "output"} for r in got)
    assert got[2]["input"] == ""  # missing input -> ""
    assert load_records(str(tmp_path / "d" / "b.json")) == got[3:]


def test_jsonl_blank_lines_skipped(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n\n   \n{"instruction": "c", "input": "d", "output": "e"}\n')
    assert load_records(p) == [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "d", "output": "e"},
    ]


def test_hub_id_dispatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split))
        return [{"instruction": "i", "input": "", "output": "o"}] * 3

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    assert len(load_records("yahma/alpaca-cleaned")) == 3
    assert len(load_records("hf:tatsu-lab/alpaca")) == 3
    assert calls == [("yahma/alpaca-cleaned", "train"), ("tatsu-lab/alpaca", "train")]
    assert source_info("tatsu-lab/alpaca", 52002)["note"].startswith("original Stanford Alpaca")
    assert "note" not in source_info("yahma/alpaca-cleaned", 51760)
    with pytest.raises(DataError, match="no such file"):
        load_records("missing/thing.jsonl")  # a file name, not a hub id
    assert calls == [("yahma/alpaca-cleaned", "train"), ("tatsu-lab/alpaca", "train")]


def test_hub_failure_is_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets

    def boom(name, split=None, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="yahma/alpaca-cleaned.*offline"):
        load_records("yahma/alpaca-cleaned")


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no such file or folder"):
        load_records(tmp_path / "nodir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .json or .jsonl files"):
        load_records(tmp_path / "empty")


def test_invalid_json_line_number(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": oops}\n')
    with pytest.raises(DataError, match="line 3") as e:
        load_records(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({"input": "", "output": "x"}, "record 2.*no 'instruction'"),
        ({"instruction": "x", "input": ""}, "record 2.*no 'output'"),
        ({"instruction": 5, "output": "x"}, "record 2.*'instruction' must be a string"),
        ({"instruction": "x", "output": None}, "record 2.*'output' must be a string"),
        ({"instruction": "x", "input": 3, "output": "y"}, "record 2.*'input' must be a string"),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_bad_record(tmp_path: Path, bad: dict, pattern: str, suffix: str) -> None:
    recs = [*_records(2), bad, *_records(1)]
    p = tmp_path / f"recs{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(p, recs)
    else:
        p.write_text(json.dumps(recs))
    with pytest.raises(DataError, match=pattern) as e:
        load_records(p)
    assert str(p) in str(e.value)
    if suffix == ".jsonl":
        assert "line 3" in str(e.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_byte_named_at_its_line_and_offset(tmp_path: Path, suffix: str, capsys) -> None:
    """The real line and byte offset, far past the 8 KiB that a streamed read decodes at a time."""
    from liger.cli import main

    recs = _records(400)
    recs[300]["instruction"] = "MARK"
    text = "".join(json.dumps(r) + "\n" for r in recs) if suffix == ".jsonl" else json.dumps(recs, indent=1)
    data = text.encode()
    offset = data.index(b"MARK")
    line = data.count(b"\n", 0, offset) + 1
    assert offset % 8192 != offset and line > 1
    p = tmp_path / f"alpaca{suffix}"
    p.write_bytes(data[:offset] + b"\xff" + data[offset + 1 :])
    with pytest.raises(DataError, match=rf"not valid UTF-8 at line {line}, byte offset {offset} of the file"):
        load_records(p)
    assert main(["prepare-data", "--source", str(p), "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"liger prepare-data: error: {p}: not valid UTF-8 at line {line},")


@pytest.mark.parametrize(("name", "text"), [("e.jsonl", ""), ("e2.jsonl", "\n\n"), ("e.json", "[]")])
def test_empty_dataset(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataError, match="empty"):
        load_records(p)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"instruction": "a", "output": "b"}', "must be a JSON array.*got a JSON dict"),
        ('["a", "b"]', r"record 0: expected a JSON object"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n', "rename it to .jsonl"),
    ],
)
def test_json_not_array_of_objects(tmp_path: Path, text: str, pattern: str) -> None:
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(DataError, match=pattern) as e:
        load_records(p)
    assert str(p) in str(e.value)


def test_too_few_records_for_n_val(tmp_path: Path, tok_dirs: dict[str, Path]) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", _records(5))
    with pytest.raises(DataError, match="5 records but n_val=5"):
        prepare_data(src, tok_dirs["bos"], tmp_path / "out", n_val=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_data_error_is_value_error() -> None:
    from liger.errors import LigerError

    assert issubclass(DataError, ValueError) and issubclass(DataError, LigerError)


# ------------------------------------------------------------------------------------------ atomicity


def test_failure_leaves_nothing_behind(tmp_path: Path, tok_dirs: dict[str, Path], monkeypatch) -> None:
    (tmp_path / "src").mkdir()
    src = _write_jsonl(tmp_path / "src" / "a.jsonl", _records(30))
    parent = tmp_path / "data"
    parent.mkdir()
    real_save = np.save
    calls = {"n": 0}

    def flaky_save(file, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_save(file, arr, **kw)

    monkeypatch.setattr(D.np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_data(src, tok_dirs["bos"], parent / "tiny", seq_len=16, n_val=3, progress=False)
    assert list(parent.iterdir()) == []  # no output dir, no temp dir

    # an existing output survives a failed run untouched
    monkeypatch.setattr(D.np, "save", real_save)
    prepare_data(src, tok_dirs["bos"], parent / "tiny", seq_len=16, n_val=3, progress=False)
    before = {p.name: p.read_bytes() for p in (parent / "tiny").iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(D.np, "save", flaky_save)
    with pytest.raises(OSError):
        prepare_data(src, tok_dirs["bos"], parent / "tiny", seq_len=8, n_val=3, progress=False)
    assert [p.name for p in parent.iterdir()] == ["tiny"]
    assert {p.name: p.read_bytes() for p in (parent / "tiny").iterdir()} == before

    # bad input: nothing created at all
    bad = tmp_path / "src" / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(DataError):
        prepare_data(bad, tok_dirs["bos"], parent / "other", progress=False)
    assert [p.name for p in parent.iterdir()] == ["tiny"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_prepare_data(tmp_path: Path, tok_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", _records(30))
    parser = argparse.ArgumentParser(prog="liger")
    D.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["prepare-data", "--source", str(src), "--tokenizer", str(tok_dirs["bos"]), "--out", str(out),
         "--seq-len", "16", "--n-val", "4", "--seed", "1", "--epochs", "3", "--limit", "25"]
    )  # fmt: skip
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "prepared 25 records" in line
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seq_len"], meta["n_val"], meta["seed"], meta["epochs"], meta["limit"]) == (16, 4, 1, 3, 25)
    assert parser.parse_args(["prepare-data", "--tokenizer", "t", "--out", "o"]).source == "yahma/alpaca-cleaned"


# ------------------------------------------------------------------------------------------ full mirror


@pytest.mark.slow
def test_prepare_full_alpaca_mirror(tmp_path: Path) -> None:
    mirror = _shared_data() / "alpaca" / "alpaca_data.jsonl"
    if not mirror.is_file():
        pytest.skip(f"Alpaca mirror not found at {mirror} (set LIGER_SHARED_DATA)")
    if not SMOLLM2.is_dir():
        pytest.skip(f"SmolLM2 model folder not found at {SMOLLM2}")
    t0 = time.perf_counter()
    meta = prepare_data(mirror, SMOLLM2, tmp_path / "smollm2-135m", progress=False)
    wall = time.perf_counter() - t0
    assert meta["records"]["total"] == 52002
    assert meta["records"]["val"] == 200 and meta["records"]["train"] == 51802
    assert "original Stanford Alpaca" in meta["source"]["note"]
    tr = meta["splits"]["train"]
    assert meta["tokens_per_epoch"] == tr["chunks"] * 1024
    assert meta["planned_training_tokens"] == 2 * meta["tokens_per_epoch"]
    assert 0.01e9 < meta["planned_training_tokens"] < 0.05e9  # the paper: about 0.02B
    arr = np.load(tmp_path / "smollm2-135m" / "train_ids.npy", mmap_mode="r")
    assert arr.shape == (tr["chunks"], 1024) and arr.dtype == np.uint16
    print(
        f"\nmirror: {meta['records']} tokens train/val {tr['tokens']}/{meta['splits']['val']['tokens']}, "
        f"chunks train/val {tr['chunks']}/{meta['splits']['val']['chunks']}, tokens/epoch {meta['tokens_per_epoch']}, "
        f"planned {meta['planned_training_tokens']}, wall {wall:.1f}s",
        file=sys.stderr,
    )


def test_module_has_no_hardcoded_shared_path() -> None:
    here = re.escape(str(Path(__file__).resolve().parents[2]))  # the folder that holds the repo and shared/
    for module in (D, R):
        text = Path(module.__file__).read_text(encoding="utf-8")
        assert not re.search(here + r"|shared/data|alpaca_data\.jsonl", text)
