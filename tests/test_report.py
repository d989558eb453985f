"""The report's tables: our rows from metrics files, averages, recovery, the paper's rows beside them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from liger.errors import LigerError
from liger.report import paper_rows, write_model_report, write_tables
from tests.conftest import ROOT

PAPER_CSV = ROOT / "config" / "paper_results.csv"


def write_metrics(results, model, method, values, tokens=None):
    d = results / model / method
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"paper_metrics": values}))
    if tokens is not None:
        (d / "train_summary.json").write_text(json.dumps({"tokens_trained": tokens}))


def test_table_rows_averages_recovery_and_paper_rows(tmp_path):
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
    write_metrics(tmp_path, "m", "base", dict(zip(tasks, [0.80, 0.80, 0.50, 0.80, 0.70, 0.60], strict=True)))
    write_metrics(tmp_path, "m", "liger_gla", dict(zip(tasks, [0.80, 0.80, 0.50, 0.70, 0.70, 0.30], strict=True)),
                  tokens=1000)
    report = write_model_report("m", ["base", "liger_gla"], tmp_path, "Llama-3-8B", PAPER_CSV, "note line")
    table = pd.read_csv(tmp_path / "m" / "main.csv")
    base, gla = table.iloc[0], table.iloc[1]
    assert base["Avg"] == pytest.approx(70.0) and base["Avg w/o MMLU"] == pytest.approx(72.0)
    assert gla["Avg"] == pytest.approx(63.3) and gla["Recovery %"] == pytest.approx(round(100 * 63.3 / 70.0, 1))
    assert gla["train tokens"] == 1000 and gla["source"].endswith("m/liger_gla/metrics.json")
    paper = table[table["method"].str.endswith("(paper)")]
    row = paper[paper["method"] == "Liger-GLA (paper)"].iloc[0]
    assert (row["PiQA"], row["MMLU"], row["Avg"]) == (80.3, 43.4, 67.6)  # Table 2 of the paper
    assert row["Recovery %"] == pytest.approx(round(100 * 67.6 / 71.7, 1))
    assert "note line" in report.read_text() and "Liger-GLA (paper)" in (tmp_path / "m" / "main.md").read_text()
    write_tables([tmp_path / "m" / "main.csv"], tmp_path / "tables")
    assert len(pd.read_csv(tmp_path / "tables" / "main.csv")) == len(table)


def test_unknown_paper_model_has_no_rows():
    assert paper_rows("SmolLM2-135M", PAPER_CSV).empty and paper_rows(None, PAPER_CSV).empty


def test_missing_or_corrupt_metrics_say_what_to_do(tmp_path):
    with pytest.raises(LigerError, match="missing; run the evaluate rule"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV)
    (tmp_path / "m" / "base").mkdir(parents=True)
    (tmp_path / "m" / "base" / "metrics.json").write_text("{not json")
    with pytest.raises(LigerError, match="not valid JSON.*delete it and rerun"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV)
