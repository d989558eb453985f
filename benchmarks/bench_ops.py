"""Prefill throughput of each liger.ops implementation (tokens/s, forward only, batch 1).

SmolLM2-135M shapes: 9 query heads, 3 kv heads, head dim 64; the recurrences run on the 9 query heads
(keys/values repeated, as Liger does), GSA with 64 slots, the window looks back 64 tokens (65 keys per query with
its own: a Liger layer's default `window`).

LoLCATs' hybrid layer (`lolcats/<shape>/q<N>`: its `parallel` forward, terraced or sliding, in query blocks of N, the
layer option `query_block`) runs beside softmax attention (`sdpa/causal`), what the layer replaces.

    python benchmarks/bench_ops.py                 # CUDA: 1K, 4K, 16K tokens; CPU: 256, 1K (says so)
    python benchmarks/bench_ops.py --lengths 1024 2048 --dtype float32 --backward
    python benchmarks/bench_ops.py --lengths 1024 3072 --only lolcats sdpa --backward
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from liger.device import timed
from liger.ops import gated_recurrence, gated_slot_attention, sliding_window_attention
from liger.ops._fla import fla_importable
from liger.ops.window import flash_attn_importable

H, HKV, D, M, WINDOW = 9, 3, 64, 64, 64
LOLCATS_BLOCKS = (64, 128, 256, 1024)  # query blocks; the layer's default is 1024


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of one call after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def cases(T: int, device: torch.device, dtype: torch.dtype, backward: bool) -> dict[str, Callable[[], object]]:
    """name -> a zero-argument callable running one prefill of T tokens (and its backward if asked)."""
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=g)

    q = rnd(1, T, H, D).softmax(-1).to(dtype)
    k = rnd(1, T, H, D).softmax(-1).to(dtype)
    v = rnd(1, T, H, D).to(dtype)
    gk = (F.logsigmoid(rnd(1, T, H, D)) / 16).to(dtype)
    gs = (F.logsigmoid(rnd(1, T, H, M)) / 16).to(dtype)
    s = 1 - gs.float().exp().to(dtype)
    qw, kw, vw = rnd(1, T, H, D).to(dtype), rnd(1, T, HKV, D).to(dtype), rnd(1, T, HKV, D).to(dtype)
    for x in (q, k, v, gk, gs, s, qw, kw, vw):
        x.requires_grad_(backward)

    def wrap(f: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if not backward:
            return lambda: _no_grad(f)
        return lambda: f().float().sum().backward()

    out: dict[str, Callable[[], object]] = {}
    rec_impls = ["chunk", "recurrent"] + (["fla"] if device.type == "cuda" and fla_importable() else [])
    for impl in rec_impls:
        out[f"gla/{impl}"] = wrap(lambda impl=impl: gated_recurrence(q, k, v, gk, impl=impl)[0])
        out[f"gsa/{impl}"] = wrap(lambda impl=impl: gated_slot_attention(q, k, v, s, gs, impl=impl)[0])
    win_impls = ["blocked"]
    if device.type == "cuda":
        win_impls.append("flex")
        if flash_attn_importable() and dtype in (torch.float16, torch.bfloat16):
            win_impls.append("flash_attn")
    if T <= 4096:
        win_impls.append("reference")
    for impl in win_impls:
        out[f"swa/{impl}"] = wrap(lambda impl=impl: sliding_window_attention(qw, kw, vw, WINDOW, impl=impl))
    out["sdpa/causal"] = wrap(lambda: F.scaled_dot_product_attention(
        qw.transpose(1, 2), kw.transpose(1, 2), vw.transpose(1, 2), is_causal=True, enable_gqa=True))
    for shape in ("terraced", "sliding"):
        for block in LOLCATS_BLOCKS:
            if block <= max(T, LOLCATS_BLOCKS[0]):
                layer = lolcats_layer(shape, block, device)
                out[f"lolcats/{shape}/q{block}"] = wrap(lambda layer=layer: layer.parallel(qw, kw, vw, None, None))
    return out


def lolcats_layer(shape: str, query_block: int, device: torch.device) -> torch.nn.Module:
    """A LoLCATs layer with these heads (its feature maps at their identity init), window shape and query block."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from liger import linearize

    config = LlamaConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=HKV, num_hidden_layers=1,
                         intermediate_size=64, vocab_size=32)
    model = linearize(LlamaForCausalLM(config), "lolcats", window=WINDOW, window_shape=shape,
                      query_block=query_block)
    return model.model.layers[0].self_attn.to(device)


def _no_grad(f: Callable[[], torch.Tensor]) -> None:
    with torch.no_grad():
        f()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--only", nargs="+", help="implementation prefixes to time (e.g. lolcats sdpa)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="skip an implementation at longer lengths once one call took this long")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    lengths = args.lengths or ([1024, 4096, 16384] if cuda else [256, 1024])
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}, dtype {dtype}, fla {'yes' if fla_importable() else 'no'}, "
              f"flash-attn {'yes' if flash_attn_importable() else 'no'}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads) -- no CUDA, so only small lengths and the torch "
              f"paths; the numbers say nothing about GPU speed. dtype {dtype}")
    print(f"mode: {'forward+backward' if args.backward else 'forward (prefill)'}, batch 1, heads {H}/{HKV}, "
          f"head dim {D}, slots {M}, window {WINDOW}")

    results: dict[str, dict[int, float | None]] = {}
    too_slow: set[str] = set()
    for T in lengths:
        for name, fn in cases(T, device, dtype, args.backward).items():
            if args.only and not name.startswith(tuple(args.only)):
                continue
            row = results.setdefault(name, {})
            if name in too_slow:
                row[T] = None
                continue
            try:
                first = timed(fn, device)  # first call: compile / autotune, not in the result
                reps = args.repeats if first < args.max_seconds / 4 else 1
                sec = time_call(fn, device, reps, warmup=0 if reps == 1 else 1)
                row[T] = T / sec
                if sec > args.max_seconds:
                    too_slow.add(name)
            except torch.OutOfMemoryError:
                row[T] = None
                if cuda:
                    torch.cuda.empty_cache()
            except Exception as exc:  # report and go on with the other implementations
                print(f"{name} at {T}: {type(exc).__name__}: {exc}")
                row[T] = None

    header = f"{'implementation':<22}" + "".join(f"{f'{T} tok/s':>16}" for T in lengths)
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = "".join(f"{'-' if row.get(T) is None else f'{row[T]:,.0f}':>16}" for T in lengths)
        print(f"{name:<22}{cells}")


if __name__ == "__main__":
    main()
