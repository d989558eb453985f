"""Loss by position: mean next-token loss per position bucket on long sequences of held-out text, over all
predicted tokens and split into prompt and response tokens.

The text is the validation records of the instruction data (the first `n_val` records, never trained on),
each rendered as in training (Alpaca prompt, response, EOS) and concatenated into one stream. `sequences`
windows of `seq_len` tokens start at evenly spaced record boundaries of that stream, read circularly: they
overlap (and the output says so) when sequences x seq_len exceeds the stream. The loss at position p is the
loss of predicting token p + 1 from tokens 0..p; positions fall in buckets [0, 64), [64, 128), [128, 256), ...
doubling up to the end. The token-weighted mean of the bucket means is the overall mean loss.

A predicted token's role is that of the token being predicted (p + 1) under training's target mask
(`liger.data.tokenize_record`): the response and its EOS are `response`, the Alpaca prompt is `prompt`. The
prompt repeats the template of earlier records, which a model can copy from its context.

Output (`position-loss --out X.json`, and X.csv beside it): the JSON holds the run's settings and `buckets`,
one record per bucket and a last `all` record, with the columns
`bucket, start, end, tokens, mean_loss` (all predicted tokens) and
`prompt_tokens, prompt_loss, response_tokens, response_loss` (the same positions by role; a loss is null, an
empty CSV cell, where the bucket holds no token of that role). The CSV has one row per record. Files written
before the role split lack the four role columns (`is_split`); readers of the first five are unaffected.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from liger.cli_args import add_inference_flags, add_probe_parser
from liger.errors import LigerError
from liger.fileio import atomic_target, check_not_input, read_json, write_json_atomic, write_text_atomic
from liger.markdown import markdown_table
from liger.models import load_tokenizer

log = logging.getLogger(__name__)

ROLES = ("prompt", "response")
NOT_SPLIT = "not split: rerun the probe"


def heldout_stream(tokenizer, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The records rendered and tokenized as in training, concatenated: ids, target mask (True on response + EOS)
    and the start of each record."""
    from liger.data import tokenize_record

    ids, mask, starts = [], [], []
    for record in records:
        starts.append(len(ids))
        record_ids, record_mask = tokenize_record(tokenizer, record)
        ids += record_ids
        mask += record_mask
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool), starts


def window_index(length: int, starts: Sequence[int], seq_len: int, n: int) -> np.ndarray:
    """(n, seq_len) stream positions of `n` windows starting at evenly spaced record starts, read circularly."""
    if length == 0 or n < 1 or seq_len < 2:
        raise LigerError("position loss: need a non-empty stream, at least one sequence and seq_len >= 2")
    picks = [starts[int(i * len(starts) / n)] for i in range(n)] if len(starts) >= n else [
        int(i * length / n) for i in range(n)]  # fmt: skip
    return (np.asarray(picks)[:, None] + np.arange(seq_len)[None, :]) % length


def make_sequences(stream: np.ndarray, starts: Sequence[int], seq_len: int, n: int) -> np.ndarray:
    """`n` sequences of `seq_len` tokens starting at evenly spaced record starts, the stream read circularly."""
    return stream[window_index(len(stream), starts, seq_len, n)]


def bucket_edges(seq_len: int, first: int = 64) -> list[int]:
    """[0, first, 2 first, 4 first, ...] ending at the number of predicted positions, seq_len - 1."""
    end = seq_len - 1
    edges = [0]
    edge = first
    while edge < end:
        edges.append(edge)
        edge *= 2
    return edges + [end]


@torch.no_grad()
def token_losses(model, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-position next-token loss (float32) of (B, T) ids: (B, T - 1); logits made `chunk` positions at a time."""
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    head = model.get_output_embeddings()
    out = []
    for s in range(0, ids.shape[1] - 1, chunk):
        logits = head(hidden[:, s : min(s + chunk, ids.shape[1] - 1)]).float()
        target = ids[:, s + 1 : s + 1 + logits.shape[1]]
        out.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none"))
    return torch.cat(out, dim=1)


def bucket_table(losses: np.ndarray, edges: Sequence[int], response: np.ndarray | None = None) -> pd.DataFrame:
    """Mean loss per position bucket of (N, T - 1) per-position losses, and an `all` row; with `response`, the
    (N, T - 1) roles of the predicted tokens (True: response), also the count and mean loss of each role."""
    spans = [(f"{lo}-{hi}", lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    rows = []
    for name, lo, hi in [*spans, ("all", 0, int(edges[-1]))]:
        part = losses[:, lo:hi]
        row = {"bucket": name, "start": lo, "end": hi, "tokens": int(part.size), "mean_loss": float(part.mean())}
        if response is not None:
            is_response = response[:, lo:hi]
            for role, values in (("prompt", part[~is_response]), ("response", part[is_response])):
                row[f"{role}_tokens"] = int(values.size)
                row[f"{role}_loss"] = float(values.mean()) if values.size else None
        rows.append(row)
    return pd.DataFrame(rows)


def position_loss(
    model_dir: str | Path,
    source: str,
    *,
    n_val: int = 200,
    seq_len: int = 8192,
    sequences: int = 8,
    first_bucket: int = 64,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    layer_options: dict | None = None,
) -> dict:
    """Bucketed next-token loss of the model in `model_dir` on held-out instruction records; a JSON-able dict."""
    from tqdm.auto import tqdm

    from liger.device import load_for_inference
    from liger.records import load_records

    if n_val < 1 or sequences < 1 or first_bucket < 1:
        raise LigerError("position loss: n_val, sequences and first_bucket must be >= 1")
    records = load_records(source)[:n_val]
    tokenizer = load_tokenizer(model_dir)
    stream, target, starts = heldout_stream(tokenizer, records)
    model, dev = load_for_inference(model_dir, device, dtype, layer_options)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and seq_len > limit:
        log.info("seq_len %d capped at the model's position limit %d", seq_len, limit)
        seq_len = int(limit)
    idx = window_index(len(stream), starts, seq_len, sequences)
    seqs, response = stream[idx], target[idx][:, 1:]  # position p predicts token p + 1: its role
    losses = np.concatenate([
        token_losses(model, torch.as_tensor(row[None], device=dev)).cpu().numpy()
        for row in tqdm(seqs, desc="position loss", disable=not progress)
    ])  # fmt: skip
    edges = bucket_edges(seq_len, first_bucket)
    table = bucket_table(losses, edges, response)
    return {
        "model": str(model_dir),
        "source": str(source),
        "records": len(records),
        "stream_tokens": int(len(stream)),
        "sequences": int(sequences),
        "seq_len": int(seq_len),
        "tokens_read": int(seqs.size),
        "overlapping": bool(seqs.size > len(stream)),
        "device": dev,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "buckets": _records(table),
    }


def _records(table: pd.DataFrame) -> list[dict]:
    """The table's rows as JSON-able dicts, NaN (a role absent from a bucket) as None."""
    return [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
            for row in table.to_dict(orient="records")]  # fmt: skip


def describe(result: dict) -> str:
    """One line saying what the numbers were measured on."""
    overlap = " (the sequences overlap: the stream is read circularly)" if result["overlapping"] else ""
    where = f" ({result['device']}, {result['dtype']})" if "device" in result and "dtype" in result else ""
    return (f"{result['sequences']} sequences x {result['seq_len']} tokens{where} from {result['records']} held-out "
            f"records ({result['stream_tokens']} distinct tokens){overlap}.")


def describe_all(results: dict[str, dict]) -> str:
    """`describe` of the rows: one line when they share it, else one per group of rows that do."""
    groups: dict[str, list[str]] = {}
    for method, r in results.items():
        groups.setdefault(describe(r), []).append(method)
    if len(groups) == 1:
        return next(iter(groups))
    return " ".join(f"{', '.join(methods)}: {text}" for text, methods in groups.items())


def load_results(paths: dict[str, Path]) -> dict[str, dict]:
    return {method: read_json(path, "position_loss") for method, path in paths.items()}


def summary_table(results: dict[str, dict]) -> pd.DataFrame:
    """Mean loss per method (rows) and bucket (columns)."""
    return pd.DataFrame({m: {b["bucket"]: round(b["mean_loss"], 3) for b in r["buckets"]}
                         for m, r in results.items()}).T.rename_axis("method")  # fmt: skip


def sentences(table: pd.DataFrame) -> str:
    """Two or three sentences read off the bucket table (methods x buckets)."""
    buckets = [c for c in table.columns if c != "all"]
    if table.empty or len(buckets) < 2:
        return ""
    first, last = buckets[0], buckets[-1]
    drop = {m: table.loc[m, first] - table.loc[m, last] for m in table.index}
    text = []
    if "base" in table.index:
        text.append(f"The base model's loss goes from {table.loc['base', first]:.2f} at positions {first} to "
                    f"{table.loc['base', last]:.2f} at positions {last} ({-drop['base']:+.2f} nats).")
    others = [m for m in table.index if m != "base"]
    if others:
        text.append("From the first bucket to the last the loss changes by " +
                    ", ".join(f"{-drop[m]:+.2f} nats for {m}" for m in others) + ".")  # fmt: skip
        if "base" in table.index:
            text.append(f"In the last bucket ({last}) the rows stand " + ", ".join(
                f"{table.loc[m, last] - table.loc['base', last]:+.2f}" + f" ({m})" for m in others)
                + " nats from the base.")  # fmt: skip
        text.append("Each row's lowest bucket: " + ", ".join(
            f"{m} {table.loc[m, buckets].astype(float).idxmin()} ({table.loc[m, buckets].min():.2f})"
            for m in table.index) + ".")  # fmt: skip
    return " ".join(text)


def is_split(result: dict) -> bool:
    """Whether a result has the prompt/response split (files written before it do not)."""
    return all(f"{role}_loss" in b for b in result["buckets"] for role in ROLES)


def role_overview(results: dict[str, dict]) -> pd.DataFrame:
    """Per method (rows): the mean loss over all positions on all, prompt and response tokens, and each role's
    token count; a result without the split says NOT_SPLIT in its role-loss cells."""
    rows = {}
    for method, r in results.items():
        total = next(b for b in r["buckets"] if b["bucket"] == "all")
        split = is_split(r)
        rows[method] = {"all": total["mean_loss"], **{role: total[f"{role}_loss"] if split else NOT_SPLIT
                                                      for role in ROLES},
                        **{f"{role} tokens": total.get(f"{role}_tokens") for role in ROLES}}  # fmt: skip
    return pd.DataFrame(list(rows.values()), index=list(rows), dtype=object).rename_axis("method")


def role_buckets(results: dict[str, dict], role: str) -> pd.DataFrame:
    """Mean loss on `role` tokens per split method (rows) and bucket (columns, `all` last)."""
    return pd.DataFrame({m: {b["bucket"]: b[f"{role}_loss"] for b in r["buckets"]}
                         for m, r in results.items() if is_split(r)}, dtype=object).T.rename_axis("method")  # fmt: skip


def role_table(results: dict[str, dict]) -> pd.DataFrame:
    """Tidy per-role losses of the split methods: method, role, bucket (`all` included), start, end, tokens,
    mean_loss (None where the bucket holds no token of the role)."""
    rows = [{"method": m, "role": role, "bucket": b["bucket"], "start": b["start"], "end": b["end"],
             "tokens": b[f"{role}_tokens"], "mean_loss": b[f"{role}_loss"]}
            for m, r in results.items() if is_split(r) for role in ROLES for b in r["buckets"]]  # fmt: skip
    return pd.DataFrame(rows, columns=["method", "role", "bucket", "start", "end", "tokens", "mean_loss"])


def role_sentences(overview: pd.DataFrame) -> str:
    """One sentence on the prompt and response losses of the split rows (against the base when it is split)."""
    split = overview[overview["prompt"] != NOT_SPLIT]
    if split.empty:
        return ""

    def value(m: str, role: str) -> str:
        v = split.loc[m, role]
        if v is None:
            return "-"
        base = split.loc["base", role] if "base" in split.index and m != "base" else None
        return f"{v:.2f}" + (f" ({v - base:+.2f} from the base)" if base is not None else "")

    return ("Mean loss on prompt vs response tokens over all positions: "
            + "; ".join(f"{m} {value(m, 'prompt')} vs {value(m, 'response')}" for m in split.index) + ".")


def role_markdown(results: dict[str, dict]) -> str:
    """The report's prompt/response part: the overall table, a bucket table per role (with its token counts when
    every split row has the same), a sentence, and the rows to rerun."""

    overview = role_overview(results)
    text = ["### Prompt and response tokens", "",
            "Split by the role of the predicted token (training's target mask: the response and its EOS are "
            "targets, the Alpaca prompt is not); mean loss over all positions:", "",
            markdown_table(overview.reset_index(), digits=3)]  # fmt: skip
    for role in ROLES:
        table = role_buckets(results, role)
        if table.empty:
            continue
        counts = {tuple(b[f"{role}_tokens"] for b in r["buckets"]) for r in results.values() if is_split(r)}
        if len(counts) == 1:
            table.loc["tokens"] = list(counts.pop())
        text += [f"{role.capitalize()} tokens, mean loss per position bucket:", "",
                 markdown_table(table.reset_index(), digits=3)]  # fmt: skip
    unsplit = [m for m, r in results.items() if not is_split(r)]
    text.append(" ".join(filter(None, [role_sentences(overview),
                                       f"{', '.join(unsplit)}: {NOT_SPLIT}." if unsplit else ""])))  # fmt: skip
    return "\n".join(text) + "\n"


def plot(results: dict[str, dict], out_png: Path, title: str) -> None:
    """Three panels (all, prompt and response tokens), one line per method: mean loss against the bucket's middle
    position (log scale); a result without the role split is drawn in the first panel only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True, sharey=True)
    for ax, key, name in zip(axes, ("mean_loss", "prompt_loss", "response_loss"),
                             ("all tokens", "prompt tokens", "response tokens"), strict=True):  # fmt: skip
        missing = []
        for i, (method, r) in enumerate(results.items()):
            buckets = [b for b in r["buckets"] if b["bucket"] != "all"]
            if not all(key in b for b in buckets):
                missing.append(method)
                continue
            points = [((b["start"] + b["end"]) / 2, b[key]) for b in buckets if b[key] is not None]
            if not points:
                continue
            ax.plot(*zip(*points, strict=True), marker="o", label=method, color=f"C{i}",
                    linestyle="--" if method == "base" else "-")  # fmt: skip
        if missing:
            ax.text(0.02, 0.98, textwrap.fill(f"{NOT_SPLIT}: {', '.join(missing)}", 70), transform=ax.transAxes,
                    fontsize=7, va="top")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position (bucket middle)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean next-token loss (nats)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_target(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _cli(args: argparse.Namespace) -> int:
    check_not_input(args.out, {"--source": args.source, "--model": args.model})
    result = position_loss(args.model, args.source, n_val=args.n_val, seq_len=args.seq_len,
                           sequences=args.sequences, first_bucket=args.first_bucket, device=args.device,
                           dtype=args.dtype, layer_options=args.layer_options)  # fmt: skip
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".csv"), pd.DataFrame(result["buckets"]).to_csv(index=False))
    print(pd.DataFrame(result["buckets"]).to_string(index=False))
    print(describe(result))
    print(f"{args.out}: written")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_probe_parser(sub, "position-loss", "mean next-token loss per position bucket on held-out long sequences",
                         __doc__)
    p.add_argument("--source", required=True, help="instruction data (as prepare-data --source)")
    p.add_argument("--n-val", type=int, default=200, help="held-out leading records (as prepare-data)")
    p.add_argument("--seq-len", type=int, default=8192, help="sequence length (capped at the position limit)")
    p.add_argument("--sequences", type=int, default=8, help="number of sequences")
    p.add_argument("--first-bucket", type=int, default=64, help="end of the first bucket; later ones double")
    add_inference_flags(p)
    p.add_argument("--out", required=True, type=Path, help="output JSON (a CSV of the buckets beside it)")
    p.set_defaults(func=_cli)
