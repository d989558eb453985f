"""LoRA fine-tuning throughput: the converted model (Liger-GLA + Liger Attention) vs the unconverted one (SDPA).

Both variants run the same training step as `liger.train.finetune` (LoRA r=8 on q/k/v, AdamW, clipping at
1.0; micro batch 1 by default): a few warm-up optimizer steps, then timed ones; tokens/s counts every input token.

    python benchmarks/bench_train.py --model resources/models/smollm2-135m [--data resources/data/smollm2-135m]
    python benchmarks/bench_train.py --shape llama3.2-1b --micro-batch 8 --kernels 3   # random weights of a shape

On CUDA the defaults are the paper's setting (1024-token chunks, bf16 weights, fla kernels when installed);
on CPU the defaults shrink (128 tokens, fp32, 1 warm-up and 3 timed steps) and the table says so. Without
--data the chunks are random token ids, every position a target (fine for throughput). `--kernels N` traces N more
steps per variant and prints where a step's time goes: on a GPU, its busy time against the step's (a share well below
100% means the step waits on the host: launches and synchronisations), then the top kernels (on the CPU, its ops).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from liger.cli_args import json_object_arg
from liger.packed import load_packed
from liger.shapes import SHAPES, shape_config
from liger.stages import build_model, device_and_dtype
from liger.steps import batch, make_optimizer, train_step
from liger.train_config import TrainConfig

LIGER = {"method": "liger_gla", "hybrid": "liger_attention"}


def chunks(args: argparse.Namespace, vocab: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` training chunks (ids, mask): from the data folder when given, else random ids."""
    if args.data:
        data = load_packed(args.data)
        rows = np.arange(n) % data.train_ids.shape[0]
        return np.asarray(data.train_ids[rows]), np.asarray(data.train_mask[rows])
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, size=(n, args.seq_len)).astype(np.int64), np.ones((n, args.seq_len), dtype=bool)


def recurrence_impl(device: torch.device) -> str:
    """What the recurrent branch runs on (fla kernels or the chunked PyTorch path)."""
    from liger.ops._fla import fla_importable

    return "fla" if device.type == "cuda" and fla_importable() else "torch chunked"


def run_variant(name: str, options: dict | None, args: argparse.Namespace, cfg: TrainConfig) -> dict:
    device, dtype = device_and_dtype(cfg)
    model = build_model(args.model, options, cfg, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, _ = make_optimizer(model, cfg)
    n_steps = args.warmup + args.steps
    per_step = cfg.grad_accum * cfg.micro_batch
    ids, mask = chunks(args, model.config.vocab_size, n_steps * per_step)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for step in range(n_steps):
        first = step * per_step
        batches = [batch(ids, mask, np.arange(first + i, first + i + cfg.micro_batch), device)
                   for i in range(0, per_step, cfg.micro_batch)]
        t0 = time.perf_counter()
        losses.append(train_step(model, params, opt, batches, cfg.max_grad_norm))
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup:]
    kernels = trace(model, params, opt, ids, mask, args, cfg, device) if args.kernels else None
    tokens = args.steps * per_step * args.seq_len
    if options is None:
        attn = getattr(model.config, "_attn_implementation", None) or "default"
    else:
        attn = f"liger: {recurrence_impl(device)} + window"
    result = {
        "variant": name,
        "attention": attn,
        "tokens_per_s": tokens / sum(timed),
        "ms_per_step": 1000 * sum(timed) / len(timed),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "trainable": sum(p.numel() for p in params),
        "kernels": kernels,
    }
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def trace(model, params: list, opt, ids: np.ndarray, mask: np.ndarray, args: argparse.Namespace, cfg: TrainConfig,
          device: torch.device) -> list[dict]:
    """Where a training step's time goes: `args.kernels` more steps (after one untraced) under torch.profiler,
    ranked by self time (`liger.profile.rank_kernels`: CUDA kernels on a GPU, CPU ops on the CPU)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from liger.profile import rank_kernels

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    rows = np.arange(cfg.micro_batch) % ids.shape[0]
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=args.kernels, repeat=1)) as prof:
        for _ in range(args.kernels + 1):
            batches = [batch(ids, mask, rows, device) for _ in range(cfg.grad_accum)]
            train_step(model, params, opt, batches, cfg.max_grad_norm)
            prof.step()
    return rank_kernels(prof, args.kernels, model.config.num_hidden_layers, cuda, top=args.top)


def print_kernels(results: list[dict], steps: int) -> None:
    """Per variant: the device's busy time per traced step against the untraced step time, then the top rows."""
    for r in results:
        busy = sum(k["ms_per_step"] for k in r["kernels"])
        if r["kernels"] and r["kernels"][0]["kind"] == "cuda kernel":
            print(f"\n{r['variant']}: CUDA kernels, {steps} traced steps: the GPU busy {busy:.1f} ms per step, "
                  f"{busy / r['ms_per_step']:.0%} of the untraced step's {r['ms_per_step']:.1f} ms")
        else:  # the CPU's ops are the step (the profiler's own time among them): no share to show
            print(f"\n{r['variant']}: CPU ops, {steps} traced steps, {busy:.1f} ms per step")
        print(f"  {'ms/step':>8} {'share':>6} {'calls/step':>10}  name")
        for k in r["kernels"]:
            print(f"  {k['ms_per_step']:>8.2f} {k['share']:>6.1%} {k['calls_per_step']:>10.0f}  {k['name'][:90]}")


def write_md(path: Path, results: list[dict], where: str, what: str, args: argparse.Namespace,
             argv: list[str]) -> None:
    """The throughput table (and the traced kernels) as Markdown (`liger.markdown.benchmark_record`)."""
    from liger.markdown import benchmark_record

    base = results[-1]["tokens_per_s"]
    table = pd.DataFrame([{"variant": r["variant"], "attention": r["attention"], "tokens/s": r["tokens_per_s"],
                           "ms/step": r["ms_per_step"], "vs base": r["tokens_per_s"] / base,
                           "peak GiB": r["peak_mem_gib"], "loss first": r["loss_first"], "loss last": r["loss_last"]}
                          for r in results])
    tables = {"Throughput": table}
    for r in results:
        if r["kernels"]:
            tables[f"{r['variant']}: top kernels per step"] = pd.DataFrame(r["kernels"])
    title = f"LoRA fine-tuning throughput: {what}, {args.seq_len}-token chunks, micro batch {args.micro_batch}"
    path.write_text(benchmark_record(title, tables, where, ["python", "benchmarks/bench_train.py", *argv]))


def random_model(model_dir: Path | None, shape: str | None = None) -> Path:
    """Save a randomly initialised model (bf16) of `model_dir`'s config, or of the named `shape`
    (`liger.shapes.SHAPES`), into a temporary folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = shape_config(shape) if shape is not None else AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out = Path(tempfile.mkdtemp(prefix="bench-train-model-"))
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("resources/models/smollm2-135m"), help="base model folder")
    p.add_argument("--data", type=Path, help="prepare-data folder (default: random token chunks)")
    p.add_argument("--seq-len", type=int, default=1024 if cuda else 128)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed optimizer steps")
    p.add_argument("--steps", type=int, default=20 if cuda else 3, help="timed optimizer steps")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--micro-batch", type=int, default=1, help="chunks per forward/backward pass")
    p.add_argument("--options", type=json_object_arg(null=True), default=LIGER,
                   help=f"Liger options (default {json.dumps(LIGER)})")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights of --model's shape (only its config.json is read): throughput only")
    p.add_argument("--shape", choices=sorted(SHAPES),
                   help="random weights of a named shape instead of --model (throughput only; no --data)")
    p.add_argument("--kernels", type=int, default=0,
                   help="also trace this many steps per variant (torch.profiler) and print where the time goes")
    p.add_argument("--top", type=int, default=15, help="with --kernels: rows per variant before '(other)'")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--md", type=Path, help="also write the tables as Markdown, with device, versions, date, command")
    args = p.parse_args(argv)
    if args.kernels < 0 or args.top < 1:
        p.error("--kernels must be >= 0 and --top >= 1")
    if args.shape and args.data:
        p.error("--shape runs on random token chunks: leave out --data (its tokens need the model's vocabulary)")
    if args.shape:
        args.model = random_model(None, args.shape)
    elif args.random_weights:
        args.model = random_model(args.model)

    if args.data:
        seq_len = load_packed(args.data).seq_len
        if seq_len != args.seq_len:
            print(f"note: the data has {seq_len}-token chunks; using that length", file=sys.stderr)
            args.seq_len = seq_len
    cfg = TrainConfig(grad_accum=args.grad_accum, micro_batch=args.micro_batch, dtype=args.dtype, progress=False)
    device, dtype = device_and_dtype(cfg)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads (small settings)"
    what = f"{args.shape} shape, random weights" if args.shape else str(args.model)
    print(f"LoRA fine-tuning throughput on {where}: {what}, {args.seq_len}-token chunks, micro batch "
          f"{args.micro_batch}, grad accum {args.grad_accum}, {str(dtype).removeprefix('torch.')}, "
          f"{args.warmup} warm-up + "
          f"{args.steps} timed steps, {'data ' + str(args.data) if args.data else 'random tokens'}")
    results = [run_variant("liger_gla + Liger Attention", args.options, args, cfg),
               run_variant("base (unconverted)", None, args, cfg)]
    base = results[1]["tokens_per_s"]
    header = f"{'variant':<30} {'attention':<30} {'tokens/s':>10} {'ms/step':>9} {'vs base':>8} {'peak GiB':>9} " \
             f"{'loss first->last':>17}"
    print(header)
    print("-" * len(header))
    for r in results:
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['variant']:<30} {r['attention']:<30} {r['tokens_per_s']:>10.1f} {r['ms_per_step']:>9.1f} "
              f"{r['tokens_per_s'] / base:>7.2f}x {mem:>9} {r['loss_first']:>8.3f}->{r['loss_last']:.3f}")
    if args.kernels:
        print_kernels(results, args.kernels)
    if args.md:
        write_md(args.md, results, where, what, args, sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.write_text(json.dumps({"device": where, "seq_len": args.seq_len, "dtype": str(dtype),
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
