"""Accuracy by request length: each row's per-item outcomes (`liger.paired`) split by how far the item's longest
request reaches (`coverage_items.csv`, `liger.coverage`), with the paired difference from the window-only row in
each length bucket.

An item's reach is that of its longest request (`liger.coverage.reach`: the last prediction sits at input position
L - 2). Buckets: inside the window (reach <= window), then up to 256, 512, 1,024, 2,048 tokens and beyond.
Only tasks with at least half their items beyond the window are split (`MIN_BEYOND`): elsewhere the window is
nearly full attention. A row is split only when its documents' digest for the task equals the coverage table's,
so the lengths are those of the items it was scored on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from liger.coverage import DIGEST, reach
from liger.fileio import atomic_target
from liger.markdown import markdown_table
from liger.paired import LEVEL, RESAMPLES, SEED, paired_interval

EDGES = (256, 512, 1024, 2048)
MIN_BEYOND = 0.5
OUTPUTS = ("by_length.csv", "by_length.md")
COLUMNS = ["task", "bucket", "method", "role", "items", "accuracy", "difference", "low", "high", "note"]


def buckets(reach: np.ndarray, window: int) -> tuple[np.ndarray, list[str]]:
    """Each item's bucket index and the buckets' labels (inside the window, then `EDGES`, then beyond)."""
    edges = [window, *(e for e in EDGES if e > window)]
    inner = [f"{lo + 1}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels = [f"<= {window}", *inner, f"> {edges[-1]}"]
    return np.searchsorted(np.asarray(edges), reach, side="left"), labels


def split_tasks(items: pd.DataFrame, window: int) -> list[str]:
    """The tasks with at least `MIN_BEYOND` of their items beyond the window, in the items table's order."""
    beyond = (reach(items["tokens"]) > window).groupby(items["task"], sort=False).mean()
    return [t for t, share in beyond.items() if share >= MIN_BEYOND]


def table(items: pd.DataFrame, digests: Mapping[str, str], outcomes: Mapping[str, Mapping], roles: Mapping[str, str],
          window: int, window_only: str | None, resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """One line per task, bucket and row: items, accuracy (%) and the difference from `window_only` in points with
    its paired-bootstrap interval, or a note. `items`: coverage_items.csv; `digests`: task -> docs_sha256 of the
    coverage table; `outcomes`: row -> `paired.read_items`; `roles`: row -> role."""
    lines = []
    for task in split_tasks(items, window):
        index, labels = buckets(reach(items.loc[items["task"] == task, "tokens"].to_numpy()), window)
        usable = {m: got[task][1] for m, got in outcomes.items() if task in got and got[task][0] == digests.get(task)}
        ref = usable.get(window_only) if window_only else None
        for b, label in enumerate(labels):
            sel = index == b
            if not sel.any():
                continue
            for method in outcomes:
                line = dict.fromkeys(COLUMNS) | {"task": task, "bucket": label, "method": method,
                                                  "role": roles.get(method, ""), "items": int(sel.sum()), "note": ""}
                if method not in usable:
                    line["note"] = ("no per-item outcomes recorded" if task not in outcomes[method] else
                                    "the coverage table has no documents' digest: rerun liger coverage"
                                    if task not in digests else
                                    "not the items of the coverage table (another data source or limit)")
                else:
                    row = usable[method][sel]
                    line["accuracy"] = 100 * float(row.mean())
                    if ref is not None and method != window_only:
                        line["difference"], line["low"], line["high"] = paired_interval(
                            {f"{task} {label}": (row, ref[sel])}, resamples, seed)
                lines.append(line)
    return pd.DataFrame(lines, columns=COLUMNS).astype({"items": "Int64"})


def _wide(lines: pd.DataFrame, values: str, order: list[str]) -> pd.DataFrame:
    """One task's `values` as rows (in their order) by buckets (in `order`)."""
    return lines.pivot(index="method", columns="bucket", values=values).reindex(
        index=list(dict.fromkeys(lines["method"])), columns=order)


def _cell(line: pd.Series) -> str:
    return "-" if pd.isna(line["difference"]) else \
        f"{line['difference']:+.1f} [{line['low']:+.1f}, {line['high']:+.1f}]"


def sentences(df: pd.DataFrame, window_only: str | None) -> str:
    """Per method row and task: the buckets where the interval of (row - window-only) lies above 0, contains 0 and
    lies below 0."""
    text = []
    methods = df[(df["role"] == "method") & df["difference"].notna()]
    for (task, method), lines in methods.groupby(["task", "method"], sort=False):
        where = {"above 0": lines[lines["low"] > 0], "contains 0": lines[(lines["low"] <= 0) & (lines["high"] >= 0)],
                 "below 0": lines[lines["high"] < 0]}
        parts = [f"{name} at {', '.join(part['bucket'])}" for name, part in where.items() if not part.empty]
        text.append(f"{method} - {window_only} on {task}, interval by reach: " + "; ".join(parts) + ".")
    return " ".join(text)


def markdown(df: pd.DataFrame, window: int, window_only: str | None, level: float = LEVEL) -> str:
    """Per task: accuracy by bucket (with the items per bucket) and the difference from `window_only`."""
    if df.empty:
        return (f"No task has at least {100 * MIN_BEYOND:g}% of its items beyond the {window}-token window, so none "
                "is split by length.\n")
    paired_with = (f", then the difference from {window_only} in points with the {100 * level:g}% interval of a "
                   "paired bootstrap over the bucket's items") if window_only else ""
    out = [f"Items by reach (the tokens of their longest request, context + continuation, less 2; the window: "
           f"{window}); tasks with at least {100 * MIN_BEYOND:g}% of their items beyond the window. Accuracy in %"
           f"{paired_with}.", ""]
    for task, lines in df.groupby("task", sort=False):
        order = list(dict.fromkeys(lines["bucket"]))
        counts = lines.drop_duplicates("bucket").set_index("bucket")["items"]
        acc = _wide(lines, "accuracy", order).map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        acc.columns = [f"{b} ({counts[b]:,})" for b in order]
        out += [f"**{task}**, accuracy (items per bucket in the header):", "",
                markdown_table(acc.rename_axis("row").reset_index())]
        diff = lines[lines["method"] != window_only].copy()
        if window_only and diff["difference"].notna().any():
            diff["cell"] = diff.apply(_cell, axis=1)
            out += [f"**{task}**, row - {window_only}:", "",
                    markdown_table(_wide(diff, "cell", order).rename_axis("row").reset_index())]
        notes = lines.loc[lines["note"] != "", ["method", "note"]].drop_duplicates()
        out += [f"{m}: {n}." for m, n in notes.itertuples(index=False)]
    return "\n".join(out + ["", sentences(df, window_only), ""])


def plot(df: pd.DataFrame, out_png: Path, title: str, window_only: str | None = None) -> None:
    """Per split task (a column): each row's accuracy per bucket (controls dashed) and, below, its difference from
    `window_only` with the interval; a note when nothing is split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(df["task"])) or [None]
    paired = df["difference"].notna().any()
    fig, axes = plt.subplots(2 if paired else 1, len(tasks), figsize=(6.5 * len(tasks), 8 if paired else 4.2),
                             squeeze=False, sharex="col")
    for col, task in enumerate(tasks):
        if task is None:
            axes[0][col].text(0.5, 0.5, "no task has most of its items beyond the window", ha="center", va="center")
            axes[0][col].set_axis_off()
            continue
        lines = df[(df["task"] == task) & df["accuracy"].notna()]
        order = list(dict.fromkeys(df.loc[df["task"] == task, "bucket"]))
        for i, (method, rows) in enumerate(lines.groupby("method", sort=False)):
            x = np.array([order.index(b) for b in rows["bucket"]])
            style = dict(marker="o", color=f"C{i % 10}", label=method,
                         linestyle="--" if rows["role"].iloc[0] in ("control", "base") else "-")
            axes[0][col].plot(x, rows["accuracy"], **style)
            if paired and rows["difference"].notna().any():
                d = rows["difference"].to_numpy(float)
                err = np.vstack([d - rows["low"].to_numpy(float), rows["high"].to_numpy(float) - d])
                axes[1][col].errorbar(x + 0.04 * (i - len(lines["method"].unique()) / 2), d, yerr=err, capsize=2,
                                      **style)
        counts = df[df["task"] == task].drop_duplicates("bucket").set_index("bucket")["items"]
        axes[-1][col].set_xticks(range(len(order)), [f"{b}\n({counts[b]:,})" for b in order], fontsize=8)
        axes[-1][col].set_xlabel("item reach in tokens (items)")
        axes[0][col].set_ylabel("accuracy %")
        axes[0][col].set_title(task, fontsize=9)
        if paired:
            axes[1][col].axhline(0, color="black", linewidth=0.8)
            axes[1][col].set_ylabel(f"row - {window_only} (points, {100 * LEVEL:g}% interval)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_target(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write(out_dir: Path, items_csv: Path, coverage: pd.DataFrame, outcomes: Mapping[str, Mapping],
          roles: Mapping[str, str], window: int, window_only: str | None, plot_png: Path, title: str,
          resamples: int = RESAMPLES) -> str:
    """`out_dir`/by_length.csv and .md and the plot `plot_png` from the coverage items table and each row's
    outcomes; returns the Markdown."""
    digests = dict(zip(coverage["task"], coverage[DIGEST], strict=True)) if DIGEST in coverage else {}
    df = table(pd.read_csv(items_csv), digests, outcomes, roles, window, window_only, resamples)
    df.to_csv(out_dir / "by_length.csv", index=False)
    text = markdown(df, window, window_only)
    (out_dir / "by_length.md").write_text(text)
    plot(df, plot_png, title, window_only)
    return text
