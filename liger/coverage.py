"""Window coverage: how long each benchmark's requests are in a model's tokens, and how many outrun the window.

A log-likelihood request is lm-eval's (context, continuation) pair, built by lm-eval itself from the same task
configs `liger evaluate` runs (MMLU with its few-shot context). The model reads the tokens of
context + continuation but the last: the prediction of the last continuation token sits at input position
L - 2 (L = tokens of context + continuation) and the window branch there sees positions L - 2 - window ..
L - 2. So a request outruns the window when L - 2 > window, i.e. when some scored prediction cannot see the
first token through the window; an item outruns it when its longest request does. Only on those items can
the recurrent branch see anything the window does not.

Beside the table, `coverage_items.csv` gives each item's longest request in the order `liger evaluate` records the
items' outcomes (`liger.paired`), and the table's `docs_sha256` column the digest of each task's documents, so
`liger.by_length` can split each row's accuracy by request length on exactly the evaluated items.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from liger.cli_args import add_probe_parser
from liger.errors import LigerError
from liger.fileio import write_text_atomic
from liger.markdown import markdown_table
from liger.models import load_tokenizer
from liger.pipeline import PAPER_TASKS, TASKS

log = logging.getLogger(__name__)

COLUMNS = ["task", "shots", "items", "requests", "tokens_median", "tokens_p90", "tokens_max", "tokens_mean"]
ITEM_COLUMNS = ["task", "leaf", "doc_id", "tokens"]  # coverage_items.csv: tokens = the item's longest request
DIGEST = "docs_sha256"


def items_path(table: Path) -> Path:
    """coverage_items.csv beside the coverage table `table`."""
    return table.with_name(f"{table.stem}_items.csv")


def window_of(df: pd.DataFrame) -> int | None:
    """The smallest window a coverage table was computed for (None: none)."""
    found = [int(c.removeprefix("items beyond window ").removesuffix(" %")) for c in df.columns
             if c.startswith("items beyond window")]
    return min(found) if found else None


def reach(tokens: np.ndarray) -> np.ndarray:
    """The input position of a request's last scored prediction (L - 2 for L tokens): beyond a window when > it."""
    return tokens - 2


def beyond_column(window: int) -> str:
    return f"items beyond window {window} %"


def request_lengths(tokenizer, requests: Sequence[tuple[str, str]]) -> list[int]:
    """Tokens of context + continuation per request, encoded as lm-eval's HFLM encodes the pair.

    lm-eval moves the context's trailing spaces to the continuation and splits one encoding of the
    concatenation, so the count is that of the concatenated string (with the tokenizer's special tokens,
    none when the string already starts with the BOS text, as HFLM does).
    """
    strings = [context + continuation for context, continuation in requests]
    bos = tokenizer.bos_token or tokenizer.eos_token
    plain = [i for i, s in enumerate(strings) if not (bos and s.startswith(bos))]
    prefixed = [i for i in range(len(strings)) if i not in set(plain)]
    lengths = [0] * len(strings)
    for idx, special in ((plain, True), (prefixed, False)):
        if idx:
            enc = tokenizer([strings[i] for i in idx], add_special_tokens=special)["input_ids"]
            for i, ids in zip(idx, enc, strict=True):
                lengths[i] = len(ids)
    return lengths


def summarize(task: str, shots: int, item_lengths: dict, windows: Sequence[int]) -> dict:
    """One table row from {item key: [request lengths]}: request-length statistics and the share beyond each window."""
    requests = np.array([n for lengths in item_lengths.values() for n in lengths])
    longest = np.array([max(lengths) for lengths in item_lengths.values()])
    row = {"task": task, "shots": shots, "items": len(longest), "requests": len(requests),
           "tokens_median": float(np.median(requests)), "tokens_p90": float(np.percentile(requests, 90)),
           "tokens_max": int(requests.max()), "tokens_mean": round(float(requests.mean()), 1)}  # fmt: skip
    for w in windows:
        row[beyond_column(w)] = round(100 * float(np.mean(reach(longest) > w)), 1)
    return row


def coverage(
    model_dir: str | Path,
    *,
    tasks: str | Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    windows: Sequence[int] = (64,),
    limit: int | None = None,
    num_fewshot_mmlu: int = TASKS["mmlu"].shots,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The coverage table for the tokenizer in `model_dir` (one row per task, see the module docstring; its
    `docs_sha256` column digests each task's documents as `liger.paired` does), and the items table
    (`ITEM_COLUMNS`: each item's longest request, in the order of the items' recorded outcomes).

    `tasks`, `data_dir`, `limit` (MMLU: ceil(limit/57) per subject), `num_fewshot_mmlu` and `seed` (the
    few-shot sampler's) mean what they mean for `liger evaluate`, so the requests are the evaluated ones.
    """
    from liger.evaluate import check_tasks
    from liger.paired import docs_sha256
    from liger.tasks.loading import check_data, leaf_task_names, loaded_tasks
    from liger.tasks.utils import MMLU_SUBJECTS

    task_list = check_tasks(tasks if tasks is not None else PAPER_TASKS)
    windows = sorted({int(w) for w in windows})
    if not windows or windows[0] < 0:
        raise LigerError(f"windows {windows}: give at least one window >= 0")
    if limit is not None and limit < 1:
        raise LigerError(f"--limit {limit}: must be a positive number of items")
    tokenizer = load_tokenizer(model_dir)
    if data_dir is not None:
        check_data(data_dir, task_list)
    rows, item_rows = [], []
    with loaded_tasks(task_list, data_dir) as (_, _, leaves):
        for task in task_list:
            shots = num_fewshot_mmlu if task == "mmlu" else TASKS[task].shots
            task_limit = math.ceil(limit / len(MMLU_SUBJECTS)) if limit and task == "mmlu" else limit
            keys, requests, order, docs = [], [], [], []  # order: items as outcomes are recorded
            for name in leaf_task_names(task, data_dir is not None):
                leaf = leaves[name]
                leaf.set_config(key="num_fewshot", value=shots)
                leaf.set_fewshot_seed(seed=seed)
                leaf.build_all_requests(limit=task_limit, rank=0, world_size=1)
                leaf_docs = {}
                for inst in leaf.instances:
                    keys.append((name, inst.doc_id))
                    requests.append(inst.args)
                    leaf_docs[inst.doc_id] = inst.doc
                ids = sorted(leaf_docs)
                order += [(name, d) for d in ids]
                docs += [leaf_docs[d] for d in ids]
            items: dict = {}
            for key, n in zip(keys, request_lengths(tokenizer, requests), strict=True):
                items.setdefault(key, []).append(n)
            rows.append(summarize(task, shots, items, windows) | {DIGEST: docs_sha256(docs)})
            item_rows += [(task, leaf, doc_id, max(items[leaf, doc_id])) for leaf, doc_id in order]
            log.info("coverage %s: %d items, %d requests", task, len(items), len(requests))
    summary = pd.DataFrame(rows, columns=COLUMNS + [beyond_column(w) for w in windows] + [DIGEST])
    return summary, pd.DataFrame(item_rows, columns=ITEM_COLUMNS)


def sentences(df: pd.DataFrame) -> str:
    """Two or three sentences read off the coverage table."""
    cols = [c for c in df.columns if c.startswith("items beyond window")]
    if df.empty or not cols:
        return ""
    col = cols[0]
    window = col.removeprefix("items beyond window ").removesuffix(" %")
    top = df.sort_values(col, ascending=False).iloc[0]
    text = [f"With a {window}-token window, {top['task']} ({int(top['shots'])}-shot) has the most items that "
            f"outrun it: {top[col]:.1f}% (median request {top['tokens_median']:.0f} tokens, p90 "
            f"{top['tokens_p90']:.0f}, max {top['tokens_max']})."]
    rest = df[df["task"] != top["task"]]
    if not rest.empty:
        lo, hi = rest.loc[rest[col].idxmin()], rest.loc[rest[col].idxmax()]
        text.append(f"On the other tasks the share runs from {lo[col]:.1f}% ({lo['task']}) to {hi[col]:.1f}% "
                    f"({hi['task']}, median request {hi['tokens_median']:.0f} tokens).")
    inside = df[df[col] == 0]["task"].tolist()
    if inside:
        text.append(f"Every item of {', '.join(inside)} fits in the window, so there the window branch is full "
                    "attention and the recurrence can add nothing the window lacks.")
    else:
        text.append("Only on items beyond the window can the recurrent branch see tokens that the window does not.")
    return " ".join(text)


def markdown(df: pd.DataFrame) -> str:
    """The table (without the documents' digests) and its sentences."""
    return markdown_table(df.drop(columns=DIGEST, errors="ignore")) + "\n" + sentences(df) + "\n"


def _cli(args: argparse.Namespace) -> int:
    windows = [int(w) for w in str(args.windows).split(",") if w.strip()]
    df, items = coverage(args.model, tasks=args.tasks, data_dir=args.data_dir, windows=windows, limit=args.limit,
                         num_fewshot_mmlu=args.num_fewshot_mmlu, seed=args.seed)
    write_text_atomic(args.out, df.to_csv(index=False))
    md = args.out.with_suffix(".md")
    write_text_atomic(md, markdown(df))
    write_text_atomic(items_path(args.out), items.to_csv(index=False))
    print(df.drop(columns=DIGEST).to_string(index=False))
    print(f"{args.out}, {md}, {items_path(args.out)}: written")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_probe_parser(sub, "coverage", "request lengths per benchmark in a model's tokens; share beyond the window",
                         __doc__, model_help="model folder (its tokenizer is used)")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated paper tasks")
    p.add_argument("--data-dir", type=Path, help="offline mirrors folder; default: lm-eval's hub datasets")
    p.add_argument("--windows", default="64", help="comma-separated window sizes (default 64)")
    p.add_argument("--limit", type=int, help="at most N items per task (MMLU: ceil(N/57) per subject)")
    p.add_argument("--num-fewshot-mmlu", type=int, default=TASKS["mmlu"].shots)
    p.add_argument("--seed", type=int, default=0, help="few-shot sampler seed (as evaluate)")
    p.add_argument("--out", required=True, type=Path,
                   help="output CSV; its Markdown twin and NAME_items.csv, the items table, are written beside it")
    p.set_defaults(func=_cli)
