"""What a converted layer's gates keep: of what each token writes into a key/value head's recurrent state, the share
the next step keeps,

    r = sum_d phi(k)_d exp(g_d) / sum_d phi(k)_d

over the key dimensions d, where phi(k) are the token's keys as written (Liger-GLA: the softmax feature map; HGRN2:
1 - exp(g)) and g the per-dimension log decays of the layer's gate. A write fades as r^t, so 1 / (1 - r) is its
memory in tokens; r = 1 (the gate `none`) forgets nothing. Measured on held-out text (a prepare-data folder's
validation chunks), per layer: the mean and median r, the share of writes remembered for 100 tokens or more
(r >= 0.99), and the median and 90th percentile of the memory.

It shows how a conversion starts: the gate pooled from k decays least in exactly the dimensions where the softmax
feature map writes most (both grow with k_d), so a Liger-GLA conversion can start close to linear attention without
a gate (SmolLM2-135M does, where a gate pooled from q or v forgets within tens of tokens:
docs/method.md#what-the-gate-keeps-at-conversion). Covers the GLA-family layers (GLA, HGRN2 and their ablations);
GSA's slots and LoLCATs (no gate) are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from liger.cli_args import add_inference_flags, add_probe_parser, json_object_arg
from liger.errors import LigerError
from liger.fileio import check_not_input, write_text_atomic
from liger.markdown import markdown_table

LONG = 0.99  # r at which a write is remembered for 100 tokens (1 / (1 - r))
COLUMNS = ["layer", "writes", "mean", "median", f"share r >= {LONG}", "median memory", "p90 memory"]


def retention(attn: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """r of each token and key/value head, (B, T, kv heads), in float32 (float64 for float64 input), for a
    GLA-family layer (`liger.layers.liger.GLAAttention`) given its input hidden states."""
    from liger.layers.liger import GLAAttention

    if not isinstance(attn, GLAAttention):
        raise LigerError(f"{type(attn).__name__}: retention covers the GLA-family layers (liger_gla, liger_hgrn2), "
                         "whose state is per key dimension")
    q, k, v = attn.project(hidden_states)
    g = attn.log_decay(attn.gate_input(q, k, v))
    written = attn.recurrence_keys(k, g).to(torch.float64 if k.dtype == torch.float64 else torch.float32)
    if g is None:
        return torch.ones(written.shape[:3], dtype=written.dtype, device=written.device)
    return (written * g.exp()).sum(-1) / written.sum(-1)


def summary(r: torch.Tensor | np.ndarray, layer: str) -> dict:
    """One row of the table from the r of many writes."""
    r = np.asarray(r, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        memory = np.where(r < 1.0, 1.0 / (1.0 - np.minimum(r, 1.0)), np.inf)  # r = 1: never forgotten
        p90 = np.nan_to_num(np.percentile(memory, 90), nan=np.inf)  # interpolated between two infs: inf
    return {"layer": layer, "writes": r.size, "mean": float(r.mean()), "median": float(np.median(r)),
            f"share r >= {LONG}": float((r >= LONG).mean()), "median memory": float(np.median(memory)),
            "p90 memory": float(p90)}


@torch.no_grad()
def retention_table(model: torch.nn.Module, input_ids: torch.Tensor, micro_batch: int = 1) -> pd.DataFrame:
    """The table over every converted layer (softmax layers of an inter-layer hybrid are skipped) and `all`: each
    layer's r computed from the hidden states it receives in a forward pass of `input_ids` (rows, tokens)."""
    from liger.convert import is_linearized
    from liger.layers.base import LinearizedAttention

    if not is_linearized(model):
        raise LigerError("the model is not converted: give a converted model folder, or --options to convert it")
    found: dict[int, list[torch.Tensor]] = {}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        found.setdefault(module.layer_idx, []).append(retention(module, hidden).float().cpu())

    layers = [m for m in model.modules() if isinstance(m, LinearizedAttention)]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
    try:
        device = next(model.parameters()).device
        for start in range(0, input_ids.shape[0], micro_batch):
            model(input_ids=input_ids[start:start + micro_batch].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    per_layer = {i: torch.cat(found[i]).numpy().ravel() for i in sorted(found)}
    rows = [summary(r, str(i)) for i, r in per_layer.items()]
    rows.append(summary(np.concatenate(list(per_layer.values())), "all"))
    return pd.DataFrame(rows, columns=COLUMNS)


def gates(model_dir: Path, data_dir: Path, chunks: int = 2, options: dict | None = None, device: str = "auto",
          dtype: str = "auto", layer_options: dict | None = None) -> pd.DataFrame:
    """The table for the model in `model_dir` (converted, or a base model converted here with `options`) on the first
    `chunks` validation chunks of the prepare-data folder `data_dir`."""
    from liger.convert import linearize_base, split_method
    from liger.device import load_for_inference
    from liger.packed import load_packed

    if chunks < 1:
        raise LigerError(f"--chunks {chunks}: must be >= 1")
    conversion = split_method(options) if options else None
    data = load_packed(data_dir)
    if data.val_ids.shape[0] == 0:
        raise LigerError(f"{data_dir}: no validation chunks (prepare-data --n-val)")
    model, _ = load_for_inference(model_dir, device, dtype, layer_options)
    if conversion:
        linearize_base(model, *conversion, model_dir)
    ids = torch.from_numpy(np.asarray(data.val_ids[:chunks], dtype=np.int64))
    return retention_table(model, ids)


def _cli(args: argparse.Namespace) -> int:
    check_not_input(args.out, {"--model": args.model, "--data": args.data})
    table = gates(args.model, args.data, args.chunks, args.options, args.device, args.dtype, args.layer_options)
    write_text_atomic(args.out, table.to_csv(index=False))
    shown = table.round(4)
    write_text_atomic(args.out.with_suffix(".md"), markdown_table(shown))
    print(shown.to_string(index=False))
    print(f"{args.out}: written")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_probe_parser(sub, "gates", "how long a converted layer's state keeps what each token writes", __doc__,
                         model_help="converted model folder, or a base model with --options")
    p.add_argument("--data", required=True, type=Path, help="prepare-data folder (its validation chunks are read)")
    p.add_argument("--chunks", type=int, default=2, help="validation chunks to read (default 2)")
    p.add_argument("--options", type=json_object_arg(), metavar="JSON",
                   help="convert the base model in --model with these Liger options first (as `liger convert`)")
    add_inference_flags(p)
    p.add_argument("--out", required=True, type=Path, help="output CSV (a Markdown table beside it)")
    p.set_defaults(func=_cli)
