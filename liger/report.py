"""Tables and the per-model report: our rows from metrics files, the paper's rows beside them.

The report rule hands `liger report` its files (`RowFiles`: each row's metrics, training summaries and probe
results, the coverage table) and the folder of its declared outputs (`OUTPUTS`); which rows are the base, the
controls, the reference method and the window-only control, and what each control shows, come from the config.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from liger import ablations as ablation_table
from liger import by_length, paired
from liger.errors import LigerError
from liger.fileio import read_json
from liger.markdown import markdown_table
from liger.paired import BASE
from liger.pipeline import PAPER_TASKS, ROW_FILES, STAGES, TASKS, Stage

HEADERS = {name: task.header for name, task in TASKS.items()}
COLUMNS = ["model", "method", "role", *HEADERS.values(), "Avg", "Avg w/o MMLU", "Recovery %",
           "Chance-corrected recovery %", "train tokens", "train stages", "source"]
CHANCE = "chance (from the data)"
# What `write_report` writes in the model's folder (the report rule declares each; the plot's path is given apart).
OUTPUTS = ("main.csv", "main.md", "paired.csv", "paired.md", *by_length.OUTPUTS, "passkey.csv", "passkey.md",
           "position_loss.csv", "position_loss.md", "position_loss_roles.csv", "report.md")


@dataclass
class RowFiles:
    """A model's files the report reads, each by row (in the table's order: `metrics`'s)."""

    metrics: dict[str, Path]
    train: dict[str, Path] = field(default_factory=dict)  # LoRA summaries (trained rows)
    transfer: dict[str, Path] = field(default_factory=dict)  # attention-transfer summaries (two-stage rows)
    passkey: dict[str, Path] = field(default_factory=dict)
    position_loss: dict[str, Path] = field(default_factory=dict)
    coverage: Path | None = None
    coverage_items: Path | None = None  # each item's longest request (liger.coverage), for liger.by_length

    @classmethod
    def from_paths(cls, metrics: Sequence[Path], train: Sequence[Path] = (), transfer: Sequence[Path] = (),
                   passkey: Sequence[Path] = (), position_loss: Sequence[Path] = (),
                   coverage: Path | None = None, coverage_items: Path | None = None) -> RowFiles:
        """The files a rule hands over, each in its row's folder (…/MODEL/ROW/FILE)."""
        def by_row(paths: Sequence[Path]) -> dict[str, Path]:
            return {Path(p).parent.name: Path(p) for p in paths}

        return cls(by_row(metrics), by_row(train), by_row(transfer), by_row(passkey), by_row(position_loss),
                   coverage, coverage_items)

    @classmethod
    def layout(cls, results: Path, model: str, methods: Sequence[str]) -> RowFiles:
        """The files under a run's results folder (results/RUN/MODEL/ROW/...) that exist, for callers without a
        rule."""
        return cls.in_folders({m: results / model for m in methods}, [results / model])

    @classmethod
    def in_folders(cls, rows: Mapping[str, Path], coverage_from: Sequence[Path]) -> RowFiles:
        """The files that exist of each row `m` in its folder `rows[m]` (laid out as results/RUN/MODEL), in `rows`'
        order, and the coverage tables of the first of `coverage_from` that has them."""
        def found(name: str) -> list[Path]:
            return [p for m, folder in rows.items() if (p := folder / m / name).exists()]

        from liger.coverage import items_path

        coverage = next((c for folder in coverage_from if (c := folder / "coverage.csv").exists()), None)
        items = items_path(coverage) if coverage is not None else None
        return cls.from_paths([folder / m / ROW_FILES["metrics"] for m, folder in rows.items()],
                              *(found(name) for name in (STAGES["lora"].summary, STAGES["transfer"].summary,
                                                         ROW_FILES["passkey"], ROW_FILES["position_loss"])),
                              coverage, items if items is not None and items.exists() else None)


def role_of(method: str, controls: list[str], base: str = BASE) -> str:
    return "base" if method == base else "control" if method in controls else "method"


def our_rows(model: str, files: RowFiles, controls: list[str] | None = None,
             base: str = BASE) -> tuple[pd.DataFrame, dict | None]:
    """One row per method from its metrics file (values in %), and the chance levels.

    `role` says what a row is: base, method, control (the rows that say what the window and the recurrence
    each do), chance, or paper.

    The chance levels (1 / number of choices, averaged over the evaluated items) come from the base row's
    metrics file, or the first one that has them; they are None when no file records them.
    """
    rows, chance, full_data = [], None, False
    for method, metrics_file in files.metrics.items():
        metrics = read_json(metrics_file, "evaluate")
        row = {"model": model, "method": method, "role": role_of(method, controls or [], base),
               "source": str(metrics_file)}
        for task, header in HEADERS.items():
            value = metrics["paper_metrics"].get(task)
            row[header] = None if value is None else round(100 * value, 1)
        row["train tokens"], row["train stages"] = _train_tokens(
            [(STAGES[stage], summaries[method]) for stage, summaries in (("transfer", files.transfer),
                                                                               ("lora", files.train))
             if method in summaries])
        rows.append(row)
        if chance is None and metrics.get("chance"):
            chance, full_data = metrics["chance"], metrics.get("limit") is None
    df = pd.DataFrame(rows)
    if chance is not None:
        chance_row = {"model": model, "method": CHANCE, "role": "chance",
                      "source": "1 / number of choices, mean over evaluated items"}
        chance_row |= {h: round(100 * chance[t], 1) if t in chance else None for t, h in HEADERS.items()}
        df = pd.concat([df, pd.DataFrame([chance_row])], ignore_index=True)
    return _with_averages(df, base=base if base in files.metrics else None), (chance if full_data else None)


def _train_tokens(summaries: list[tuple[Stage, Path]]) -> tuple[int | None, str | None]:
    """Tokens trained over every stage of a row (LoLCATs: attention transfer + LoRA), and the split by stage with
    each stage's wall time where its summary records one. `summaries`: (stage, summary file), in order."""
    stages = [(stage.label, read_json(path, stage.command)) for stage, path in summaries]
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


def pick_reference(reference: str | None, row_roles: Mapping[str, str]) -> str | None:
    """The method the report compares the others with: `reference` (the config's `report.reference`) when it is a
    method row here, else the first method row; None without one."""
    if reference is not None and row_roles.get(reference) == "method":
        return reference
    return next((m for m, role in row_roles.items() if role == "method"), None)


def main_sentences(ours: pd.DataFrame, reference: str | None = None, window_only: str | None = None) -> str:
    """Two or three sentences on our rows: the reference method (`pick_reference`), the controls beside it, what the
    recurrence adds over the window-only row (`report.window_only`)."""
    rows = ours[ours["role"].isin(["method", "control"])].set_index("method")
    reference = pick_reference(reference, dict(rows["role"]))
    if reference is None or rows["Avg"].isna().all():
        return ""
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
    if window_only is not None and window_only in rows.index:
        w = rows.loc[window_only]
        text.append(f"Over the window alone the recurrence adds {ref['Avg'] - w['Avg']:+.1f} points on average and "
                    f"{ref['MMLU'] - w['MMLU']:+.1f} on MMLU (the one task whose prompts outrun the window).")
    text.append(f"Within 1 point of {reference}: {', '.join(close)}." if close
                else f"No other row is within 1 point of {reference}.")
    return " ".join(text)


def probe_sections(model: str, files: RowFiles, out_dir: Path, plots: Path, window: int = 64) -> list[str]:
    """Report sections for the probes whose files are given: coverage, passkey and loss by position.

    Also writes `out_dir`/passkey.{csv,md} and position_loss.{csv,md} (methods x lengths / buckets),
    position_loss_roles.csv (the prompt/response split, `position_loss.role_table`) and the loss-by-position plot
    `plots`/{model}_position_loss.png.
    """
    from liger import coverage, passkey, position_loss

    text = []
    if files.coverage is not None:
        text += ["## Window coverage (request tokens: context + continuation, in this model's tokens)", "",
                 coverage.markdown(pd.read_csv(files.coverage))]
    runs = {m: pd.read_csv(path) for m, path in files.passkey.items()}
    if runs:
        table = passkey.summary_table(runs)
        table.to_csv(out_dir / "passkey.csv")
        md = markdown_table(table.reset_index()) + "\n" + passkey.sentences(table, window) + "\n"
        (out_dir / "passkey.md").write_text(md)
        text += ["## Passkey retrieval (accuracy % per prompt length, over key depths and seeds)", "", md,
                 f"Heatmaps per length and depth: {plots}/{model}_<method>_passkey.png.", ""]
    if files.position_loss:
        found = position_loss.load_results(files.position_loss)
        table = position_loss.summary_table(found)
        table.to_csv(out_dir / "position_loss.csv")
        position_loss.role_table(found).to_csv(out_dir / "position_loss_roles.csv", index=False)
        md = (markdown_table(table.reset_index(), digits=3) + "\n" + position_loss.describe_all(found)
              + " " + position_loss.sentences(table) + "\n\n" + position_loss.role_markdown(found))
        (out_dir / "position_loss.md").write_text(md)
        position_loss.plot(found, plots / f"{model}_position_loss.png",
                           f"{model}: next-token loss by position (held-out instruction records)")
        text += ["## Loss by position (mean next-token loss in nats per position bucket)", "", md]
    return text


@dataclass
class Roles:
    """What the config says of the rows (its `control` rows, `about` texts and `report` section)."""

    controls: list[str] = field(default_factory=list)
    base: str = BASE  # the unconverted model's row: recoveries and paired differences are from it
    reference: str | None = None  # the method the others are compared with (`pick_reference`)
    window_only: str | None = None  # the control with the window branch alone
    about: dict[str, str] = field(default_factory=dict)  # row -> what it shows, in the table's legend


def controls_legend(controls: Sequence[str], about: Mapping[str, str]) -> str:
    """The legend's sentence on the control rows, from the config's `about` of each ("" without controls)."""
    if not controls:
        return ""
    rows = ", ".join(f"{m} ({about[m]})" if about.get(m) else m for m in controls)
    return f"Rows with role `control` say what each branch does alone: {rows}. "


def write_model_report(model: str, methods: list[str], results: Path, paper_name: str | None,
                       paper_csv: Path, config_note: str = "", controls: list[str] | None = None,
                       window: int = 64, resamples: int = paired.RESAMPLES, roles: Roles | None = None,
                       ablations: ablation_table.Ablations | None = None) -> Path:
    """`write_report` on the files of `methods` under a run's results folder (results/RUN/MODEL/ROW/...), writing
    into results/RUN/MODEL and results/RUN/plots."""
    roles = roles or Roles(controls=controls or [])
    return write_report(model, RowFiles.layout(results, model, methods), results / model, results / "plots",
                        paper_name, paper_csv, config_note, roles, window, resamples, ablations)


def by_length_plot(plots: Path, model: str) -> Path:
    """Where the accuracy-by-length plot goes: `plots`/MODEL_by_length.png."""
    return plots / f"{model}_by_length.png"


def ablation_plot(plots: Path, model: str) -> Path:
    """Where the ablation plot goes: `plots`/MODEL_ablations.png."""
    return plots / f"{model}_ablations.png"


def write_report(model: str, files: RowFiles, out_dir: Path, plots: Path, paper_name: str | None, paper_csv: Path,
                 config_note: str = "", roles: Roles | None = None, window: int = 64,
                 resamples: int = paired.RESAMPLES, ablations: ablation_table.Ablations | None = None) -> Path:
    """`out_dir`/main.csv, main.md, paired.csv, paired.md (`liger.paired`: differences from the base and the
    window-only row with bootstrap intervals), by_length.csv and .md and the plot `by_length_plot(plots, model)`
    when the coverage items are given (`liger.by_length`), the probes' tables when their files are given, and
    report.md (`OUTPUTS`); the loss-by-position plot in `plots`. With `ablations` (the config's `paper_row`s) also
    ablations.csv and .md (`liger.ablations.OUTPUTS`) and the plot `ablation_plot(plots, model)`."""
    if resamples < 1:  # the paired tables' and the by-length tables' bootstrap
        raise LigerError(f"--resamples {resamples}: must be >= 1")
    roles = roles or Roles()
    controls = [m for m in files.metrics if m in roles.controls]
    ours, chance = our_rows(model, files, controls, roles.base)
    paper = paper_rows(paper_name, paper_csv, chance)
    table = pd.concat([ours, paper], ignore_index=True) if not paper.empty else ours
    table.to_csv(out_dir / "main.csv", index=False)
    (out_dir / "main.md").write_text(markdown_table(table))
    text = [f"# {model}", "", config_note, "",
            "## Main table (values in %; the paper's columns: PiQA acc, ARC-e acc, ARC-c acc_norm, "
            "HellaSwag acc_norm, WinoGrande acc, 0-shot; MMLU acc, 5-shot)", "", markdown_table(table),
            "Rows marked (paper) are the published numbers for the same base model (config/paper_results.csv); "
            "every other cell comes from the metrics file named in main.csv's `source` column. Recovery is the "
            "row's average over the base average; chance-corrected recovery is (row - chance) / (base - chance) "
            "on the averages, with the chance row computed from the evaluated items. "
            + controls_legend(controls, roles.about) + "`train tokens` counts every training "
            "stage of a row (LoLCATs: attention transfer, then LoRA, as the paper's Table 2 counts 0.02B + 0.02B = "
            "0.04B); `train stages` splits it, with each stage's wall time in the run that trained it (other jobs "
            "may have shared its GPU).", "",
            main_sentences(ours, roles.reference, roles.window_only), ""]
    items = {m: paired.read_items(read_json(path, "evaluate"), path) for m, path in files.metrics.items()}
    row_roles = {m: role_of(m, controls, roles.base) for m in files.metrics}
    reference = pick_reference(roles.reference, row_roles)
    paired_text, differences = paired.write_tables(out_dir, model, items, row_roles, PAPER_TASKS, paper_csv,
                                                   paper_name, resamples, reference=reference,
                                                   window_only=roles.window_only)
    text += ["## Paired differences (bootstrap over the same items)", "", paired_text]
    if files.coverage is not None and files.coverage_items is not None:
        from liger.coverage import window_of

        table = pd.read_csv(files.coverage)
        text += ["## Accuracy by request length (paired with the window-only row)", "",
                 by_length.write(out_dir, files.coverage_items, table, items, row_roles, window_of(table) or window,
                                 roles.window_only, by_length_plot(plots, model),
                                 f"{model}: accuracy by the items' request length", resamples)]
    if ablations is not None and ablations.rows:
        text += ablation_table.write(model, ours, paper_rows(ablations.paper_model, paper_csv), ablations, reference,
                                     files.train, out_dir, ablation_plot(plots, model), paper_csv, files.metrics,
                                     differences)
    text += probe_sections(model, files, out_dir, plots, window)
    images = sorted(plots.glob(f"{model}_*.png"))
    if images:
        text += ["## Plots", ""] + [f"![{p.stem}](../plots/{p.name})" for p in images] + [""]
    report = out_dir / "report.md"
    report.write_text("\n".join(text))
    return report


def write_tables(model_tables: list[Path], out_dir: Path) -> None:
    """`out_dir`/main.csv and .md: every model's main table stacked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.concat([pd.read_csv(p) for p in model_tables], ignore_index=True)
    table.to_csv(out_dir / "main.csv", index=False)
    (out_dir / "main.md").write_text(markdown_table(table))


def from_config(args: argparse.Namespace) -> RowFiles:
    """`--configfile` and `--rows`: each of the config's rows read from the first `--rows` folder (laid out as
    results/RUN/MODEL) that has its metrics file, the roles and window set from the config
    (`liger.pipeline.report_roles`), the model named by the first folder; returns the rows' files."""
    from liger.pipeline import load_config, report_roles

    if args.configfile is None or args.out_dir is None:
        raise LigerError("liger report --rows: give --configfile (it says each row's role) and --out-dir too")
    config = load_config(args.configfile)
    model = args.model or args.rows[0].name
    if model not in config["models"]:
        raise LigerError(f"{args.rows[0]}: {model!r} is not a model of {args.configfile} "
                         f"({', '.join(config['models'])}); give a folder results/RUN/MODEL, or --model")
    for key, value in report_roles(config).items():
        if value is not None:
            setattr(args, key, int(value) if key == "window" else value)
    args.model, args.paper_name = model, args.paper_name or config["models"][model]["paper_name"]
    args.plot = args.plot or args.out_dir.parent / "plots" / f"{model}_position_loss.png"
    args.note = args.note or f"Config: {args.configfile}. Rows read from {', '.join(map(str, args.rows))}."
    where = {m: next((folder for folder in args.rows if (folder / m / ROW_FILES["metrics"]).exists()), None)
             for m in config["methods"]}
    if not any(where.values()):
        raise LigerError(f"none of {args.configfile}'s rows has a metrics file in {', '.join(map(str, args.rows))} "
                         f"(ROW/{ROW_FILES['metrics']}); give the folders its run wrote, results/RUN/{model}")
    return RowFiles.in_folders({m: folder for m, folder in where.items() if folder is not None}, args.rows)


def _cli(args: argparse.Namespace) -> int:
    if args.tables:
        write_tables(args.tables, args.out)
        print(f"{args.out}/main.csv")
        return 0
    if args.rows:
        files = from_config(args)
    elif not args.metrics or not args.out_dir or not args.plot:
        raise LigerError("liger report: give --metrics, --out-dir and --plot, or --configfile, --rows and --out-dir "
                         "(or --tables)")
    else:
        files = RowFiles.from_paths(args.metrics, args.train, args.transfer, args.passkey, args.position_loss,
                                    args.coverage, args.coverage_items)
    if files.coverage_items is not None and files.coverage is None:
        raise LigerError("liger report: --coverage-items needs --coverage (the table with the documents' digests)")
    roles = Roles(controls=[m for m in (args.controls or "").split(",") if m], base=args.base,
                  reference=args.reference or None,
                  window_only=args.window_only or None, about=json.loads(args.about))
    ablations = ablation_table.Ablations(json.loads(args.ablations), args.ablation_paper_model) \
        if args.ablations else None
    for folder in (args.out_dir, args.plot.parent):
        folder.mkdir(parents=True, exist_ok=True)
    report = write_report(args.model, files, args.out_dir, args.plot.parent, args.paper_name, args.paper_csv,
                          args.note, roles, window=args.window, resamples=args.resamples, ablations=ablations)
    print(report)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a model's tables and report.md, or stack the models' tables")
    p.add_argument("--model", help="model name")
    p.add_argument("--metrics", nargs="+", type=Path, help="each row's metrics.json (…/MODEL/ROW/)")
    p.add_argument("--train", nargs="*", type=Path, default=[], help="the trained rows' LoRA summaries")
    p.add_argument("--transfer", nargs="*", type=Path, default=[], help="the two-stage rows' transfer summaries")
    p.add_argument("--passkey", nargs="*", type=Path, default=[], help="the rows' passkey results")
    p.add_argument("--position-loss", nargs="*", type=Path, default=[], help="the rows' loss-by-position results")
    p.add_argument("--coverage", type=Path, help="the model's coverage table")
    p.add_argument("--coverage-items", type=Path,
                   help="its items table (coverage_items.csv): write by_length.csv, .md and MODEL_by_length.png beside "
                        "--plot, accuracy by request length")
    p.add_argument("--out-dir", type=Path, help=f"where to write {', '.join(OUTPUTS)}")
    p.add_argument("--plot", type=Path, help="the loss-by-position plot to write (other plots beside it are shown)")
    p.add_argument("--paper-name", help="the model's name in the paper CSV, if the paper reports it")
    p.add_argument("--paper-csv", type=Path, default=Path("config/paper_results.csv"))
    p.add_argument("--note", default="", help="a line under the title (config, data source)")
    p.add_argument("--controls", default="", help="comma-separated methods that are control rows")
    p.add_argument("--base", default=BASE, help="the unconverted model's row (recoveries and differences from it)")
    p.add_argument("--reference", default="", help="the method row the sentences compare the others with")
    p.add_argument("--window-only", default="", help="the control row with the window branch alone")
    p.add_argument("--about", default="{}", help="JSON {row: what it shows}, for the controls' legend")
    p.add_argument("--ablations", default="", help="JSON {row: its paper_row}, in the table's order: write "
                   f"{', '.join(ablation_table.OUTPUTS)} and the plot MODEL_ablations.png beside --plot")
    p.add_argument("--ablation-paper-model", default="Llama-3-8B", help="the paper model the paper rows are of")
    p.add_argument("--window", type=int, default=64, help="the methods' window (for the probes' sentences)")
    p.add_argument("--resamples", type=int, default=paired.RESAMPLES,
                   help=f"paired bootstrap resamples (default {paired.RESAMPLES:,})")
    p.add_argument("--configfile", type=Path, help="with --rows: the config whose rows these are; the roles, "
                   "window, ablation rows and paper name are taken from it (the flags above need not be given)")
    p.add_argument("--rows", nargs="+", type=Path, help="with --configfile: folders laid out as results/RUN/MODEL "
                   "(e.g. a published run's); each of the config's rows is read from the first that has its "
                   "metrics.json, and its other files from there; --plot defaults to --out-dir/../plots/")
    p.add_argument("--tables", nargs="+", type=Path, help="stack these main.csv files into --out")
    p.add_argument("--out", type=Path, default=Path("results/tables"))
    p.set_defaults(func=_cli)
