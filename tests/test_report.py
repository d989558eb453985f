"""The report's tables: our rows from metrics files, averages, recovery, the paper's rows beside them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from liger.errors import LigerError
from liger.report import Roles, paper_rows, write_model_report, write_tables
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


def test_the_base_row_is_the_one_the_config_names_whatever_its_name(tmp_path):
    """Recovery and the paired differences are from the row `Roles.base` names (the pipeline passes the config's
    unconverted row), not from a row called `base`."""
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
    write_metrics(tmp_path, "m", "llama", dict.fromkeys(tasks, 0.6))
    write_metrics(tmp_path, "m", "liger_gla", dict.fromkeys(tasks, 0.3))
    write_model_report("m", ["llama", "liger_gla"], tmp_path, None, PAPER_CSV, roles=Roles(base="llama"))
    table = pd.read_csv(tmp_path / "m" / "main.csv").set_index("method")
    assert table.loc["llama", "role"] == "base" and table.loc["liger_gla", "Recovery %"] == pytest.approx(50.0)
    paired = pd.read_csv(tmp_path / "m" / "paired.csv")
    assert set(paired.loc[paired["method"] == "liger_gla", "reference"]) == {"llama"}
    assert set(paired["reference"]) == {"llama", "liger_gla"}  # the reference method: the first method row
    write_model_report("m", ["llama", "liger_gla"], tmp_path, None, PAPER_CSV)  # no row named base: no recovery
    assert pd.read_csv(tmp_path / "m" / "main.csv")["Recovery %"].isna().all()


def test_lolcats_rows_count_both_stages_beside_the_papers_lolcats_rows(tmp_path):
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
    write_metrics(tmp_path, "m", "base", dict.fromkeys(tasks, 0.6))
    write_metrics(tmp_path, "m", "lolcats", dict.fromkeys(tasks, 0.5), tokens=2_000_000)
    write_metrics(tmp_path, "m", "liger_gla", dict.fromkeys(tasks, 0.55), tokens=2_000_000)
    (tmp_path / "m" / "lolcats" / "transfer_summary.json").write_text(
        json.dumps({"tokens_trained": 1_500_000, "wall_time_s": 630.0}))
    report = write_model_report("m", ["base", "lolcats", "liger_gla"], tmp_path, "Llama-3-8B", PAPER_CSV,
                                roles=Roles(reference="liger_gla"))
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
    (tmp_path / "m" / "lolcats" / "transfer_summary.json").write_text("{cut")  # names the rule that writes it
    with pytest.raises(LigerError, match="transfer_summary.json: not readable JSON.*rerun the transfer rule"):
        write_model_report("m", ["base", "lolcats"], tmp_path, None, PAPER_CSV)


def test_unknown_paper_model_has_no_rows():
    assert paper_rows("SmolLM2-135M", PAPER_CSV).empty and paper_rows(None, PAPER_CSV).empty


def test_missing_or_corrupt_metrics_say_what_to_do(tmp_path):
    with pytest.raises(LigerError, match="missing; run the evaluate rule"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV)
    (tmp_path / "m" / "base").mkdir(parents=True)
    (tmp_path / "m" / "base" / "metrics.json").write_text("{not json")
    with pytest.raises(LigerError, match="not readable JSON.*delete it and rerun the evaluate rule"):
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


TASK_NAMES = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
# Our rows of a synthetic ablation run: {row: (six scores, final validation loss or None: untrained)}
ABLATION_RUN = {
    "base": ([0.70, 0.70, 0.40, 0.60, 0.60, 0.40], None),
    "liger_gla": ([0.68, 0.66, 0.36, 0.50, 0.56, 0.30], 1.80),
    "gate_from_q": ([0.68, 0.66, 0.36, 0.47, 0.56, 0.30], 1.85),
    "no_lora": ([0.60, 0.50, 0.30, 0.40, 0.50, 0.26], None),
    "window_only": ([0.69, 0.67, 0.36, 0.50, 0.56, 0.29], 1.83),
}
ABLATION_ROWS = {"base": "Base (Transformer)", "liger_gla": "Liger-GLA", "gate_from_q": "Liger-GLA gate from Q pooling",
                 "no_lora": "Liger-GLA w/o LoRA", "window_only": "Liger-GLA w/o GLA (SWA only)"}


def write_ablation_run(results, rows=ABLATION_RUN):
    for row, (scores, loss) in rows.items():
        write_metrics(results, "m", row, dict(zip(TASK_NAMES, scores, strict=True)))
        if loss is not None:
            (results / "m" / row / "train_summary.json").write_text(json.dumps({"final_val_loss": loss}))


def test_ablation_table_puts_each_row_beside_its_paper_row(tmp_path):
    from liger.ablations import Ablations

    write_ablation_run(tmp_path)
    m = tmp_path / "m" / "no_lora" / "metrics.json"  # an untrained row's loss comes from its evaluation (--val-data)
    m.write_text(json.dumps({**json.loads(m.read_text()), "val_loss": {"value": 21.3, "chunks": 20, "data": "d"}}))
    report = write_model_report("m", list(ABLATION_RUN), tmp_path, None, PAPER_CSV,
                                roles=Roles(controls=["window_only"], reference="liger_gla"),
                                ablations=Ablations(ABLATION_ROWS))
    table = pd.read_csv(tmp_path / "m" / "ablations.csv")
    assert list(table["method"]) == [m for row, paper in ABLATION_ROWS.items() for m in (row, paper + " (paper)")]
    assert list(table["role"]) == ["base", "paper", "reference", "paper", "ablation", "paper", "ablation", "paper",
                                   "ablation", "paper"]
    rows = table.set_index("method")
    gla, q = rows.loc["liger_gla"], rows.loc["gate_from_q"]
    assert gla["Avg"] == pytest.approx(51.0) and q["Avg"] == pytest.approx(50.5)  # HellaSwag 50 -> 47
    assert q["Δ Avg vs reference"] == pytest.approx(-0.5) and gla["Δ Avg vs reference"] == 0
    assert q["Recovery %"] == pytest.approx(round(100 * 50.5 / 56.7, 1))
    assert q["Val loss"] == pytest.approx(1.85) and q["Val PPL"] == pytest.approx(6.360, abs=1e-3)  # exp(1.85)
    assert rows.loc["no_lora", "Val loss"] == 21.3 and pd.isna(rows.loc["base", "Val loss"])
    assert pd.isna(rows.loc["base", "Val PPL"])
    paper_q = rows.loc["Liger-GLA gate from Q pooling (paper)"]  # Table 8, beside its Liger-GLA (Avg 67.6)
    assert (paper_q["PiQA"], paper_q["MMLU"], paper_q["Avg"]) == (80.2, 41.7, 66.7)
    assert paper_q["Δ Avg vs reference"] == pytest.approx(-0.9) and paper_q["model"] == "Llama-3-8B"
    assert paper_q["Recovery %"] == pytest.approx(round(100 * 66.7 / 71.7, 1)) and pd.isna(paper_q["Val PPL"])
    assert rows.loc["Liger-GLA w/o LoRA (paper)", "Val PPL"] == 3.23  # Table 12, from the source's text
    assert rows.loc["Liger-GLA w/o GLA (SWA only) (paper)", "Val PPL"] == 3.01
    assert rows.loc["Liger-GLA w/o GLA (SWA only) (paper)", "Avg"] == pytest.approx(66.4)  # its six tasks' mean
    md = (tmp_path / "m" / "ablations.md").read_text()
    assert md.startswith("| model | method | role |") and "| m | gate_from_q | ablation | 68.0 |" in md
    assert "| 1.850 | 6.36 |" in md and "| 21.300 | 1.78e+09 |" in md  # exp(21.3) in powers of ten
    assert "| Llama-3-8B | Liger-GLA w/o LoRA (paper) | paper |" in md
    # no_lora 42.7 vs the paper's 61.7; window_only 51.2, above liger_gla where the paper's is below: 2 signs of 3
    assert ("gate_from_q -0.5 (-0.9); no_lora -8.3 (-5.9); window_only +0.2 (-1.2). Same sign as the paper's in 2 "
            "of 3 rows.") in md
    text = report.read_text()
    assert "## Ablations (each row beside the paper's on Llama-3-8B" in text and "m_ablations.png" in text
    assert (tmp_path / "plots" / "m_ablations.png").stat().st_size > 0


def test_no_paper_rows_no_ablation_files(tmp_path):
    write_ablation_run(tmp_path)
    write_model_report("m", list(ABLATION_RUN), tmp_path, None, PAPER_CSV)
    assert not (tmp_path / "m" / "ablations.csv").exists() and not (tmp_path / "plots" / "m_ablations.png").exists()


@pytest.mark.parametrize("rows,reference,message", [
    (ABLATION_ROWS | {"gate_from_q": "Liger-GLA gate from K pooling"}, "liger_gla",
     r"paper_results.csv: no Llama-3-8B row 'Liger-GLA gate from K pooling' \(methods.gate_from_q.paper_row\); "
     r"name one of Base \(Transformer\); SUPRA"),
    (ABLATION_ROWS | {"gate_from_v": "Liger-GLA gate from V pooling"}, "liger_gla",
     r"rows \['gate_from_v'\] have no metrics file among --metrics; pass their metrics.json"),
    ({k: v for k, v in ABLATION_ROWS.items() if k != "liger_gla"}, "liger_gla",
     "the reference row 'liger_gla' has no paper_row; give it one"),
])
def test_ablation_rows_that_cannot_be_matched_say_what_to_do(tmp_path, rows, reference, message):
    from liger.ablations import Ablations

    write_ablation_run(tmp_path)
    with pytest.raises(LigerError, match=message):
        write_model_report("m", list(ABLATION_RUN), tmp_path, None, PAPER_CSV, roles=Roles(reference=reference),
                           ablations=Ablations(rows))


def test_report_cli_writes_the_ablation_table_from_its_flags(tmp_path):
    from liger.cli import main

    write_ablation_run(tmp_path)
    rows = {"liger_gla": "Liger-GLA", "window_only": "Liger-GLA w/o GLA (SWA only)"}
    folder, out = tmp_path / "m", tmp_path / "new"  # the output folders are made
    assert main(["report", "--model", "m", "--metrics", *(str(folder / r / "metrics.json") for r in ABLATION_RUN),
                 "--train", *(str(p) for p in sorted(folder.glob("*/train_summary.json"))),
                 "--out-dir", str(out / "m"), "--plot", str(out / "plots" / "m_position_loss.png"),
                 "--paper-csv", str(PAPER_CSV), "--reference", "liger_gla", "--ablations", json.dumps(rows),
                 "--resamples", "10"]) == 0
    table = pd.read_csv(out / "m" / "ablations.csv")
    assert list(table["row"]) == ["liger_gla", "liger_gla", "window_only", "window_only"]
    assert table.loc[2, "Val loss"] == pytest.approx(1.83) and table.loc[3, "Val PPL"] == 3.01
    assert (out / "plots" / "m_ablations.png").exists()


def test_the_published_135m_ablation_report_follows_from_its_published_rows(tmp_path, monkeypatch):
    """What the ablation run's published folder holds besides its rows is what `liger report --configfile --rows`
    writes from those rows (the command in results/README.md), and every row is paired with the reference."""
    from liger.cli import main

    monkeypatch.chdir(ROOT)  # the tables name each row's file relative to the project
    published = Path("results/published/ablations/smollm2-135m")
    out = tmp_path / "smollm2-135m"
    assert main(["report", "--configfile", "config/ablations-135m.yaml", "--rows", str(published),
                 "--out-dir", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["ablations.csv", "ablations.md", "main.csv", "main.md", "paired.csv", "paired.md", "report.md"]
    for name in written:
        text = (out / name).read_text().replace(str(tmp_path), "")  # report.md names no output path, checked here
        assert text == (published / name).read_text(), name
    assert (tmp_path / "plots" / "smollm2-135m_ablations.png").exists()
    table = pd.read_csv(published / "ablations.csv")
    ours = table[table["role"] != "paper"]
    assert ours["source"].str.startswith(f"{published}/").all()  # no row borrowed from another run
    assert ours.loc[ours["row"] != "liger_gla", "Δ low"].notna().all()


def test_report_rows_take_each_row_from_the_first_folder_that_has_it(tmp_path):
    """--rows with several folders: a row missing from the first is read from the next; the config gives the
    roles (here the controls and the base) without their flags."""
    from liger.cli import main

    write_ablation_run(tmp_path)
    first, second = tmp_path / "a" / "m", tmp_path / "m"
    first.mkdir(parents=True)
    (first / "liger_gla").mkdir()
    for name in ("metrics.json", "train_summary.json"):
        (first / "liger_gla" / name).write_text((second / "liger_gla" / name).read_text())
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["models"] = {"m": next(iter(config["models"].values()))}
    config["methods"] = {"base": {}, "liger_gla": {"method": "liger_gla"},
                         "window_only": {"method": "liger_gla", "alpha": 1.0, "beta": 0.0, "control": True}}
    config["report"] = {}
    (config_file := tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out" / "m"
    assert main(["report", "--configfile", str(config_file), "--rows", str(first), str(second), "--out-dir", str(out),
                 "--paper-csv", str(PAPER_CSV), "--resamples", "10"]) == 0
    table = pd.read_csv(out / "main.csv").set_index("method")
    assert table.loc["liger_gla", "source"] == str(first / "liger_gla" / "metrics.json")
    assert table.loc["base", "source"] == str(second / "base" / "metrics.json")
    assert table.loc["window_only", "role"] == "control" and table.loc["base", "role"] == "base"


@pytest.mark.parametrize("argv, message", [
    (["--rows", "{tmp}/m", "--out-dir", "{tmp}/o"], r"--rows: give --configfile .* and --out-dir too"),
    (["--configfile", "{tmp}/none.yaml", "--rows", "{tmp}/m", "--out-dir", "{tmp}/o"], r"none.yaml: cannot read it"),
    (["--configfile", "config/smoke.yaml", "--rows", "{tmp}/other", "--out-dir", "{tmp}/o"],
     r"'other' is not a model of config/smoke.yaml \(smollm2-135m\); give a folder results/RUN/MODEL"),
    (["--configfile", "config/smoke.yaml", "--rows", "{tmp}/smollm2-135m", "--out-dir", "{tmp}/o"],
     r"none of config/smoke.yaml's rows has a metrics file in .*smollm2-135m \(ROW/metrics.json\)"),
])
def test_report_rows_say_what_is_missing(tmp_path, monkeypatch, capsys, argv, message):
    from liger.cli import main

    monkeypatch.chdir(ROOT)
    (tmp_path / "smollm2-135m").mkdir()
    assert main(["report", *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
