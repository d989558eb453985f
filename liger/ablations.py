"""The ablation table: each row the config gives a `paper_row` beside that row of the paper (its ablations are on
Llama-3-8B), with the six tasks, the average, recovery, the change from the reference row (with its paired bootstrap
interval when both rows recorded per-item outcomes, `liger.paired`) and the final validation loss and perplexity; a
plot of each row's change from the reference, ours against the paper's.

`liger report --ablations` writes it (`OUTPUTS` in the model's folder, the plot where the rule declares it). Which
rows are ablations, and which paper row each sits beside, come from the config (`liger.pipeline.ablations`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from liger.errors import LigerError
from liger.fileio import read_json
from liger.markdown import markdown_table
from liger.paired import LEVEL
from liger.pipeline import TASKS, paper_val_ppl

HEADERS = [task.header for task in TASKS.values()]
DELTA = "Δ Avg vs reference"
LOW, HIGH = "Δ low", "Δ high"  # its paired bootstrap interval (ours only; liger.paired.LEVEL)
COLUMNS = ["row", "model", "method", "role", *HEADERS, "Avg", "Recovery %", DELTA, LOW, HIGH, "Val loss", "Val PPL",
           "source"]
OUTPUTS = ("ablations.csv", "ablations.md")
PAPER = " (paper)"  # what liger.report.paper_rows appends to a paper row's method


@dataclass
class Ablations:
    """The config's ablation rows: {our row: the paper row (`method` in the paper CSV)}, in the table's order, and the
    paper model those rows are of."""

    rows: dict[str, str]
    paper_model: str = "Llama-3-8B"


def val_loss(summary: Path | None, metrics: Path | None) -> float | None:
    """A row's validation loss: its LoRA fine-tune's last (`final_val_loss` in its summary), else, for a row not
    trained, the one `liger evaluate --val-data` measured (`val_loss` in its metrics); None without either."""
    if summary is not None:
        value = read_json(summary, "finetune").get("final_val_loss")
    elif metrics is not None:
        value = (read_json(metrics, "evaluate").get("val_loss") or {}).get("value")
    else:
        value = None
    return None if value is None else float(value)


def table(ours: pd.DataFrame, paper: pd.DataFrame, ablations: Ablations, reference: str,
          summaries: Mapping[str, Path], paper_csv: Path, metrics: Mapping[str, Path] | None = None,
          paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our row then its paper row, for each ablation row. `ours`: our rows of the main table (liger.report.our_rows);
    `paper`: the paper model's rows (liger.report.paper_rows); `summaries`: the trained rows' LoRA summaries;
    `metrics`: the rows' metrics files (an untrained row's validation loss); `paired`: the paired differences
    (`liger.paired.differences`), whose Avg lines from `reference` give our rows' intervals."""
    ours = ours.set_index("method")
    paper = paper.set_index("method")
    missing = [row for row in ablations.rows if row not in ours.index]
    if missing:
        raise LigerError(f"liger report --ablations: rows {missing} have no metrics file among --metrics; pass their "
                         "metrics.json or remove their paper_row")
    known = [m[:-len(PAPER)] for m in paper.index if m.endswith(PAPER)]
    for row, name in ablations.rows.items():
        if name + PAPER not in paper.index:
            raise LigerError(f"{paper_csv}: no {ablations.paper_model} row {name!r} (methods.{row}.paper_row); name "
                             f"one of {'; '.join(known)}")
    if reference not in ablations.rows:
        raise LigerError(f"liger report --ablations: the reference row {reference!r} has no paper_row; give it one "
                         "(e.g. Liger-GLA), or name another with --reference (config: report.reference)")
    ref_ours, ref_paper = ours.loc[reference, "Avg"], paper.loc[ablations.rows[reference] + PAPER, "Avg"]
    intervals = {}
    if paired is not None and not paired.empty:
        lines = paired[(paired["reference"] == reference) & (paired["measure"] == "Avg")].dropna(subset=["low"])
        intervals = {m: (round(d, 1), round(lo, 1), round(hi, 1))
                     for m, d, lo, hi in zip(lines["method"], lines["difference"], lines["low"], lines["high"],
                                             strict=True)}
    out = []
    for row, name in ablations.rows.items():
        mine, theirs = ours.loc[row], paper.loc[name + PAPER]
        loss = val_loss(summaries.get(row), (metrics or {}).get(row))
        ppl = paper_val_ppl(str(theirs["source"]))
        role = "base" if mine["role"] == "base" else "reference" if row == reference else "ablation"
        # paired: the unrounded averages' difference, inside its interval; else that of the rounded averages
        delta, low, high = intervals.get(row, (round(mine["Avg"] - ref_ours, 1), None, None))
        out.append({"row": row, "model": mine["model"], "method": row, "role": role, **mine[HEADERS].to_dict(),
                    "Avg": mine["Avg"], "Recovery %": mine["Recovery %"], DELTA: delta, LOW: low, HIGH: high,
                    "Val loss": loss, "Val PPL": None if loss is None else math.exp(loss), "source": mine["source"]})
        out.append({"row": row, "model": theirs["model"], "method": name + PAPER, "role": "paper",
                    **theirs[HEADERS].to_dict(), "Avg": theirs["Avg"], "Recovery %": theirs["Recovery %"],
                    DELTA: round(theirs["Avg"] - ref_paper, 1), "Val loss": None if ppl is None else math.log(ppl),
                    "Val PPL": ppl, "source": theirs["source"]})
    return pd.DataFrame(out, columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """The table in Markdown: scores with one decimal, the change from the reference signed with its interval in
    brackets, validation loss with three decimals, perplexity with two (in powers of ten from 1e5: an untrained
    row's can be astronomical)."""
    shown = df.astype({DELTA: object, "Val loss": object, "Val PPL": object})
    shown[DELTA] = [None if pd.isna(d) else f"{d:+.1f}" if pd.isna(lo) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                    for d, lo, hi in zip(df[DELTA], df[LOW], df[HIGH], strict=True)]
    shown["Val loss"] = [None if pd.isna(v) else f"{v:.3f}" for v in df["Val loss"]]
    shown["Val PPL"] = [None if pd.isna(v) else f"{v:.2e}" if v >= 1e5 else f"{v:.2f}" for v in df["Val PPL"]]
    return markdown_table(shown.drop(columns=["row", LOW, HIGH]))


def sentences(df: pd.DataFrame, reference: str) -> str:
    """Each ablation row's change of the average from the reference, ours (the paper's), and in how many rows the
    two changes have the same sign."""
    pairs = [(row, group) for row, group in df.groupby("row", sort=False) if row != reference
             and group["role"].iloc[0] == "ablation"]
    if not pairs:
        return ""
    parts, same, both = [], 0, 0
    for row, group in pairs:
        mine, theirs = group[DELTA].iloc[0], group[DELTA].iloc[1]
        parts.append(f"{row} {_signed(mine)} ({_signed(theirs)})")
        if pd.notna(mine) and pd.notna(theirs):
            both += 1
            same += _sign(mine) == _sign(theirs)
    text = (f"Change of the average from {reference}, ours (the paper's, from its Liger-GLA): " + "; ".join(parts)
            + f". Same sign as the paper's in {same} of {both} rows.")
    ours = pd.DataFrame([group.iloc[0] for _, group in pairs])
    paired = ours.dropna(subset=[LOW])
    if not paired.empty:
        apart = [f"{r.row} {_signed(r[DELTA])}" for _, r in paired.iterrows() if r[LOW] > 0 or r[HIGH] < 0]
        text += (f" Paired with {reference} on the same items, {len(apart)} of {len(paired)} rows differ beyond their "
                 f"{100 * LEVEL:g}% interval" + (f": {', '.join(apart)}." if apart else "."))
    unpaired = list(ours.loc[ours[LOW].isna(), "row"])
    if unpaired:
        text += f" Not paired (no per-item outcomes in both rows): {', '.join(unpaired)}."
    return text


def _sign(value: float) -> int:
    return int(value > 0) - int(value < 0)


def _signed(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:+.1f}"


def plot(df: pd.DataFrame, reference: str, out_png: Path, title: str) -> None:
    """Horizontal bars, two per ablation row: our change of the average from the reference (with its paired interval
    as an error bar where there is one) and the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in dict.fromkeys(df["row"]) if row != reference
            and df.loc[df["row"] == row, "role"].iloc[0] == "ablation"]
    fig, ax = plt.subplots(figsize=(7, 0.55 * max(len(rows), 1) + 1.5))
    y = range(len(rows))
    ours = f"ours (whiskers: {100 * LEVEL:g}% paired interval)" if df[LOW].notna().any() else "ours"
    for offset, role, label, color in ((-0.2, "ours", ours, "C0"), (0.2, "paper", "paper (Llama-3-8B)", "C1")):
        lines = [df.loc[(df["row"] == row) & ((df["role"] == "paper") == (role == "paper"))].iloc[0] for row in rows]
        drawn = [(i + offset, line) for i, line in zip(y, lines, strict=True) if pd.notna(line[DELTA])]  # none: no bar
        ax.barh([p for p, _ in drawn], [line[DELTA] for _, line in drawn], height=0.4, label=label, color=color)
        bars = [(p, line) for p, line in drawn if pd.notna(line[LOW])]
        if bars:
            ax.errorbar([line[DELTA] for _, line in bars], [p for p, _ in bars], fmt="none", ecolor="black",
                        elinewidth=0.8, capsize=2, xerr=[[line[DELTA] - line[LOW] for _, line in bars],
                                                         [line[HIGH] - line[DELTA] for _, line in bars]])
    ax.set_yticks(list(y), rows)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"average change from {reference} (points)")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)  # a long model or row name would run off the figure
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def write(model: str, ours: pd.DataFrame, paper: pd.DataFrame, ablations: Ablations, reference: str,
          summaries: Mapping[str, Path], out_dir: Path, plot_png: Path, paper_csv: Path,
          metrics: Mapping[str, Path] | None = None, paired: pd.DataFrame | None = None) -> list[str]:
    """`out_dir`/ablations.csv and .md and the plot; returns the report's section."""
    df = table(ours, paper, ablations, reference, summaries, paper_csv, metrics, paired)
    df.to_csv(out_dir / "ablations.csv", index=False)
    md = markdown(df)
    text = sentences(df, reference)
    (out_dir / "ablations.md").write_text(md + "\n" + text + "\n")
    plot(df, reference, plot_png, f"{model}: ablations, change of the 6-task average from {reference} "
                                  f"(paper: {ablations.paper_model})")
    return [f"## Ablations (each row beside the paper's on {ablations.paper_model}; values in %)", "", md,
            f"Each of our rows is followed by the paper row its `paper_row` names (config/paper_results.csv). "
            f"{DELTA}: the row's average minus {reference}'s (for the paper's rows, minus its "
            f"{ablations.rows[reference]} row); in brackets, for our rows, its {100 * LEVEL:g}% paired bootstrap "
            "interval over the same items (paired.md), when both rows recorded per-item outcomes. Val loss: the "
            "final validation loss of the row's LoRA fine-tune (nats; for a row not trained, its loss on the same "
            "validation chunks when its evaluation measured it), Val PPL its exp; the paper gives validation "
            "perplexity for its Table 12 rows only (its loss here is the log of that). The paper's averages are the "
            "means of its six tasks, as ours are (its printed averages differ for a few rows: see `source`).", "",
            text, ""]
