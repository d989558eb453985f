"""Tables and the per-model report: our rows from metrics files, the paper's rows beside them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from liger import paired
from liger.errors import LigerError
from liger.pipeline import PAPER_TASKS, TASKS

HEADERS = {name: task.header for name, task in TASKS.items()}
COLUMNS = ["model", "method", "role", *HEADERS.values(), "Avg", "Avg w/o MMLU", "Recovery %",
           "Chance-corrected recovery %", "train tokens", "train stages", "source"]
CHANCE = "chance (from the data)"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise LigerError(f"{path}: missing; run the evaluate rule for it first") from e
    except json.JSONDecodeError as e:
        raise LigerError(f"{path}: not valid JSON ({e}); delete it and rerun its rule") from e


def role_of(method: str, controls: list[str]) -> str:
    return "base" if method == "base" else "control" if method in controls else "method"


def our_rows(model: str, methods: list[str], results: Path,
             controls: list[str] | None = None) -> tuple[pd.DataFrame, dict | None]:
    """One row per method from results/{model}/{method}/metrics.json (values in %), and the chance levels.

    `role` says what a row is: base, method, control (the rows that say what the window and the recurrence
    each do), chance, or paper.

    The chance levels (1 / number of choices, averaged over the evaluated items) come from the base row's
    metrics file, or the first one that has them; they are None when no file records them.
    """
    rows, chance, full_data = [], None, False
    for method in methods:
        metrics_file = results / model / method / "metrics.json"
        metrics = _read_json(metrics_file)
        row = {"model": model, "method": method, "role": role_of(method, controls or []), "source": str(metrics_file)}
        for task, header in HEADERS.items():
            value = metrics["paper_metrics"].get(task)
            row[header] = None if value is None else round(100 * value, 1)
        row["train tokens"], row["train stages"] = _train_tokens(results / model / method)
        rows.append(row)
        if chance is None and metrics.get("chance"):
            chance, full_data = metrics["chance"], metrics.get("limit") is None
    df = pd.DataFrame(rows)
    if chance is not None:
        chance_row = {"model": model, "method": CHANCE, "role": "chance",
                      "source": "1 / number of choices, mean over evaluated items"}
        chance_row |= {h: round(100 * chance[t], 1) if t in chance else None for t, h in HEADERS.items()}
        df = pd.concat([df, pd.DataFrame([chance_row])], ignore_index=True)
    return _with_averages(df, base="base" if "base" in methods else None), (chance if full_data else None)


def _train_tokens(folder: Path) -> tuple[int | None, str | None]:
    """Tokens trained over every stage of a row (LoLCATs: attention transfer + LoRA), and the split by stage with
    each stage's wall time where its summary records one."""
    stages = [(name, _read_json(path)) for name, path in (("attention transfer", folder / "transfer_summary.json"),
                                                          ("LoRA", folder / "train_summary.json")) if path.exists()]
    stages = [(name, s) for name, s in stages if s.get("tokens_trained")]
    if not stages:
        return None, None

    def stage(name: str, summary: dict) -> str:
        wall = summary.get("wall_time_s")
        return f"{name} {summary['tokens_trained'] / 1e6:.2f}M" + (f" in {wall / 60:.1f} min" if wall else "")

    return sum(s["tokens_trained"] for _, s in stages), " + ".join(stage(n, s) for n, s in stages)


def _with_averages(df: pd.DataFrame, base: str | None) -> pd.DataFrame:
    scores = df[list(HEADERS.values())]
    df["Avg"] = scores.mean(axis=1, skipna=False).round(1)
    df["Avg w/o MMLU"] = scores.drop(columns="MMLU").mean(axis=1, skipna=False).round(1)
    if base is not None:
        base_avg = df.loc[df["method"] == base, "Avg"].iloc[0]
        df["Recovery %"] = (100 * df["Avg"] / base_avg).round(1)
        chance = df.loc[df["method"] == CHANCE, "Avg"]
        if not chance.empty:
            c = chance.iloc[0]
            df["Chance-corrected recovery %"] = (100 * (df["Avg"] - c) / (base_avg - c)).round(1)
        df.loc[df["method"] == CHANCE, ["Recovery %", "Chance-corrected recovery %"]] = None
    return df.reindex(columns=COLUMNS)



def paper_rows(paper_name: str | None, paper_csv: Path, chance: dict | None = None) -> pd.DataFrame:
    """The paper's published rows for the same base model (config/paper_results.csv, cited per row).

    `chance`: our measured chance levels on the full benchmarks, for the chance-corrected recovery.
    """
    if not paper_name:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(paper_csv)
    df = df[df["model"] == paper_name]
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame({"model": paper_name, "method": df["method"] + " (paper)", "role": "paper",
                        "source": df["source"]})
    for task, header in HEADERS.items():
        out[header] = df[task].to_numpy()
    out["train tokens"] = (df["train_tokens"] * 1e9).to_numpy()  # the CSV gives billions
    if chance is not None:
        row = {"model": paper_name, "method": CHANCE, "role": "chance",
               "source": "our measurement on the same full benchmarks"}
        out = pd.concat([out, pd.DataFrame([row | {h: round(100 * chance[t], 1) for t, h in HEADERS.items()}])])
    base = out["method"].str.startswith("Base (Transformer)")
    return _with_averages(out.reset_index(drop=True), base=out.loc[base, "method"].iloc[0] if base.any() else None)


def markdown_table(df: pd.DataFrame, digits: int = 1) -> str:
    """A Markdown table of `df` (without its `source` column); floats with `digits` decimals, "-" for missing."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e5 else f"{v:.{digits}f}"
        return str(v)

    cols = [c for c in df.columns if c != "source"]
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def main_sentences(ours: pd.DataFrame, reference: str = "liger_gla") -> str:
    """Two or three sentences on our rows: the full method, the controls beside it, what the recurrence adds."""
    rows = ours[ours["role"].isin(["method", "control"])].set_index("method")
    if rows.empty or rows["Avg"].isna().all():
        return ""
    if reference not in rows.index or rows.loc[reference, "role"] != "method":
        methods = rows.index[rows["role"] == "method"]
        if methods.empty:
            return ""
        reference = methods[0]
    ref = rows.loc[reference]

    def recovery(r) -> str:
        cc = r.get("Chance-corrected recovery %")
        return (f"recovery {r['Recovery %']:.1f}%" + (f", chance-corrected {cc:.1f}%" if pd.notna(cc) else "")
                if pd.notna(r.get("Recovery %")) else "no base row to divide by")

    text = [f"{reference} averages {ref['Avg']:.1f} ({recovery(ref)})."]
    others = rows[(rows["role"] == "method") & (rows.index != reference)]
    if not others.empty:
        text.append("Other methods: " + "; ".join(f"{m} {r['Avg']:.1f} ({r['Avg'] - ref['Avg']:+.1f} vs {reference})"
                                                  for m, r in others.iterrows()) + ".")
    controls = rows[rows["role"] == "control"]
    if not controls.empty:
        text.append("Controls: " + "; ".join(f"{m} {r['Avg']:.1f} ({r['Avg'] - ref['Avg']:+.1f} vs {reference}, "
                                             f"{recovery(r)})" for m, r in controls.iterrows()) + ".")
    close = [m for m, r in rows.iterrows() if m != reference and abs(r["Avg"] - ref["Avg"]) <= 1]
    if "window_only" in rows.index:
        w = rows.loc["window_only"]
        text.append(f"Over the window alone the recurrence adds {ref['Avg'] - w['Avg']:+.1f} points on average and "
                    f"{ref['MMLU'] - w['MMLU']:+.1f} on MMLU (the one task whose prompts outrun the window).")
    text.append(f"Within 1 point of {reference}: {', '.join(close)}." if close
                else f"No other row is within 1 point of {reference}.")
    return " ".join(text)


def probe_sections(model: str, methods: list[str], results: Path, window: int = 64) -> list[str]:
    """Report sections for the probes whose files exist: coverage, passkey and loss by position.

    Also writes `results`/{model}/passkey.{csv,md} and position_loss.{csv,md} (methods x lengths / buckets),
    position_loss_roles.csv (the prompt/response split, `position_loss.role_table`) and the loss-by-position plot
    `results`/plots/{model}_position_loss.png.
    """
    from liger import coverage, passkey, position_loss

    out_dir, text = results / model, []
    cov = out_dir / "coverage.csv"
    if cov.exists():
        text += ["## Window coverage (request tokens: context + continuation, in this model's tokens)", "",
                 coverage.markdown(pd.read_csv(cov))]
    runs = {m: pd.read_csv(out_dir / m / "passkey.csv") for m in methods if (out_dir / m / "passkey.csv").exists()}
    if runs:
        table = passkey.summary_table(runs)
        table.to_csv(out_dir / "passkey.csv")
        md = markdown_table(table.reset_index()) + "\n" + passkey.sentences(table, window) + "\n"
        (out_dir / "passkey.md").write_text(md)
        text += ["## Passkey retrieval (accuracy % per prompt length, over key depths and seeds)", "", md,
                 f"Heatmaps per length and depth: {results / 'plots'}/{model}_<method>_passkey.png.", ""]
    files = {m: out_dir / m / "position_loss.json" for m in methods if (out_dir / m / "position_loss.json").exists()}
    if files:
        found = position_loss.load_results(files)
        table = position_loss.summary_table(found)
        table.to_csv(out_dir / "position_loss.csv")
        position_loss.role_table(found).to_csv(out_dir / "position_loss_roles.csv", index=False)
        md = (markdown_table(table.reset_index(), digits=3) + "\n" + position_loss.describe_all(found)
              + " " + position_loss.sentences(table) + "\n\n" + position_loss.role_markdown(found))
        (out_dir / "position_loss.md").write_text(md)
        position_loss.plot(found, results / "plots" / f"{model}_position_loss.png",
                           f"{model}: next-token loss by position (held-out instruction records)")
        text += ["## Loss by position (mean next-token loss in nats per position bucket)", "", md]
    return text


def write_model_report(model: str, methods: list[str], results: Path, paper_name: str | None,
                       paper_csv: Path, config_note: str = "", controls: list[str] | None = None,
                       window: int = 64, resamples: int = paired.RESAMPLES) -> Path:
    """results/{model}/main.csv, main.md, paired.csv, paired.md (`liger.paired`: differences from base and
    window_only with bootstrap intervals) and report.md (with the probes' sections when their files exist)."""
    ours, chance = our_rows(model, methods, results, controls)
    paper = paper_rows(paper_name, paper_csv, chance)
    out_dir = results / model
    table = pd.concat([ours, paper], ignore_index=True) if not paper.empty else ours
    table.to_csv(out_dir / "main.csv", index=False)
    (out_dir / "main.md").write_text(markdown_table(table))
    text = [f"# {model}", "", config_note, "",
            "## Main table (values in %; the paper's columns: PiQA acc, ARC-e acc, ARC-c acc_norm, "
            "HellaSwag acc_norm, WinoGrande acc, 0-shot; MMLU acc, 5-shot)", "", markdown_table(table),
            "Rows marked (paper) are the published numbers for the same base model (config/paper_results.csv); "
            "every other cell comes from the metrics file named in main.csv's `source` column. Recovery is the "
            "row's average over the base average; chance-corrected recovery is (row - chance) / (base - chance) "
            "on the averages, with the chance row computed from the evaluated items. Rows with role `control` "
            "say what each branch does alone: window_only (the window branch, fine-tuned like the methods), "
            "liger_gla_no_window (the recurrence alone), base_window (the base model restricted to the window, "
            "not trained), lolcats_sliding (LoLCATs' model, not retrained, scored with the 64-key sliding window it "
            "decodes with instead of the terraced one it was trained with). `train tokens` counts every training "
            "stage of a row (LoLCATs: attention transfer, then LoRA, as the paper's Table 2 counts 0.02B + 0.02B = "
            "0.04B); `train stages` splits it, with each stage's wall time in the run that trained it (other jobs "
            "may have shared its GPU).", "",
            main_sentences(ours), ""]
    metrics = {m: _read_json(out_dir / m / "metrics.json") for m in methods}
    roles = {m: role_of(m, controls or []) for m in methods}
    text += ["## Paired differences (bootstrap over the same items)", "",
             paired.write_tables(out_dir, model, metrics, roles, PAPER_TASKS, paper_csv, paper_name, resamples)]
    text += probe_sections(model, methods, results, window)
    plots = sorted((results / "plots").glob(f"{model}_*.png"))
    if plots:
        text += ["## Plots", ""] + [f"![{p.stem}](../plots/{p.name})" for p in plots] + [""]
    report = out_dir / "report.md"
    report.write_text("\n".join(text))
    return report


def write_tables(model_tables: list[Path], out_dir: Path) -> None:
    """`out_dir`/main.csv and .md: every model's main table stacked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.concat([pd.read_csv(p) for p in model_tables], ignore_index=True)
    table.to_csv(out_dir / "main.csv", index=False)
    (out_dir / "main.md").write_text(markdown_table(table))


def _cli(args: argparse.Namespace) -> int:
    if args.tables:
        write_tables(args.tables, args.out)
        print(f"{args.out}/main.csv")
        return 0
    controls = [m for m in (args.controls or "").split(",") if m]
    report = write_model_report(args.model, args.methods.split(","), args.results, args.paper_name,
                                args.paper_csv, args.note, controls=controls, window=args.window,
                                resamples=args.resamples)
    print(report)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a model's tables and report.md, or stack the models' tables")
    p.add_argument("--model", help="model name (results/{model}/...)")
    p.add_argument("--methods", help="comma-separated methods, base first")
    p.add_argument("--results", type=Path, default=Path("results"), help="the run's results folder")
    p.add_argument("--paper-name", help="the model's name in the paper CSV, if the paper reports it")
    p.add_argument("--paper-csv", type=Path, default=Path("config/paper_results.csv"))
    p.add_argument("--note", default="", help="a line under the title (config, data source)")
    p.add_argument("--controls", default="", help="comma-separated methods that are control rows")
    p.add_argument("--window", type=int, default=64, help="the methods' window (for the probes' sentences)")
    p.add_argument("--resamples", type=int, default=paired.RESAMPLES,
                   help=f"paired bootstrap resamples (default {paired.RESAMPLES:,})")
    p.add_argument("--tables", nargs="+", type=Path, help="stack these main.csv files into --out")
    p.add_argument("--out", type=Path, default=Path("results/tables"))
    p.set_defaults(func=_cli)
