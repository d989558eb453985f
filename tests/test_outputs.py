"""Output folders (liger.fileio): a command replaces only its own earlier output, atomically, and never its input;
`convert`, `merge`, `restore`, `fetch-model` and `position-loss` refuse anything else with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liger import LigerError
from liger.cli import main
from liger.fileio import OUTPUT_MARKER, atomic_dir, check_output, output_owner
from tests.conftest import tiny_model
from tests.test_data import _make_tokenizer

GLA = json.dumps({"method": "liger_gla", "window": 8})


def user_folder(path: Path) -> Path:
    """A folder of someone's own work."""
    (path / "chapters").mkdir(parents=True)
    (path / "thesis.txt").write_text("years of work")
    return path


def listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama with a tokenizer (convert saves the model's tokenizer beside it)."""
    path = tmp_path_factory.mktemp("base")
    tiny_model("llama").save_pretrained(path)
    return _make_tokenizer(path, bos=True)


def test_atomic_dir_replaces_its_own_output_and_keeps_it_when_writing_fails(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "convert") as tmp:
        (tmp / "a").write_text("1")
    assert output_owner(out) == "convert" and (out / "a").read_text() == "1"
    with pytest.raises(OSError, match="disk full"), atomic_dir(out, "convert") as tmp:
        (tmp / "b").write_text("2")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(listing(out)) == [OUTPUT_MARKER, "a"]
    with atomic_dir(out, "convert") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(listing(out)) == [OUTPUT_MARKER, "b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with pytest.raises(LigerError, match="written by `liger convert`, not `liger merge`"):
        check_output(out, "merge")
    check_output(out, "merge", accept=("convert",))
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "merge")  # nothing to lose
    (tmp_path / "file").write_text("x")
    with pytest.raises(LigerError, match="is a file, not a folder"):
        check_output(tmp_path / "file", "merge")
    (out / OUTPUT_MARKER).write_text("{broken")
    with pytest.raises(LigerError, match="not an output of `liger convert`"):
        check_output(out, "convert")


def test_convert_refuses_a_folder_it_did_not_write_and_its_input(base, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    before = listing(mine)
    assert main(["convert", "--model", str(base), "--options", GLA, "--out", str(mine)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"liger convert: error: --out {mine}: is not an output of `liger convert`")
    assert "chapters/, thesis.txt" in line and "nothing was deleted" in line
    assert listing(mine) == before

    model_before = listing(base)
    for out, how in ((base, "is"), (base.parent, "holds")):
        assert main(["convert", "--model", str(base), "--options", GLA, "--out", str(out)]) == 2
        assert f"--out {out} {how} the input --model {base}" in error_line(capsys)
    assert listing(base) == model_before

    out = tmp_path / "converted"
    for _ in range(2):  # its own earlier output is replaced
        assert main(["convert", "--model", str(base), "--options", GLA, "--out", str(out)]) == 0
    assert output_owner(out) == "convert" and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "mine"]  # no temp folders left
    # another command's output is not merge's
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert main(["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)]) == 2
    assert "written by `liger convert`, not `liger merge`" in error_line(capsys)


def test_restore_fetch_model_and_position_loss_refuse_before_writing(base, tmp_path, capsys):
    run = user_folder(tmp_path / "run")
    before = listing(run)
    assert main(["restore", "--model", str(base), "--run", str(run), "--out", str(run)]) == 2
    assert f"--out {run} is the input --run" in error_line(capsys)
    mine = user_folder(tmp_path / "mine")
    assert main(["restore", "--model", str(base), "--run", str(run), "--out", str(mine)]) == 2
    assert "not an output of `liger restore`" in error_line(capsys)
    assert main(["fetch-model", "tiny", "--hf-id", "nobody/nothing", "--out", str(mine)]) == 2  # before any download
    assert "not an output of `liger fetch-model`" in error_line(capsys)
    assert listing(run) == before and listing(mine) == before
    source = tmp_path / "alpaca.json"
    source.write_text("[]")
    assert main(["position-loss", "--model", str(base), "--source", str(source), "--out", str(source)]) == 2
    assert f"--out {source} is the input --source" in error_line(capsys) and source.read_text() == "[]"
