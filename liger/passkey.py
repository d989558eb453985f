"""Passkey retrieval: a random 5-digit key hidden at a chosen depth in neutral filler, the model asked to repeat it.

The prompt is built from separately tokenized pieces so its length is exact: the introduction (with the
tokenizer's special tokens), filler sentences repeated (the last one cut) to fill the length, the key sentence
inserted at the sentence boundary nearest to `depth` (0: right after the introduction, 1: right before the
question) and the question. The filler holds no digit, so the key appears once. The model answers by greedy
decoding through `generate`: a converted model's layers keep their constant-memory state (a Liger layer: the
recurrent state plus the window's last `window - 1` keys and values, liger/cache.py), the base model the
ordinary growing key/value cache. An answer is right when the first number it contains is the key.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from liger.cli_args import add_inference_flags, add_probe_parser
from liger.errors import LigerError
from liger.fileio import atomic_target, write_text_atomic
from liger.models import load_tokenizer

log = logging.getLogger(__name__)

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about it later.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it."
QUESTION = " What is the pass key? The pass key is"
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class PasskeyPrompt:
    input_ids: list[int]
    key: int
    depth: float  # asked for
    needle_at: int  # token index where the key sentence starts
    filler_tokens: int
    filler_before: int  # filler tokens before the key sentence; actual depth = filler_before / filler_tokens


def make_key(seed: int, length: int, depth: float) -> int:
    """The 5-digit key of one (seed, length, depth) cell: deterministic, different across cells."""
    return int(np.random.default_rng([seed, length, round(depth * 1000)]).integers(10_000, 100_000))


def make_prompt(tokenizer, length: int, depth: float, seed: int) -> PasskeyPrompt:
    """A prompt of exactly `length` tokens with the key at `depth` of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise LigerError(f"depth {depth}: must be between 0 and 1")
    key = make_key(seed, length, depth)

    def enc(text: str, special: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    intro, filler, needle, question = enc(INTRO, True), enc(FILLER), enc(NEEDLE.format(key=key)), enc(QUESTION)
    n_fill = length - len(intro) - len(needle) - len(question)
    if n_fill < len(filler):
        minimum = length - n_fill + len(filler)
        raise LigerError(f"passkey length {length}: too short for this tokenizer (at least {minimum} tokens)")
    haystack = (filler * (n_fill // len(filler) + 1))[:n_fill]
    boundaries = [*range(0, n_fill, len(filler)), n_fill]
    before = min(boundaries, key=lambda b: (abs(b - depth * n_fill), b))
    ids = intro + haystack[:before] + needle + haystack[before:] + question
    return PasskeyPrompt(ids, key, depth, len(intro) + before, n_fill, before)


def answer_is_key(text: str, key: int) -> bool:
    """The first number in the model's answer is the key."""
    found = re.search(r"\d+", text)
    return found is not None and found.group() == str(key)


def cache_kind(cache) -> str:
    """'liger' when every layer of a generate cache is a constant-memory Liger layer, else 'kv' (or 'mixed')."""
    from liger.cache import LigerCacheLayer

    kinds = {isinstance(layer, LigerCacheLayer) for layer in cache.layers}
    return "liger" if kinds == {True} else "kv" if kinds == {False} else "mixed"


def usable_lengths(lengths: Sequence[int], position_limit: int, new_tokens: int) -> list[int]:
    """Lengths capped so that prompt plus answer fit in the model's positions (duplicates dropped)."""
    cap = position_limit - new_tokens
    return sorted({min(int(n), cap) for n in lengths})


def run_passkey(
    model_dir: str | Path,
    *,
    lengths: Sequence[int] = LENGTHS,
    depths: Sequence[float] = DEPTHS,
    seeds: int = 5,
    new_tokens: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    layer_options: dict | None = None,
) -> pd.DataFrame:
    """One row per (length, depth, seed): the key, the model's answer and whether it is right."""
    from tqdm.auto import tqdm

    from liger.device import load_for_inference

    if seeds < 1 or new_tokens < 1 or not lengths or not depths:
        raise LigerError("passkey: give lengths and depths, seeds >= 1 and new_tokens >= 1")
    model, dev = load_for_inference(model_dir, device, dtype, layer_options)
    tokenizer = load_tokenizer(model_dir)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or max(lengths) + new_tokens)
    cells = [(n, d, s) for n in usable_lengths(lengths, limit, new_tokens) for d in depths for s in range(seeds)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for length, depth, seed in tqdm(cells, desc="passkey", disable=not progress):
        prompt = make_prompt(tokenizer, length, depth, seed)
        ids = torch.tensor([prompt.input_ids], device=dev)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=pad, return_dict_in_generate=True)  # fmt: skip
        answer = tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
        rows.append({"length": length, "prompt_tokens": ids.shape[1], "depth": depth,
                     "actual_depth": round(prompt.filler_before / prompt.filler_tokens, 4), "seed": seed,
                     "key": prompt.key, "answer": answer.strip(), "correct": answer_is_key(answer, prompt.key),
                     "cache": cache_kind(out.past_key_values)})  # fmt: skip
    return pd.DataFrame(rows)


def accuracy_by_length(df: pd.DataFrame) -> pd.Series:
    """Accuracy in % per length, over depths and seeds."""
    return (100 * df.groupby("length")["correct"].mean()).round(1)


def heatmap(df: pd.DataFrame, out_png: Path, title: str) -> None:
    """Accuracy (over seeds) per length (rows) and depth (columns), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = (100 * df.pivot_table(index="length", columns="depth", values="correct", aggfunc="mean")).round(0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.5 * grid.shape[0]))
    im = ax.imshow(grid.to_numpy(), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [f"{100 * d:.0f}%" for d in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(n) for n in grid.index])
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("depth of the key")
    ax.set_ylabel("prompt tokens")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy %")
    fig.tight_layout()
    with atomic_target(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def summary_table(per_method: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Accuracy % per method (rows) and length (columns)."""
    return pd.DataFrame({m: accuracy_by_length(df) for m, df in per_method.items()}).T.rename_axis("method")


def sentences(table: pd.DataFrame, window: int = 64) -> str:
    """Two or three sentences read off the accuracy table (methods x lengths)."""
    if table.empty:
        return ""
    longest = table.columns.max()
    text = []
    if "base" in table.index:
        text.append(f"The base model retrieves the key in {table.loc['base'].mean():.0f}% of prompts on average "
                    f"and {table.loc['base', longest]:.0f}% at {longest} tokens.")
    others = table.drop(index="base", errors="ignore")
    if not others.empty:
        best = others.mean(axis=1).idxmax()
        text.append(f"Of the other rows {best} does best ({others.loc[best].mean():.0f}% on average, "
                    f"{others.loc[best, longest]:.0f}% at {longest} tokens).")
        blind = [m for m in others.index if others.loc[m].max() == 0]
        if blind:
            text.append(f"{', '.join(blind)} never {'returns' if len(blind) == 1 else 'return'} the key at any "
                        f"length (every prompt is longer than the {window}-token window).")
    return " ".join(text)


def _cli(args: argparse.Namespace) -> int:
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    df = run_passkey(args.model, lengths=lengths, depths=depths, seeds=args.seeds, new_tokens=args.new_tokens,
                     device=args.device, dtype=args.dtype, layer_options=args.layer_options)
    write_text_atomic(args.out, df.to_csv(index=False))
    if args.plot:
        heatmap(df, args.plot, args.title or f"passkey retrieval: {args.model}")
    print(accuracy_by_length(df).to_string())
    print(f"{args.out}: written")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_probe_parser(sub, "passkey", "passkey retrieval accuracy per prompt length and key depth", __doc__)
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                   help="prompt lengths in tokens, capped at the model's position limit")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)), help="key depths, 0 (start) .. 1 (end)")
    p.add_argument("--seeds", type=int, default=5, help="prompts (keys) per length and depth")
    p.add_argument("--new-tokens", type=int, default=10, help="greedy decoding steps")
    add_inference_flags(p)
    p.add_argument("--out", required=True, type=Path, help="output CSV, one row per prompt")
    p.add_argument("--plot", type=Path, help="heatmap PNG (accuracy per length and depth)")
    p.add_argument("--title", help="heatmap title")
    p.set_defaults(func=_cli)
