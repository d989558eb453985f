"""Cold start: the first prefill and the first training step of a new process against the later ones of the same
process, for a process on a machine whose Triton cache is empty, for the next process (which finds fla's compiled
kernels and autotuning results on disk: `liger` sets TRITON_CACHE_AUTOTUNING=1), for a next process with the
autotuning results not kept (TRITON_CACHE_AUTOTUNING=0), and for a process on another new machine (an empty Triton
cache of its own) that starts from the configurations the first process chose (`LIGER_TRITON_CONFIGS`, a table
`liger.ops.tuning` records and preloads), side by side in one run.

    python benchmarks/bench_cold_start.py                      # CUDA: llama3-8b shape; CPU: a small smoke run
    python benchmarks/bench_cold_start.py --shape llama3-8b --prompt 8192 --train-len 1024 --train-batch 8

Each process is a fresh Python (`--child`); the first three share one Triton cache folder, new and empty unless
--cache-dir names one, the last has a new empty one beside it. The target (the performance issue): each first call
within 10 s of the later ones. `--table FILE` keeps the recorded table (default: beside the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

PROCESSES = [  # (what the process finds, its TRITON_CACHE_AUTOTUNING, its Triton cache, the table it starts from)
    ("empty Triton cache (a new machine)", "1", "shared", "records"),
    ("next process", "1", "shared", "none"),
    ("next process, autotuning not kept", "0", "shared", "none"),
    ("another new machine, configurations chosen ahead", "1", "new", "preloads"),
]
TARGET_S = 10.0


def child(args: argparse.Namespace) -> dict:
    """One fresh process: load, then the first and `--repeats` later prefills and training steps."""
    import torch

    from liger.device import timed
    from liger.ops import tuning
    from liger.ops._fla import fla_importable
    from liger.profile import build_variant

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    model = build_variant(args.method, args.model, args.shape, device, dtype)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.batch_size, args.prompt), generator=gen).to(device)
    chunk = torch.randint(0, vocab, (args.train_batch, args.train_len), generator=gen).to(device)
    for name, p in model.named_parameters():  # the LoRA stage's targets stand in for its adapters
        p.requires_grad_(any(t in name for t in ("q_proj", "k_proj", "v_proj")))

    def prefill() -> None:
        with torch.no_grad():
            model(prompt)

    def train_step() -> None:
        model(chunk, labels=chunk).loss.backward()
        model.zero_grad(set_to_none=True)

    out = {"load_s": load_s, "fla": cuda and fla_importable()}
    out["preloaded"] = sum(len(t.cache) for _, t in tuning.autotuners()) if out["fla"] else 0  # nothing ran yet
    for name, fn in (("prefill", prefill), ("train", train_step)):
        out[f"{name}_first_s"] = timed(fn, device)
        out[f"{name}_later_s"] = statistics.median(timed(fn, device) for _ in range(args.repeats))
    return out


def table(rows: list[dict]) -> pd.DataFrame:
    """One row per process: each first call, the later ones, the difference and whether it meets the target."""
    df = pd.DataFrame(rows)
    for name in ("prefill", "train"):
        df[f"{name} extra s"] = df[f"{name}_first_s"] - df[f"{name}_later_s"]
    df["within target"] = (df[["prefill extra s", "train extra s"]] <= TARGET_S).all(axis=1)
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame | None:
    import torch

    from liger.ops import tuning

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--shape", help="random weights of a named shape (default: llama3-8b on CUDA, smollm2-135m "
                                     "on CPU)")
    src.add_argument("--model", type=Path, help="model folder (real weights)")
    p.add_argument("--method", default="liger_gla", help="a Liger method, or base_sdpa (default liger_gla)")
    p.add_argument("--prompt", type=int, default=1024 if cuda else 32, help="prefill length (tokens)")
    p.add_argument("--batch-size", type=int, default=1, help="prefill batch")
    p.add_argument("--train-len", type=int, default=1024 if cuda else 32, help="training chunk length (tokens)")
    p.add_argument("--train-batch", type=int, default=1, help="training micro batch")
    p.add_argument("--repeats", type=int, default=3, help="later calls timed (median)")
    p.add_argument("--processes", type=int, default=len(PROCESSES), choices=range(1, len(PROCESSES) + 1),
                   help="how many of the processes to run, in order (default all)")
    p.add_argument("--cache-dir", type=Path, help="the Triton cache folder (default: a new empty one)")
    p.add_argument("--table", type=Path, help="where the first process records its configurations (default: "
                                              "beside the cache)")
    p.add_argument("--out", type=Path, help="also write the table as CSV")
    p.add_argument("--md", type=Path, help="also write the table as Markdown, with device, versions, date, command")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model is None and args.shape is None:
        args.shape = "llama3-8b" if cuda else "smollm2-135m"
    if args.child:
        print(json.dumps(child(args)))
        return None

    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="triton-cold-start-"))
    other = Path(tempfile.mkdtemp(prefix="triton-cold-start-other-"))  # the other new machine's cache
    recorded = args.table or cache.parent / f"{cache.name}-configs.json"
    if recorded.exists():
        sys.exit(f"bench_cold_start: {recorded} exists; the first process records a new table there: name another "
                 "with --table")
    unused = Path(tempfile.mkdtemp(prefix="cold-start-no-table-")) / "configs.json"  # not even a shipped table
    tables = {"records": recorded, "preloads": recorded, "none": unused}
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
    where = torch.cuda.get_device_name() if cuda else "CPU (no fla kernels: a smoke run)"
    print(f"cold start on {where}: {args.method}, {args.model or args.shape}, prefill {args.batch_size} x "
          f"{args.prompt}, training step {args.train_batch} x {args.train_len}; Triton cache {cache}", flush=True)
    rows = []
    for what, keep, folder, table_use in PROCESSES[:args.processes]:
        env = {**os.environ, "TRITON_CACHE_DIR": str(cache if folder == "shared" else other),
               "TRITON_CACHE_AUTOTUNING": keep, tuning.ENV: str(tables[table_use])}
        done = subprocess.run([sys.executable, __file__, *passed, "--child"], env=env, capture_output=True,
                              text=True)
        if done.returncode:
            sys.exit(f"bench_cold_start: the process ({what}) failed:\n{done.stderr[-3000:]}")
        rows.append({"process": what, "TRITON_CACHE_AUTOTUNING": keep,
                     **json.loads(done.stdout.strip().splitlines()[-1])})
        print(f"  {what}: done", flush=True)
    df = table(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    shown = df[["process", "preloaded", "load_s", "prefill_first_s", "prefill_later_s", "prefill extra s",
                "train_first_s", "train_later_s", "train extra s", "within target"]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"target: each first call within {TARGET_S:g} s of the later ones (extra s <= {TARGET_S:g})")
    if args.md:
        from liger.markdown import benchmark_record

        args.md.write_text(benchmark_record(
            f"Cold start: {args.method}, {args.model or args.shape}, prefill {args.batch_size} x {args.prompt}, "
            f"training step {args.train_batch} x {args.train_len} (target: extra s <= {TARGET_S:g})",
            {"Seconds, first call and later ones, per fresh process": shown}, where,
            ["python", "benchmarks/bench_cold_start.py", *passed]))
    return df


if __name__ == "__main__":
    main()
