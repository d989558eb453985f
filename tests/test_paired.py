"""Per-item outcomes and the paired bootstrap (liger.paired): the fast draw against plain resampling of indices,
analytic cases, the report's table and sentence, rows without items."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from liger.errors import LigerError
from liger.paired import (
    NO_ITEMS,
    paired_interval,
    paper_recurrence_gain,
    record,
    resampled_difference,
    task_rng,
)
from liger.pipeline import PAPER_TASKS as TASKS
from liger.report import Roles, write_model_report
from tests.conftest import ROOT

PAPER_CSV = ROOT / "config" / "paper_results.csv"


def _bits(values) -> np.ndarray:
    return np.array(values, dtype=np.uint8)


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, by hand."""
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def _loop_interval(pairs: dict, resamples: int, seed: int) -> tuple[float, float]:
    """The textbook paired bootstrap, one index at a time: each resample draws each task's n indices with
    replacement, the same for both rows, and averages the tasks' accuracy differences."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        total = 0.0
        for row, ref in pairs.values():
            n = len(row)
            picks = rng.integers(n, size=n).tolist()
            total += sum(int(row[i]) - int(ref[i]) for i in picks) / n
        draws.append(100 * total / len(pairs))
    draws.sort()
    return _percentile(draws, 2.5), _percentile(draws, 97.5)


def test_the_multinomial_draw_has_the_distribution_of_index_resampling():
    """Every one of the n^n index tuples of a 5-item case, enumerated: the exact bootstrap distribution of the
    difference; the fast draw's frequencies over 200,000 resamples match it."""
    row, ref = _bits([1, 1, 0, 1, 0]), _bits([0, 1, 1, 1, 0])
    n = len(row)
    exact = Counter()
    for picks in itertools.product(range(n), repeat=n):
        exact[sum(int(row[i]) - int(ref[i]) for i in picks)] += 1
    draws = resampled_difference(row, ref, 200_000, np.random.default_rng(3))
    got = Counter(np.rint(draws * n).astype(int).tolist())
    assert set(got) <= set(exact)
    for k, count in exact.items():
        assert got[k] / 200_000 == pytest.approx(count / n**n, abs=0.004), k


def test_interval_agrees_with_a_plain_python_loop():
    """Six tasks of different sizes; the loop and the fast draw, 4,000 resamples each, give the same interval up to
    Monte Carlo error (a few hundredths of the interval's width)."""
    rng = np.random.default_rng(7)
    pairs = {}
    for task, n in zip(TASKS, [40, 30, 25, 60, 35, 80], strict=True):
        ref = (rng.random(n) < 0.5).astype(np.uint8)
        row = np.where(rng.random(n) < 0.3, 1 - ref, ref).astype(np.uint8)
        row[: n // 5] = 1  # a real gain for the row
        pairs[task] = (row, ref)
    point, low, high = paired_interval(pairs, resamples=4_000, seed=0)
    loop_low, loop_high = _loop_interval(pairs, 4_000, seed=1)
    means = [(r.mean() - f.mean()) for r, f in pairs.values()]
    assert point == pytest.approx(100 * sum(means) / len(means))
    width = high - low
    assert low < point < high and width > 5
    assert loop_low == pytest.approx(low, abs=0.08 * width) and loop_high == pytest.approx(high, abs=0.08 * width)


def test_identical_rows_and_constant_shifts_give_degenerate_intervals():
    rng = np.random.default_rng(0)
    same = {t: (x, x.copy()) for t in TASKS for x in [(rng.random(50) < 0.6).astype(np.uint8)]}
    assert paired_interval(same) == (0.0, 0.0, 0.0)
    assert paired_interval({"mmlu": (np.ones(30, np.uint8), np.zeros(30, np.uint8))}) == (100.0, 100.0, 100.0)
    shifted = same | {"piqa": (np.ones(20, np.uint8), np.zeros(20, np.uint8))}  # +100 on one task of six
    point, low, high = paired_interval(shifted)
    assert point == low == high == pytest.approx(100 / 6)


def test_interval_width_matches_the_normal_approximation_and_the_seed_fixes_it():
    """n = 10,000 items, 10% better and 10% worse: the 95% interval is about +-1.96 sd of the mean difference."""
    n, up, down = 10_000, 1_000, 1_000
    row, ref = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    row[:up], ref[up:up + down] = 1, 1
    point, low, high = paired_interval({"mmlu": (row, ref)})
    sd = math.sqrt(((up + down) / n - ((up - down) / n) ** 2) / n)
    assert point == 0 and high - low == pytest.approx(2 * 1.96 * 100 * sd, rel=0.05)
    assert paired_interval({"mmlu": (row, ref)}) == (point, low, high)
    assert paired_interval({"mmlu": (row, ref)}, seed=1) != (point, low, high)
    # a task's draws depend on the seed and its own name only, not on the other tasks
    a = resampled_difference(row, ref, 100, task_rng(0, "mmlu"))
    assert np.array_equal(a, resampled_difference(row, ref, 100, task_rng(0, "mmlu")))
    assert not np.array_equal(a, resampled_difference(row, ref, 100, task_rng(0, "piqa")))


# ----------------------------------------------------------------------------------------- recording


def _samples(docs: list[dict], values: list[float], metric: str = "acc", order=None) -> list[dict]:
    order = order or range(len(docs))
    return [{"doc_id": i, "doc": docs[i], metric: values[i], "arguments": ["long context"]} for i in order]


def test_record_orders_items_by_doc_id_within_each_leaf_and_hashes_the_docs():
    docs = [{"q": f"question {i}", "a": i % 2} for i in range(4)]
    a = record("mmlu", "acc", [_samples(docs[:2], [1.0, 0.0], order=[1, 0]), _samples(docs[2:], [0.0, 1.0])])
    assert a == {"order": "subject (alphabetical), then doc_id", "outcomes": "1001", "docs_sha256": a["docs_sha256"]}
    b = record("mmlu", "acc", [_samples(docs[:2], [0.0, 0.0]), _samples(docs[2:], [1.0, 1.0])])
    assert b["docs_sha256"] == a["docs_sha256"] and b["outcomes"] == "0011"  # same items, other outcomes
    other = record("mmlu", "acc", [_samples(docs[2:], [0.0, 1.0]), _samples(docs[:2], [1.0, 0.0])])
    assert other["docs_sha256"] != a["docs_sha256"]  # the same documents in another order are other items
    assert record("hellaswag", "acc_norm", [_samples(docs, [1, 0, 1, True], "acc_norm")])["outcomes"] == "1011"
    with pytest.raises(LigerError, match=r"task piqa: acc of doc 1 is 0.5, not 0 or 1"):
        record("piqa", "acc", [_samples(docs, [1.0, 0.5, 0.0, 1.0])])
    with pytest.raises(LigerError, match="task piqa: lm-eval logged a document more than once"):
        record("piqa", "acc", [_samples(docs, [1.0] * 4, order=[0, 1, 1, 2])])


# ----------------------------------------------------------------------------------------- the report


def _items(outcomes: str, docs: str = "d" * 64) -> dict:
    return {"order": "doc_id", "outcomes": outcomes, "docs_sha256": docs}


def _write(results, method: str, per_task: dict[str, str] | None, liger: dict | str = "base", docs: str = "d" * 64):
    """A metrics.json with items (per_task: task -> outcomes), or without (None, as before this change)."""
    d = results / "m" / method
    d.mkdir(parents=True)
    outcomes = per_task or dict.fromkeys(TASKS, "01")
    tasks = {t: {"n": len(o), "value": o.count("1") / len(o)} | ({"items": _items(o, docs)} if per_task else {})
             for t, o in outcomes.items()}
    doc = {"paper_metrics": {t: e["value"] for t, e in tasks.items()}, "tasks": tasks, "liger": liger}
    (d / "metrics.json").write_text(json.dumps(doc))


def test_report_writes_paired_differences_and_tests_the_papers_claim(tmp_path):
    rng = np.random.default_rng(0)

    def outcomes(p: float, n: int = 400) -> str:
        return "".join("1" if x else "0" for x in rng.random(n) < p)

    base = {t: outcomes(0.6) for t in TASKS}
    window = {t: outcomes(0.55) for t in TASKS} | {"mmlu": "0" * 300 + base["mmlu"][300:]}
    gla = dict(window) | {"mmlu": "1" * 100 + window["mmlu"][100:]}  # +25 points over the window, on MMLU alone
    gla_options = {"method": "liger_gla", "hybrid": "liger_attention"}
    _write(tmp_path, "base", base)
    _write(tmp_path, "liger_gla", gla, gla_options)
    _write(tmp_path, "liger_hgrn2", None, {"method": "liger_hgrn2"})  # evaluated before items were recorded
    _write(tmp_path, "lolcats", {t: outcomes(0.5) for t in TASKS}, {"method": "lolcats"}, docs="e" * 64)
    _write(tmp_path, "window_only", window, gla_options | {"alpha": 1.0, "beta": 0.0})
    methods = ["base", "liger_gla", "liger_hgrn2", "lolcats", "window_only"]
    roles = Roles(controls=["window_only"], reference="liger_gla", window_only="window_only")
    report = write_model_report("m", methods, tmp_path, "Llama-3-8B", PAPER_CSV, roles=roles,
                                resamples=2_000).read_text()  # fmt: skip

    table = pd.read_csv(tmp_path / "m" / "paired.csv")
    line = table.set_index(["method", "reference", "measure"])
    gla_mmlu = line.loc[("liger_gla", "window_only", "MMLU")]
    assert gla_mmlu["difference"] == pytest.approx(25.0) and gla_mmlu["low"] > 15 and gla_mmlu["items"] == 400
    gla_avg = line.loc[("liger_gla", "window_only", "Avg")]
    assert gla_avg["difference"] == pytest.approx(25 / 6) and gla_avg["items"] == 2400
    gla_base = line.loc[("liger_gla", "base", "Avg")]
    want = np.mean([gla[t].count("1") / 400 - base[t].count("1") / 400 for t in TASKS]) * 100
    assert gla_base["difference"] == pytest.approx(want) and gla_base["low"] < want < gla_base["high"]
    assert set(table["resamples"]) == {2_000} and set(table["seed"]) == {0}
    assert ("base", "base", "Avg") not in line.index and ("window_only", "window_only", "MMLU") not in line.index
    assert line.loc[("window_only", "base", "MMLU"), "difference"] == pytest.approx(
        100 * (window["mmlu"].count("1") - base["mmlu"].count("1")) / 400)
    assert (line.loc[("liger_hgrn2", "base", "Avg"), "note"] == NO_ITEMS
            and pd.isna(line.loc[("liger_hgrn2", "base", "Avg"), "difference"]))
    assert line.loc[("lolcats", "base", "Avg"), "note"] == (
        f"not the same items as base on {', '.join(TASKS)} (another data source or limit)")
    assert line.loc[("lolcats", "window_only", "MMLU"), "note"] == (
        "not the same items as window_only on mmlu (another data source or limit)")

    md = (tmp_path / "m" / "paired.md").read_text()
    assert "| liger_hgrn2 | method | - | - | - | - | - | - | " + NO_ITEMS + " |" in md
    # the third reference, the reference method: every other row minus liger_gla
    assert "| row | role | Avg - base | MMLU - base | Avg - window_only | MMLU - window_only | Avg - liger_gla | " \
           "MMLU - liger_gla | note |" in md
    assert line.loc[("window_only", "liger_gla", "MMLU"), "difference"] == pytest.approx(-25.0)
    assert ("liger_gla", "liger_gla", "MMLU") not in line.index
    assert md in report and "## Paired differences" in report
    assert ("The paper's claim at Llama-3-8B: the recurrence adds +6.4 MMLU points over the window alone "
            "(43.4 vs 37.0; config/paper_results.csv).") in md
    assert f"liger_gla - window_only on MMLU: +25.0 [{gla_mmlu['low']:+.1f}, {gla_mmlu['high']:+.1f}] points" in md
    assert "which lies above 0: m shows a gain; the paper's +6.4 lies below it." in md
    assert "liger_hgrn2 - window_only on MMLU: not computed (" + NO_ITEMS + ")." in md
    assert ("lolcats - window_only on MMLU: not computed (not the same items as window_only on mmlu (another data "
            "source or limit)).") in md  # every method row is tested, not only Liger's


def test_report_without_items_or_without_window_only_still_writes_the_tables(tmp_path):
    for method in ("base", "liger_gla"):
        _write(tmp_path, method, None, {"method": "liger_gla"} if method != "base" else "base")
    write_model_report("m", ["base", "liger_gla"], tmp_path, None, PAPER_CSV, resamples=100,
                       roles=Roles(reference="liger_gla", window_only="window_only"))
    table = pd.read_csv(tmp_path / "m" / "paired.csv")
    assert list(zip(table["method"], table["reference"], strict=True)) == [
        ("base", "liger_gla"), ("base", "liger_gla"), ("liger_gla", "base"), ("liger_gla", "base")]
    assert set(table["note"]) == {NO_ITEMS}
    md = (tmp_path / "m" / "paired.md").read_text()
    assert "No window_only row here, so m cannot test it." in md and "+6.4" in md  # the first model that has both


def test_malformed_items_name_the_file_and_key(tmp_path):
    _write(tmp_path, "base", dict.fromkeys(TASKS, "0110"))
    path = tmp_path / "m" / "base" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["tasks"]["mmlu"]["items"]["outcomes"] = "01x0"
    path.write_text(json.dumps(doc))
    with pytest.raises(LigerError, match=r"m/base/metrics\.json: tasks\.mmlu\.items\.outcomes: not a string of 0s"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV)
    doc["tasks"]["mmlu"]["items"]["outcomes"] = "011"
    path.write_text(json.dumps(doc))
    with pytest.raises(LigerError, match=r"tasks\.mmlu\.items\.outcomes: 3 items where n is 4"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV)
    with pytest.raises(LigerError, match="--resamples 0: must be >= 1"):
        write_model_report("m", ["base"], tmp_path, None, PAPER_CSV, resamples=0)


def test_paper_claim_comes_from_the_paper_csv(tmp_path):
    claim = paper_recurrence_gain(PAPER_CSV, "liger_gla", "window_only", "Llama-3.2-1B")  # the model that has both
    assert claim == {"model": "Llama-3-8B", "reference": 43.4, "window_only": 37.0}
    bad = tmp_path / "paper.csv"
    pd.read_csv(PAPER_CSV).drop(columns="config_method").to_csv(bad, index=False)
    with pytest.raises(LigerError, match="paper.csv: no config_method column"):
        paper_recurrence_gain(bad, "liger_gla", "window_only")


def test_sentence_says_where_the_interval_lies():
    from liger.paired import sentences

    claim = {"model": "Llama-3-8B", "reference": 43.4, "window_only": 37.0}
    table = pd.DataFrame([
        {"method": m, "reference": "window_only", "measure": "MMLU", "difference": d, "low": lo, "high": hi,
         "note": ""} for m, d, lo, hi in [("a", 0.5, -1.0, 2.0), ("b", -3.0, -5.0, -1.0), ("c", 7.0, 5.0, 9.0)]
    ])  # fmt: skip
    text = sentences(table, ["a", "b", "c"], claim, "1.5b", "window_only")
    assert "a - window_only on MMLU: +0.5 [-1.0, +2.0] points (95% interval), which includes 0: 1.5b shows no " \
           "measurable gain; the paper's +6.4 lies above it." in text
    assert "which lies below 0: the window alone scores higher at 1.5b; the paper's +6.4 lies above it." in text
    assert "c - window_only on MMLU: +7.0 [+5.0, +9.0] points (95% interval), which lies above 0: 1.5b shows a " \
           "gain; the paper's +6.4 lies inside it." in text
    assert sentences(table, [], None, "1.5b", "window_only") == ("No method row beside window_only here, so 1.5b "
                                                                "cannot test it.")


def test_ablation_table_shows_each_rows_paired_interval_from_the_reference(tmp_path):
    """The ablation table's change from the reference carries the paired interval of paired.csv (reference, Avg) for
    rows with per-item outcomes in both; the sentence says which rows differ beyond it and which are not paired."""
    from liger.ablations import Ablations

    rng = np.random.default_rng(1)
    gla = {t: "".join("1" if x else "0" for x in rng.random(400) < 0.5) for t in TASKS}
    gla_options = {"method": "liger_gla", "hybrid": "liger_attention"}
    _write(tmp_path, "base", {t: "1" * 300 + "0" * 100 for t in TASKS})
    _write(tmp_path, "liger_gla", gla, gla_options)
    _write(tmp_path, "gate_from_q", gla | {"mmlu": "1" * 100 + gla["mmlu"][100:]}, gla_options)  # MMLU up
    _write(tmp_path, "gate_from_v", gla | {"piqa": gla["piqa"][::-1]}, gla_options)  # the same count, other items
    _write(tmp_path, "no_lora", None, gla_options)  # scored before items were recorded
    rows = {"base": "Base (Transformer)", "liger_gla": "Liger-GLA", "gate_from_q": "Liger-GLA gate from Q pooling",
            "gate_from_v": "Liger-GLA gate from V pooling", "no_lora": "Liger-GLA w/o LoRA"}
    write_model_report("m", list(rows), tmp_path, None, PAPER_CSV, roles=Roles(reference="liger_gla"),
                       resamples=2_000, ablations=Ablations(rows))

    paired = pd.read_csv(tmp_path / "m" / "paired.csv").set_index(["method", "reference", "measure"])
    table = pd.read_csv(tmp_path / "m" / "ablations.csv").set_index("method")
    for row in ("gate_from_q", "gate_from_v"):
        line = paired.loc[(row, "liger_gla", "Avg")]
        assert (table.loc[row, "Δ low"], table.loc[row, "Δ high"]) == (round(line["low"], 1), round(line["high"], 1))
        assert table.loc[row, "Δ Avg vs reference"] == round(line["difference"], 1)  # unrounded averages
    q = table.loc["gate_from_q"]
    gain = 100 * (gla["mmlu"][:100].count("0") / 400) / 6  # the items MMLU gained, over six tasks
    assert q["Δ Avg vs reference"] == pytest.approx(gain, abs=0.1) and q["Δ low"] > 0
    assert table.loc["gate_from_v", "Δ low"] < 0 < table.loc["gate_from_v", "Δ high"]
    assert pd.isna(table.loc["no_lora", "Δ low"]) and pd.isna(table.loc["Liger-GLA gate from Q pooling (paper)",
                                                                         "Δ low"])
    md = (tmp_path / "m" / "ablations.md").read_text()
    assert f"| {q['Δ Avg vs reference']:+.1f} [{q['Δ low']:+.1f}, {q['Δ high']:+.1f}] |" in md
    assert (f"Paired with liger_gla on the same items, 1 of 2 rows differ beyond their 95% interval: gate_from_q "
            f"{q['Δ Avg vs reference']:+.1f}. Not paired (no per-item outcomes in both rows): no_lora.") in md
