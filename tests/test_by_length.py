"""Accuracy by request length (liger.by_length): buckets, pairing with the window-only row, notes, the tables."""

import numpy as np
import pandas as pd
import pytest

from liger.by_length import buckets, markdown, plot, split_tasks, table, write


def test_buckets_cut_the_reach_at_the_window_and_the_powers_of_two():
    reach = np.array([0, 64, 65, 256, 257, 1024, 1025, 2048, 2049, 5000])
    index, labels = buckets(reach, 64)
    assert labels == ["<= 64", "65-256", "257-512", "513-1024", "1025-2048", "> 2048"]
    assert list(index) == [0, 0, 1, 1, 2, 3, 4, 4, 5, 5]
    assert buckets(np.array([300, 600]), 512)[1] == ["<= 512", "513-1024", "1025-2048", "> 2048"]


def test_only_tasks_mostly_beyond_the_window_are_split():
    items = pd.DataFrame({"task": ["a"] * 4 + ["b"] * 4, "tokens": [10, 100, 100, 100, 10, 10, 10, 100]})
    assert split_tasks(items, 64) == ["a"]  # b: 25% of its items beyond


def _case(n: int = 400):
    """Items of one task, half at 100 tokens (reach 98) and half at 700 (698); the window-only row right on none, a
    row right exactly on the long half, one scored on other items."""
    tokens = np.array([100] * (n // 2) + [700] * (n // 2))
    items = pd.DataFrame({"task": "mmlu", "leaf": "x", "doc_id": range(n), "tokens": tokens})
    long = (tokens == 700).astype(np.uint8)
    outcomes = {"window_only": {"mmlu": ("d", np.zeros(n, np.uint8))}, "lolcats": {"mmlu": ("d", long)},
                "other_data": {"mmlu": ("e", long)}, "no_items": {}}
    roles = {"window_only": "control", "lolcats": "method", "other_data": "method", "no_items": "method"}
    return items, outcomes, roles


def test_each_bucket_is_paired_with_the_window_only_row_on_the_same_items(tmp_path):
    items, outcomes, roles = _case()
    df = table(items, {"mmlu": "d"}, outcomes, roles, 64, "window_only", resamples=500)
    line = df.set_index(["method", "bucket"])
    assert list(df["bucket"].unique()) == ["65-256", "513-1024"]
    assert line.loc[("lolcats", "513-1024"), "accuracy"] == 100.0 and line.loc[("lolcats", "65-256"), "accuracy"] == 0
    long = line.loc[("lolcats", "513-1024")]
    assert long["difference"] == pytest.approx(100.0) and long["low"] == long["high"] == pytest.approx(100.0)
    assert long["items"] == 200
    short = line.loc[("lolcats", "65-256")]
    assert short["difference"] == short["low"] == short["high"] == 0.0
    assert pd.isna(line.loc[("window_only", "513-1024"), "difference"])
    assert line.loc[("other_data", "513-1024"), "note"] == (
        "not the items of the coverage table (another data source or limit)")
    assert line.loc[("no_items", "65-256"), "note"] == "no per-item outcomes recorded"
    text = markdown(df, 64, "window_only")
    assert "| row | 65-256 (200) | 513-1024 (200) |" in text
    assert "| lolcats | 0.0 | 100.0 |" in text and "| lolcats | +0.0 [+0.0, +0.0] | +100.0 [+100.0, +100.0] |" in text
    assert "lolcats - window_only on mmlu, interval by reach: above 0 at 513-1024; contains 0 at 65-256." in text
    assert "other_data: not the items of the coverage table" in text
    plot(df, tmp_path / "p.png", "m", "window_only")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_a_coverage_table_without_digests_asks_for_a_rerun(tmp_path):
    items, outcomes, roles = _case()
    items.to_csv(tmp_path / "coverage_items.csv", index=False)
    old = pd.DataFrame({"task": ["mmlu"], "items beyond window 64 %": [100.0]})  # written before the digests
    png = tmp_path / "plots" / "m_by_length.png"
    text = write(tmp_path, tmp_path / "coverage_items.csv", old, outcomes, roles, 64, "window_only", png, "m",
                 resamples=100)
    assert "lolcats: the coverage table has no documents' digest: rerun liger coverage." in text
    assert (tmp_path / "by_length.csv").exists() and (tmp_path / "by_length.md").read_text() == text
    assert png.stat().st_size > 1000  # drawn even when no row can be split: the rule's output always exists


def test_nothing_to_split_says_so():
    items = pd.DataFrame({"task": "piqa", "leaf": "piqa", "doc_id": [0, 1], "tokens": [20, 30]})
    df = table(items, {}, {}, {}, 64, "window_only")
    assert df.empty and "No task has at least 50% of its items beyond the 64-token window" in markdown(df, 64, None)
