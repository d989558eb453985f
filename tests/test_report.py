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


def test_lolcats_rows_count_both_stages_beside_the_papers_lolcats_rows(tmp_path):
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
    write_metrics(tmp_path, "m", "base", dict.fromkeys(tasks, 0.6))
    write_metrics(tmp_path, "m", "lolcats", dict.fromkeys(tasks, 0.5), tokens=2_000_000)
    write_metrics(tmp_path, "m", "liger_gla", dict.fromkeys(tasks, 0.55), tokens=2_000_000)
    (tmp_path / "m" / "lolcats" / "transfer_summary.json").write_text(
        json.dumps({"tokens_trained": 1_500_000, "wall_time_s": 630.0}))
    report = write_model_report("m", ["base", "lolcats", "liger_gla"], tmp_path, "Llama-3-8B", PAPER_CSV)
    text = report.read_text()
    assert "liger_gla averages 55.0" in text and "Other methods: lolcats 50.0 (-5.0 vs liger_gla)." in text
    table = pd.read_csv(tmp_path / "m" / "main.csv")
    lol, gla = table.iloc[1], table.iloc[2]
    assert lol["method"] == "lolcats" and lol["train tokens"] == 3_500_000
    assert lol["train stages"] == "attention transfer 1.50M in 10.5 min + LoRA 2.00M"
    assert gla["train stages"] == "LoRA 2.00M"
    paper = set(table["method"])
    assert {"LoLCATs (Liger re-run) (paper)", "LoLCATs (LoLCATs paper numbers) (paper)", "Liger-GLA (paper)"} <= paper
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


UNIFORM = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "winogrande": 0.5, "mmlu": 0.25}


def test_chance_corrected_recovery_matches_the_worked_example():
    # docs/method.md#chance-corrected-recovery: Liger-GLA-Llama-3.2-1B, (52.9 - 33.3) / (55.1 - 33.3) = 90%
    df = paper_rows("Llama-3.2-1B", PAPER_CSV, chance=UNIFORM)
    chance = df[df["method"] == "chance (from the data)"].iloc[0]
    assert chance["Avg"] == pytest.approx(33.3)
    gla = df[df["method"] == "Liger-GLA (paper)"].iloc[0]
    assert gla["Chance-corrected recovery %"] == pytest.approx(89.9)  # 19.6 / 21.8 on the rounded averages
    assert gla["Recovery %"] == pytest.approx(96.0)


def test_chance_row_from_metrics(tmp_path):
    tasks = list(UNIFORM)
    for method, values in [("base", [0.8, 0.8, 0.5, 0.8, 0.7, 0.6]), ("liger_gla", [0.8, 0.8, 0.5, 0.7, 0.7, 0.3])]:
        d = tmp_path / "m" / method
        d.mkdir(parents=True)
        doc = {"paper_metrics": dict(zip(tasks, values, strict=True)), "chance": UNIFORM, "limit": None}
        (d / "metrics.json").write_text(json.dumps(doc))
    write_model_report("m", ["base", "liger_gla"], tmp_path, "Llama-3.2-1B", PAPER_CSV)
    table = pd.read_csv(tmp_path / "m" / "main.csv")
    ours = table[table["model"] == "m"].set_index("method")
    assert ours.loc["chance (from the data)", "PiQA"] == 50.0 and ours.loc["chance (from the data)", "Avg"] == 33.3
    assert pd.isna(ours.loc["chance (from the data)", "Recovery %"])
    assert ours.loc["liger_gla", "Chance-corrected recovery %"] == pytest.approx(round(100 * 30 / 36.7, 1))
    paper = table[table["model"] == "Llama-3.2-1B"].set_index("method")
    assert paper.loc["Liger-GLA (paper)", "Chance-corrected recovery %"] == pytest.approx(89.9)
