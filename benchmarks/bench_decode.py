"""Prefill throughput and per-token decode latency: a base model vs its Liger conversions, batch 1.

    python benchmarks/bench_decode.py --model resources/models/smollm2-135m --lengths 1024 8192 32768

Prints one table row per (variant, context length). On CPU it runs small lengths and says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

import liger
from liger.shapes import SHAPES, random_model


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(model, length: int, new_tokens: int, device: str) -> dict:
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, length), device=device, generator=torch.Generator(device).manual_seed(0))
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        # warm-up at a short length (kernels compile and autotune once)
        model(prompt[:, :256], past_key_values=DynamicCache(), use_cache=True)
        sync()
        cache = DynamicCache()
        t0 = time.perf_counter()
        logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
        sync()
        prefill = time.perf_counter() - t0
        steps = []
        token = logits.argmax(-1, keepdim=True)
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            sync()
            steps.append(time.perf_counter() - t0)
    steps.sort()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {
        "prefill_s": prefill,
        "prefill_tok_s": length / prefill,
        "decode_ms_median": 1e3 * statistics.median(steps),
        "decode_ms_p90": 1e3 * steps[int(0.9 * (len(steps) - 1))],
        "peak_gib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a Hugging Face model folder")
    src.add_argument("--shape", choices=sorted(SHAPES), help="random weights of a named shape (timing only)")
    ap.add_argument("--methods", nargs="+", default=["base", "liger_gla"], help="base and/or Liger methods")
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 8192, 32768])
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = args.lengths if device == "cuda" else [n for n in args.lengths if n <= 1024] or [256]
    if device == "cpu":
        print(f"# no CUDA: CPU run at lengths {lengths} only, fp32")
    rows = []
    for method in args.methods:
        if args.model:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
        else:
            model = random_model(args.shape, dtype=dtype, device=device)
        if method != "base":
            liger.linearize(model, method)
        for n in lengths:
            try:
                r = measure(model, n, args.new_tokens, device)
            except torch.OutOfMemoryError:
                r = {"prefill_s": float("nan"), "prefill_tok_s": float("nan"), "decode_ms_median": float("nan"),
                     "decode_ms_p90": float("nan"), "peak_gib": float("nan"), "oom": True}
            rows.append({"variant": method, "length": n, **r})
            print(f"{method:12s} {n:6d} prefill {r['prefill_tok_s']:10.0f} tok/s  decode median "
                  f"{r['decode_ms_median']:7.2f} ms  p90 {r['decode_ms_p90']:7.2f} ms  peak {r['peak_gib']:6.2f} GiB",
                  flush=True)
        del model
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    what = args.model or f"{args.shape} shape, random weights"
    print(f"\n## {what}: prefill and decode, batch 1, {args.new_tokens} greedy steps, {name}, {dtype}")
    print("| variant | context | prefill tok/s | decode ms/token (median) | p90 | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['length']} | {r['prefill_tok_s']:.0f} | {r['decode_ms_median']:.2f} | "
              f"{r['decode_ms_p90']:.2f} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
