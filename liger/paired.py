"""Per-item outcomes of the paper metrics, and the paired bootstrap of two rows scored on the same items.

`liger.evaluate` stores each task's items in its metrics entry (`record`): `items = {"order", "outcomes",
"docs_sha256"}`, where `outcomes` has one character per item, "1" when lm-eval's own per-document value of the
task's paper metric is 1 (acc or acc_norm), in the order `order` names (`ITEM_ORDER`: doc_id; MMLU by subject in
alphabetical order, then doc_id), and `docs_sha256` hashes the processed documents in that order. Two rows are
paired on a task only when their `docs_sha256` agree (same data, same limit).

`write_tables` (called by `liger report`) gives each row's difference from `base`, from the config's window-only
control (`report.window_only`) and from its reference method (`report.reference`), in points, on the six-task
average and on MMLU, with a percentile interval from a paired bootstrap; and it tests the paper's claim that the
reference method gains on MMLU over the window alone.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from liger.errors import LigerError
from liger.markdown import markdown_table

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
BASE = "base"  # the untouched model's row, every row's first reference
ITEM_ORDER = {"mmlu": "subject (alphabetical), then doc_id"}  # other tasks: "doc_id"
NO_ITEMS = "no per-item outcomes recorded: rerun the evaluation"


# ----------------------------------------------------------------------------------------- per-item outcomes


def record(task: str, metric: str, leaf_samples: Sequence[Sequence[Mapping]]) -> dict[str, str]:
    """A task's `items` entry from lm-eval's logged samples (`log_samples=True`), one list per leaf task in order
    (MMLU: the 57 subjects alphabetically). Each sample's `metric` value must be 0 or 1."""
    docs, bits = [], []
    for samples in leaf_samples:
        ordered = sorted(samples, key=lambda s: s["doc_id"])
        if len({s["doc_id"] for s in ordered}) != len(ordered):
            raise LigerError(f"task {task}: lm-eval logged a document more than once (several filters?)")
        for s in ordered:
            value = s[metric]
            if value not in (0, 1):
                raise LigerError(f"task {task}: {metric} of doc {s['doc_id']} is {value!r}, not 0 or 1")
            bits.append("1" if value else "0")
            docs.append(s["doc"])
    order = ITEM_ORDER.get(task, "doc_id")
    return {"order": order, "outcomes": "".join(bits), "docs_sha256": docs_sha256(docs)}


def docs_sha256(docs: Iterable[Mapping]) -> str:
    """The digest of a task's processed documents in item order: what tells two lists of items apart."""
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return digest.hexdigest()


def read_items(metrics: Mapping, where: str | Path) -> dict[str, tuple[str, np.ndarray]]:
    """task -> (docs_sha256, outcomes as 0/1 uint8) for the tasks of a metrics report that record items.

    A malformed entry is a LigerError naming `where` (the metrics file) and the key.
    """
    out = {}
    for task, entry in (metrics.get("tasks") or {}).items():
        items = entry.get("items")
        if items is None:
            continue
        key = f"{where}: tasks.{task}.items"
        outcomes, docs = items.get("outcomes"), items.get("docs_sha256")
        if not isinstance(outcomes, str) or not outcomes or set(outcomes) - {"0", "1"}:
            raise LigerError(f"{key}.outcomes: not a string of 0s and 1s; rerun the evaluation")
        if not isinstance(docs, str):
            raise LigerError(f"{key}.docs_sha256: missing; rerun the evaluation")
        if entry.get("n") is not None and entry["n"] != len(outcomes):
            raise LigerError(f"{key}.outcomes: {len(outcomes)} items where n is {entry['n']}; rerun the evaluation")
        out[task] = (docs, np.frombuffer(outcomes.encode(), dtype=np.uint8) - ord("0"))
    return out


# ----------------------------------------------------------------------------------------- paired bootstrap


def resampled_difference(row: np.ndarray, ref: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` draws of mean(row - ref) over the n items resampled with replacement, the same indices for both.

    With 0/1 outcomes a resample changes the difference only through how many drawn items have row 1, ref 0
    (k+) and row 0, ref 1 (k-): (k+, k-, rest) ~ Multinomial(n; n+/n, n-/n, n0/n), drawn directly, so a resample
    costs O(1), not O(n). The difference is (k+ - k-) / n.
    """
    n = len(row)
    if n != len(ref) or n == 0:
        raise ValueError(f"paired rows need the same items: {n} vs {len(ref)}")
    d = row.astype(np.int8) - ref.astype(np.int8)
    up, down = int((d > 0).sum()), int((d < 0).sum())
    counts = rng.multinomial(n, [up / n, down / n, (n - up - down) / n], size=resamples)
    return (counts[:, 0] - counts[:, 1]) / n


def task_rng(seed: int, task: str) -> np.random.Generator:
    """The generator of one task's resamples: fixed by the seed and the task's name alone."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def paired_interval(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], resamples: int = RESAMPLES,
                    seed: int = SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(difference, low, high) in points of the mean over tasks of the accuracy difference (row - ref), `pairs`
    being task -> (row outcomes, ref outcomes) on the same items; each task resampled over its own items; the
    interval is the bootstrap's `level` percentile interval."""
    draws, point = np.zeros(resamples), 0.0
    for task, (row, ref) in pairs.items():
        draws += resampled_difference(row, ref, resamples, task_rng(seed, task))
        point += float(row.mean()) - float(ref.mean())
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(100 * draws / len(pairs), [tail, 100 - tail])
    return 100 * point / len(pairs), float(low), float(high)


def _pairs(row: Mapping, ref: Mapping, tasks: Sequence[str], reference: str) -> tuple[dict, str]:
    """task -> (row, ref) outcomes on the same items, or a note saying why the two rows cannot be paired."""
    missing = [t for t in tasks if t not in row or t not in ref]
    differ = [t for t in tasks if t not in missing and row[t][0] != ref[t][0]]
    notes = ([f"no items of {', '.join(missing)} in both rows"] if missing else []) + (
        [f"not the same items as {reference} on {', '.join(differ)} (another data source or limit)"] if differ else [])
    return ({}, "; ".join(notes)) if notes else ({t: (row[t][1], ref[t][1]) for t in tasks}, "")


def differences(items: Mapping[str, Mapping], roles: Mapping[str, str], tasks: Sequence[str],
                resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
                references: Sequence[str] = (BASE,)) -> pd.DataFrame:
    """One line per row, reference (those of `references` present) and measure: the difference in points with its
    interval, or a note. Measures: `Avg`, the mean over `tasks`, and `MMLU`. `items`: method -> `read_items` (empty:
    none recorded); `roles`: method -> role."""
    measures = {"Avg": tuple(tasks), "MMLU": ("mmlu",)}
    lines = []
    for method, row in items.items():
        for reference in (r for r in references if r in items and r != method):
            for measure, measured in measures.items():
                line = {"method": method, "role": roles.get(method, ""), "reference": reference, "measure": measure,
                        "difference": None, "low": None, "high": None, "items": None, "note": ""}
                if not row:
                    line["note"] = NO_ITEMS
                elif not items[reference]:
                    line["note"] = f"{reference}: {NO_ITEMS}"
                else:
                    pairs, line["note"] = _pairs(row, items[reference], measured, reference)
                    if pairs:
                        diff, low, high = paired_interval(pairs, resamples, seed, level)
                        line |= {"difference": diff, "low": low, "high": high,
                                 "items": sum(len(r) for r, _ in pairs.values())}
                lines.append(line)
    columns = ["method", "role", "reference", "measure", "difference", "low", "high", "items", "note"]
    return pd.DataFrame(lines, columns=columns).astype({"items": "Int64"})


# ----------------------------------------------------------------------------------------- the report's part


def paper_recurrence_gain(paper_csv: Path, reference: str, window_only: str, prefer: str | None = None) -> dict | None:
    """The paper's MMLU gain of the reference method over the window alone: {"model", "reference", "window_only"}
    from its rows whose `config_method` is `reference` and `window_only` (our rows' names), of the model `prefer` if
    it has both, else the first that does. None if no model has both."""
    paper = pd.read_csv(paper_csv)
    if "config_method" not in paper.columns:
        raise LigerError(f"{paper_csv}: no config_method column (our method name of each paper row)")
    found = {}
    for model, rows in paper.groupby("model", sort=False):
        by = rows.dropna(subset=["config_method"]).drop_duplicates("config_method").set_index("config_method")
        if {reference, window_only} <= set(by.index):
            found[model] = {"model": model, "reference": float(by.loc[reference, "mmlu"]),
                            "window_only": float(by.loc[window_only, "mmlu"])}
    if not found:
        return None
    return found.get(prefer) or next(iter(found.values()))


def _interval(line: pd.Series) -> str:
    if pd.isna(line["difference"]):
        return "-"
    return f"{line['difference']:+.1f} [{line['low']:+.1f}, {line['high']:+.1f}]"


def markdown(table: pd.DataFrame, references: Sequence[str] = (BASE,)) -> str:
    """One line per row: each (reference, measure) as `difference [low, high]`, and the row's notes (those of the
    average, whose tasks include MMLU)."""
    if table.empty:
        return f"No row to compare with {' or '.join(references)}.\n"
    present = set(zip(table["reference"], table["measure"], strict=True))
    keys = [(r, m) for r in references for m in dict.fromkeys(table["measure"]) if (r, m) in present]
    header = ["row", "role", *(f"{m} - {r}" for r, m in keys), "note"]
    lines = []
    for method, rows in table.groupby("method", sort=False):
        cells = {(r["reference"], r["measure"]): _interval(r) for _, r in rows.iterrows()}
        notes = "; ".join(dict.fromkeys(n for n in rows.loc[rows["measure"] == "Avg", "note"] if n))
        lines.append([method, rows["role"].iloc[0], *(cells.get(k, "-") for k in keys), notes])
    return markdown_table(pd.DataFrame(lines, columns=header))


def sentences(table: pd.DataFrame, method_rows: Sequence[str], claim: dict | None, model: str,
              window_only: str | None, level: float = LEVEL) -> str:
    """Whether the interval of (method row - the window-only row `window_only`) on MMLU excludes 0, against the
    paper's claim (`paper_recurrence_gain`): every method pairs a linear recurrence with a window."""
    gain = claim["reference"] - claim["window_only"] if claim else None
    text = []
    if claim:
        text.append(f"The paper's claim at {claim['model']}: the recurrence adds {gain:+.1f} MMLU points over the "
                    f"window alone ({claim['reference']:.1f} vs {claim['window_only']:.1f}; "
                    "config/paper_results.csv).")
    if window_only is None:
        return " ".join([*text, f"No window-only row in the config (report.window_only), so {model} cannot test it."])
    lines = table[(table["reference"] == window_only) & (table["measure"] == "MMLU")
                  & table["method"].isin(method_rows)].set_index("method")
    if window_only not in set(table["reference"]):
        return " ".join([*text, f"No {window_only} row here, so {model} cannot test it."])
    if lines.empty:
        return " ".join([*text, f"No method row beside {window_only} here, so {model} cannot test it."])
    for method, line in lines.iterrows():
        if pd.isna(line["difference"]):
            text.append(f"{method} - {window_only} on MMLU: not computed ({line['note']}).")
            continue
        where = (f"lies above 0: {model} shows a gain" if line["low"] > 0 else
                 f"lies below 0: the window alone scores higher at {model}" if line["high"] < 0 else
                 f"includes 0: {model} shows no measurable gain")
        if gain is not None:
            where += "; the paper's {:+.1f} lies {}".format(
                gain, "inside it" if line["low"] <= gain <= line["high"] else "above it" if gain > line["high"]
                else "below it")
        text.append(f"{method} - {window_only} on MMLU: {_interval(line)} points ({100 * level:g}% interval), which "
                    f"{where}.")
    return " ".join(text)


def write_tables(out_dir: Path, model: str, items: Mapping[str, Mapping], roles: Mapping[str, str],
                 tasks: Sequence[str], paper_csv: Path, paper_name: str | None = None, resamples: int = RESAMPLES,
                 seed: int = SEED, *, reference: str | None = None,
                 window_only: str | None = None) -> tuple[str, pd.DataFrame]:
    """out_dir/paired.csv and paired.md from each row's outcomes (`items`: row -> `read_items`): every row's
    difference from the base, the window-only row and the reference method; `tasks`: the six the average runs over;
    `reference`, `window_only`: the config's rows of those roles (`report`); `resamples` >= 1 (`liger.report` checks
    it). Returns the text of paired.md and the differences (`differences`), which the ablation table also shows."""
    base = next((m for m, role in roles.items() if role == "base"), BASE)
    references = tuple(dict.fromkeys(r for r in (base, window_only, reference) if r))
    table = differences(items, roles, tasks, resamples, seed, references=references)
    table.assign(resamples=resamples, seed=seed, level=LEVEL).to_csv(out_dir / "paired.csv", index=False)
    claim = paper_recurrence_gain(paper_csv, reference, window_only, paper_name) if reference and window_only else None
    method_rows = [m for m in items if roles.get(m) == "method"]
    text = (f"Row minus reference, in points: the six-task average (each task's items resampled, the same indices "
            f"for both rows) and MMLU, with the {100 * LEVEL:g}% percentile interval of a paired bootstrap "
            f"({resamples:,} resamples, seed {seed}).\n\n" + markdown(table, references) + "\n"
            + sentences(table, method_rows, claim, model, window_only) + "\n")
    (out_dir / "paired.md").write_text(text)
    return text, table
