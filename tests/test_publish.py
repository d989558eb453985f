"""`liger publish`: rows copied under results/published/ with every machine path replaced, nothing overwritten by
mistake; and the committed published tree names no machine path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liger.cli import main
from liger.errors import LigerError
from liger.fileio import OUTPUT_MARKER
from liger.publish import (
    MACHINE,
    MIRROR,
    TEXT_SUFFIXES,
    json_paths,
    machine_paths,
    publish,
    publish_logs,
    scrub_text,
    thin_redraws,
)

ROOT = Path(__file__).resolve().parents[1]


def make_row(root: Path, mirror: str = "/data/mirrors") -> Path:
    """A run's row folder as `liger evaluate` and `liger finetune` leave it, naming machine paths."""
    row = root / "results" / "run" / "tiny-model" / "liger_gla"
    row.mkdir(parents=True)
    metrics = {"model": f"{root}/resources/run/finetuned/tiny-model/liger_gla/model", "adapter": None,
               "data_source": {"kind": "local", "data_dir": mirror},
               "tasks": {"piqa": {"n": 2, "value": 0.5, "outcomes": "01"}},
               "note": f"scored from {mirror}/piqa/validation.jsonl on host",
               "ratio": "tokens/s 1.5s/it 2026/12/03 https://example.org/a/b"}
    (row / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (row / "train_log.csv").write_text("step,loss\n0,1.5\n")
    (row / "run.log").write_text(f"Traceback:\n  File \"/usr/lib/python3/site-packages/torch/nn/module.py\", line 1\n"
                                 f"python -m liger evaluate --data-dir {mirror} --out {root}/results/run/x\n")
    (row / OUTPUT_MARKER).write_text('{"command": "evaluate"}\n')
    (row / ".metrics.json.tmp-1").write_text("partial")
    return row


def test_publish_replaces_machine_paths_and_keeps_the_rest(tmp_path):
    row = make_row(tmp_path)
    to = tmp_path / "results" / "published"
    lines = publish([row], to, root=tmp_path)
    dest = to / "tiny-model" / "liger_gla"
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.json", "run.log", "train_log.csv"]
    text = (dest / "metrics.json").read_text()
    doc = json.loads(text)
    assert doc["model"] == "resources/run/finetuned/tiny-model/liger_gla/model"  # inside the project: relative
    assert doc["data_source"] == {"kind": "local", "data_dir": MIRROR}
    assert doc["note"] == f"scored from {MACHINE} on host"
    assert doc["ratio"] == "tokens/s 1.5s/it 2026/12/03 https://example.org/a/b"  # not paths: untouched
    assert doc["tasks"] == {"piqa": {"n": 2, "value": 0.5, "outcomes": "01"}}
    assert text.startswith('{\n  "model"')  # the layout as written
    assert (dest / "train_log.csv").read_bytes() == (row / "train_log.csv").read_bytes()
    log = (dest / "run.log").read_text()
    assert "<site-packages>/torch/nn/module.py" in log
    assert f"--data-dir {MACHINE} --out results/run/x" in log
    assert str(tmp_path) not in "".join(p.read_text() for p in dest.iterdir())
    assert any("3 machine paths replaced" in line for line in lines)


def test_publish_again_changes_nothing_and_refuses_other_content_without_replace(tmp_path):
    row = make_row(tmp_path)
    to = tmp_path / "published"
    publish([row], to, root=tmp_path)
    assert all(line.endswith(": unchanged") for line in publish([row], to, root=tmp_path))
    (row / "train_log.csv").write_text("step,loss\n0,9.9\n")
    (row / "extra.csv").write_text("a\n1\n")
    before = (to / "tiny-model" / "liger_gla" / "train_log.csv").read_text()
    with pytest.raises(LigerError, match=r"train_log\.csv: already published with other content; nothing was copied"):
        publish([row], to, root=tmp_path)
    assert (to / "tiny-model" / "liger_gla" / "train_log.csv").read_text() == before
    assert not (to / "tiny-model" / "liger_gla" / "extra.csv").exists()  # all or nothing
    publish([row], to, replace=True, root=tmp_path)
    assert (to / "tiny-model" / "liger_gla" / "train_log.csv").read_text() == "step,loss\n0,9.9\n"


def test_publish_refuses_what_is_not_a_run_row(tmp_path, capsys):
    to = tmp_path / "published"
    with pytest.raises(LigerError, match="not a folder"):
        publish([tmp_path / "missing"], to, root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LigerError, match="holds no files"):
        publish([tmp_path / "empty"], to, root=tmp_path)
    inside = to / "m" / "r"
    inside.mkdir(parents=True)
    (inside / "metrics.json").write_text("{}\n")
    with pytest.raises(LigerError, match="already under"):
        publish([inside], to, root=tmp_path)
    twins = [tmp_path / "results" / run / "m2" / "r2" for run in ("default", "ablations")]
    for twin in twins:
        twin.mkdir(parents=True)
        (twin / "metrics.json").write_text("{}\n")
    with pytest.raises(LigerError, match="both publish as"):
        publish(twins, to, root=tmp_path)
    assert not (to / "m2").exists()
    broken = tmp_path / "results" / "broken" / "m" / "r"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text("{not json")
    assert main(["publish", str(broken), "--to", str(to)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json: not readable JSON" in err and "Traceback" not in err


def test_a_mirror_named_under_another_key_too_is_the_mirror(tmp_path):
    found = json_paths({"data_dir": "/m", "args": {"data": "/m"}, "out": "/elsewhere"}, tmp_path)
    assert found == {"/m": MIRROR, "/elsewhere": MACHINE}
    assert scrub_text("see /a/b/c, and a/b, and <mirrors>/piqa/x.jsonl; Using shell: /usr/bin/bash", tmp_path) == (
        f"see {MACHINE}, and a/b, and <mirrors>/piqa/x.jsonl; Using shell: /usr/bin/bash", 1)


def test_published_results_name_no_machine_path():
    """Every committed text file under results/published/ (what `liger publish` writes, and the session logs)."""
    found = []
    for path in sorted((ROOT / "results" / "published").rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            paths = set(machine_paths(text))
            if path.suffix == ".json":
                paths |= set(json_paths(json.loads(text), ROOT))
            found += [f"{path.relative_to(ROOT)}: {p}" for p in sorted(paths)]
    assert not found, "machine paths in published files (liger publish replaces them):\n" + "\n".join(found[:20])


def test_thin_redraws_keeps_first_last_and_evenly_spaced_redraws():
    bar = "".join(f"\rstep {i}/100" for i in range(101))
    text = f"start\n{bar}\ndone\n"
    lines = thin_redraws(text, keep=4).split("\n")
    assert lines == ["start", "step 0/100", "step 25/100", "step 50/100", "step 75/100", "step 100/100", "done", ""]
    short = "\ra 1\ra 2\n"
    assert thin_redraws(short, keep=4) == "a 1\na 2\n"  # few redraws: each kept, one per line
    assert thin_redraws("x\n\ny", keep=4) == "x\n\ny"  # blank lines without a redraw stay


def test_publish_logs_flat_thinned_and_scrubbed(tmp_path, capsys):
    gpu = tmp_path / "elsewhere" / "w"  # the project folder on the machine that ran the jobs
    logs = gpu / "logs" / "default"
    (logs / "tiny" / "row").mkdir(parents=True)
    bar = "".join(f"\rfinetune: {i}%" for i in range(101))
    (logs / "tiny" / "row" / "finetune.log").write_text(f"python -m liger finetune --out {gpu}/resources/x\n{bar}\n")
    (logs / "tiny" / "row" / "finetune.benchmark.tsv").write_text("s\th:m:s\n1.0\t0:00:01\n")
    (logs / "tiny" / "prepare_data.log").write_text("read /mirrors/alpaca/alpaca_data.jsonl\n")
    extra = tmp_path / "2026-12-04.snakemake.log"
    extra.write_text("done\n")
    to = tmp_path / "session"
    lines = publish_logs([logs, extra], to, keep=10, root=gpu)
    assert sorted(p.name for p in to.iterdir()) == ["2026-12-04.snakemake.log", "tiny_prepare_data.log",
                                                     "tiny_row_finetune.benchmark.tsv", "tiny_row_finetune.log"]
    log = (to / "tiny_row_finetune.log").read_text().split("\n")
    assert log[0] == "python -m liger finetune --out resources/x"  # the other machine's project path: relative
    assert log[1:] == [f"finetune: {i}%" for i in range(0, 101, 10)] + [""]
    assert (to / "tiny_prepare_data.log").read_text() == f"read {MACHINE}\n"
    assert len(lines) == 4 and all(line.endswith(": unchanged") for line in publish_logs([logs, extra], to, keep=10,
                                                                                          root=gpu))
    with pytest.raises(LigerError, match="already published with other content"):
        publish_logs([logs, extra], to, keep=5, root=gpu)
    with pytest.raises(LigerError, match="no such file or folder"):
        publish_logs([tmp_path / "missing"], to)
    twin = tmp_path / "other" / extra.name
    twin.parent.mkdir()
    twin.write_text("other\n")
    with pytest.raises(LigerError, match="both publish as"):
        publish_logs([extra, twin], to)
    assert main(["publish", "--logs", str(logs)]) == 2  # --to is required with --logs
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --to" in err
    assert main(["publish", "--logs", str(logs), "--to", str(to), "--keep", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--keep 0: give 1 or more" in err
