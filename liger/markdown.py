"""Markdown tables of the results (the report, the paired differences, the probes, the coverage)."""

from __future__ import annotations

import pandas as pd


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


def benchmark_record(title: str, tables: dict[str, pd.DataFrame], device: str, command: list[str],
                     digits: int = 2) -> str:
    """A benchmark's output as Markdown, for the README's numbers to come from: the title, the device, the package
    versions, the UTC date and the command that ran, then each table under its heading."""
    from datetime import UTC, datetime

    from liger.provenance import versions

    v = versions("torch", "transformers", "peft", "triton", "flash-linear-attention")
    lines = [f"# {title}", "",
             f"Device: {device}. Versions: {', '.join(f'{k} {x}' for k, x in v.items())}. "
             f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.", "", f"    {' '.join(command)}", ""]
    for heading, df in tables.items():
        lines += [f"## {heading}", "", markdown_table(df, digits)]
    return "\n".join(lines)
