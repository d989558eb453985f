"""Loss by position: mean next-token loss per position bucket on long sequences of held-out text.

The text is the validation records of the instruction data (the first `n_val` records, never trained on),
each rendered as in training (Alpaca prompt, response, EOS) and concatenated into one stream. `sequences`
windows of `seq_len` tokens start at evenly spaced record boundaries of that stream, read circularly: they
overlap (and the output says so) when sequences x seq_len exceeds the stream. The loss at position p is the
loss of predicting token p + 1 from tokens 0..p; positions fall in buckets [0, 64), [64, 128), [128, 256), ...
doubling up to the end. The token-weighted mean of the bucket means is the overall mean loss.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from liger.convert import add_layer_options_arg
from liger.errors import LigerError
from liger.fileio import atomic_target, check_not_input, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def heldout_stream(tokenizer, records: Sequence[dict]) -> tuple[np.ndarray, list[int]]:
    """The records rendered and tokenized as in training, concatenated; and the start of each record."""
    from liger.data import tokenize_record

    ids, starts = [], []
    for record in records:
        starts.append(len(ids))
        ids += tokenize_record(tokenizer, record)[0]
    return np.asarray(ids, dtype=np.int64), starts


def make_sequences(stream: np.ndarray, starts: Sequence[int], seq_len: int, n: int) -> np.ndarray:
    """`n` sequences of `seq_len` tokens starting at evenly spaced record starts, the stream read circularly."""
    if len(stream) == 0 or n < 1 or seq_len < 2:
        raise LigerError("position loss: need a non-empty stream, at least one sequence and seq_len >= 2")
    picks = [starts[int(i * len(starts) / n)] for i in range(n)] if len(starts) >= n else [
        int(i * len(stream) / n) for i in range(n)]  # fmt: skip
    idx = (np.asarray(picks)[:, None] + np.arange(seq_len)[None, :]) % len(stream)
    return stream[idx]


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


def bucket_table(losses: np.ndarray, edges: Sequence[int]) -> pd.DataFrame:
    """Mean loss per position bucket of (N, T - 1) per-position losses, and an `all` row."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = losses[:, lo:hi]
        rows.append({"bucket": f"{lo}-{hi}", "start": lo, "end": hi, "tokens": int(part.size),
                     "mean_loss": float(part.mean())})  # fmt: skip
    rows.append({"bucket": "all", "start": 0, "end": int(edges[-1]), "tokens": int(losses.size),
                 "mean_loss": float(losses.mean())})  # fmt: skip
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
    from transformers import AutoTokenizer

    from liger.data import load_records
    from liger.device import load_for_inference

    if n_val < 1 or sequences < 1 or first_bucket < 1:
        raise LigerError("position loss: n_val, sequences and first_bucket must be >= 1")
    records = load_records(source)[:n_val]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stream, starts = heldout_stream(tokenizer, records)
    model, dev = load_for_inference(model_dir, device, dtype, layer_options)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and seq_len > limit:
        log.info("seq_len %d capped at the model's position limit %d", seq_len, limit)
        seq_len = int(limit)
    seqs = make_sequences(stream, starts, seq_len, sequences)
    losses = np.concatenate([
        token_losses(model, torch.as_tensor(row[None], device=dev)).cpu().numpy()
        for row in tqdm(seqs, desc="position loss", disable=not progress)
    ])  # fmt: skip
    edges = bucket_edges(seq_len, first_bucket)
    table = bucket_table(losses, edges)
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
        "buckets": table.to_dict(orient="records"),
    }


def describe(result: dict) -> str:
    """One line saying what the numbers were measured on."""
    overlap = " (the sequences overlap: the stream is read circularly)" if result["overlapping"] else ""
    return (f"{result['sequences']} sequences x {result['seq_len']} tokens from {result['records']} held-out "
            f"records ({result['stream_tokens']} distinct tokens){overlap}.")


def load_results(paths: dict[str, Path]) -> dict[str, dict]:
    out = {}
    for method, path in paths.items():
        try:
            out[method] = json.loads(Path(path).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise LigerError(f"{path}: missing or not JSON ({e}); rerun the position_loss rule") from e
    return out


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


def plot(results: dict[str, dict], out_png: Path, title: str) -> None:
    """One line per method: mean loss against the bucket's first position (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, r in results.items():
        buckets = [b for b in r["buckets"] if b["bucket"] != "all"]
        x = [(b["start"] + b["end"]) / 2 for b in buckets]
        ax.plot(x, [b["mean_loss"] for b in buckets], marker="o", label=method,
                linestyle="--" if method == "base" else "-")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position (bucket middle)")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
    p = sub.add_parser("position-loss", help="mean next-token loss per position bucket on held-out long sequences",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="saved model folder (base or Liger)")
    p.add_argument("--source", required=True, help="instruction data (as prepare-data --source)")
    p.add_argument("--n-val", type=int, default=200, help="held-out leading records (as prepare-data)")
    p.add_argument("--seq-len", type=int, default=8192, help="sequence length (capped at the position limit)")
    p.add_argument("--sequences", type=int, default=8, help="number of sequences")
    p.add_argument("--first-bucket", type=int, default=64, help="end of the first bucket; later ones double")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    add_layer_options_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output JSON (a CSV of the buckets beside it)")
    p.set_defaults(func=_cli)
