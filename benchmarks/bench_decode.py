"""Decoding side by side: Liger-GLA through `liger.decode.GraphDecoder` against the unconverted model through
transformers' fast path (`generate` with a static cache and the compiled step, `base_static_compile`) and through
its plain loop with SDPA (`base_sdpa`), at each context length, in one run; and each variant's ms/token against
its memory floor. On CUDA with triton, `liger_gla_fused` too: GraphDecoder(fused=True), each layer's attention step
in one kernel (`liger.ops.fused_step`).

    python benchmarks/bench_decode.py                          # CUDA: llama3-8b shape, 1K..32K; CPU: tiny lengths
    python benchmarks/bench_decode.py --shape llama3-8b --batch-size 16 --lengths 1024,8192
    python benchmarks/bench_decode.py --model resources/models/smollm2-135m --lengths 256,512 --new-tokens 16

The floor of one decoding step is every byte it must read once at the device's copy bandwidth (measured here):
the weights plus the decoding state the step reads (Liger: its recurrent state and window; the softmax variants:
their key/value cache, all `max_cache_len` slots for the static cache). Times are `liger profile`'s
(warm-up excluded, synchronised, median of `--new-tokens` steps); `--kernels` also writes the top kernels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from liger.ops import fused_step
from liger.profile import copy_bandwidth, profile

VARIANTS = ["liger_gla", "base_static_compile", "base_sdpa"]
FUSED = "liger_gla_fused"  # on CUDA with triton: the decoding step in one kernel per layer (liger.ops.fused_step)


def floors(df: pd.DataFrame, bandwidth: float) -> pd.Series:
    """ms of one decoding step reading the weights and the state once at `bandwidth` bytes/s."""
    return 1e3 * (df["weights_gib"] + df["state_gib"]) * 2**30 / bandwidth


def ratio_table(df: pd.DataFrame, bandwidth: float, variants: list[str] = VARIANTS) -> pd.DataFrame:
    """One row per context length: ms/token per variant, the ratios to Liger-GLA, each variant's ms / floor."""
    df = df.assign(floor=floors(df, bandwidth))
    out = []
    for length, g in df.groupby("length", sort=True):
        by = g.set_index("variant")
        row: dict = {"length": int(length)}
        for v in variants:
            ok = v in by.index and by.at[v, "status"] == "ok"
            row[f"{v} ms"] = by.at[v, "decode_ms_median"] if ok else float("nan")
            row[f"{v} / floor"] = by.at[v, "decode_ms_median"] / by.at[v, "floor"] if ok else float("nan")
        for v in variants[1:]:
            row[f"{v} / liger_gla"] = row[f"{v} ms"] / row["liger_gla ms"]
        out.append(row)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--shape", help="random weights of a named shape (default on CUDA: llama3-8b)")
    src.add_argument("--model", type=Path, help="model folder (real weights)")
    parser.add_argument("--lengths", default=None, help="context lengths (CUDA: 1K..32K; CPU: 32,64)")
    parser.add_argument("--new-tokens", type=int, default=None, help="timed steps per length (CUDA 128; CPU 8)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--kernels", type=int, default=0, help="also trace this many steps (torch.profiler)")
    parser.add_argument("--out", type=Path, help="keep liger profile's CSV here (default: a temporary file)")
    parser.add_argument("--md", type=Path, help="also write the table as Markdown, with device, versions, date, "
                        "command")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda and not (args.shape or args.model):
        parser.error("no CUDA: give --model (a small model folder) or --shape; the CPU numbers say nothing of a GPU")
    if args.kernels and not args.out:
        parser.error("--kernels: give --out too; the kernel tables go beside that CSV")
    shape = args.shape or (None if args.model else "llama3-8b")
    lengths = [int(x) for x in (args.lengths or ("1024,2048,4096,8192,16384,32768" if cuda else "32,64")).split(",")]
    new_tokens = args.new_tokens or (128 if cuda else 8)
    fused = cuda and fused_step.unavailable(torch.device(device)) is None
    variants = [VARIANTS[0], FUSED, *VARIANTS[1:]] if fused else VARIANTS
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "profile.csv"
        df = profile(out, model_dir=args.model, shape=shape, variants=variants, lengths=lengths,
                     new_tokens=new_tokens, batch=args.batch_size, kernels=args.kernels)
    # the profile measured the copy bandwidth on CUDA (in the same run); on the CPU it records none
    bandwidth = df["copy_tb_s"].iloc[0] * 1e12 if cuda else copy_bandwidth(device, gib=0.0625, repeats=5)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (tiny sizes; nothing to learn about a GPU)'}; "
          f"copy bandwidth {bandwidth / 1e12:.3f} TB/s; {shape or args.model}, batch {args.batch_size}, "
          f"{new_tokens} timed steps per length")
    for v, g in df.groupby("variant", sort=False):
        print(f"{v}: {g['decoder'].iloc[0]}")
    table = ratio_table(df, bandwidth, variants)
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 200):
        print(table.to_string(index=False))
    if args.md:
        from liger.markdown import benchmark_record

        where = f"{df['device'].iloc[0]}, copy bandwidth {bandwidth / 1e12:.3f} TB/s"
        args.md.write_text(benchmark_record(
            f"Decoding: {shape or args.model}, batch {args.batch_size}, {new_tokens} timed steps per length",
            {"ms/token, ratios and each variant against its floor": table}, where,
            ["python", "benchmarks/bench_decode.py", *(sys.argv[1:] if argv is None else argv)]))
    return table


if __name__ == "__main__":
    main()
