"""Efficiency profile: prefill time, per-token decode latency and peak memory against context length.

For each context length: prefill a random prompt, then decode `new_tokens` greedily through the cache.
Variants: the base model with eager attention ("w/o FA2"), with SDPA ("w/ FA2"), and Liger methods.
An out-of-memory point is recorded as OOM. Real weights, or random weights of a named shape.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from liger.cli_args import json_object_arg
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.fileio import atomic_target, write_text_atomic

COLUMNS = ["variant", "decoder", "length", "batch", "prefill_s", "prefill_tok_s", "decode_ms_median",
           "decode_ms_p90", "decode_tok_s", "peak_gib", "decode_peak_gib", "status"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class HFDecoder:
    """The transformers way: a forward per token through a `DynamicCache` (Liger layers swap in their state)."""

    name = "hf eager loop"

    def __init__(self, model) -> None:
        self.model = model
        self.cache = None
        self.token = None

    def prefill(self, prompt: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        logits = self.model(prompt, past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits
        self.token = logits[:, -1:].argmax(-1)

    def step(self) -> None:
        logits = self.model(self.token, past_key_values=self.cache, use_cache=True).logits
        self.token = logits[:, -1:].argmax(-1)


class GraphDecoderAdapter:
    """`liger.decode.GraphDecoder` (CUDA graph + compiled blocks on CUDA; chunked prefill) behind the same calls."""

    def __init__(self, model, batch: int, prefill_chunk: int | None) -> None:
        from liger.decode import GraphDecoder

        self.decoder = GraphDecoder(model, batch, prefill_chunk=prefill_chunk)
        self.prefill_chunk = prefill_chunk

    @property
    def name(self) -> str:
        """What actually ran (a compiler failure falls back to the eager block)."""
        parts = ["cuda graph" if self.decoder.use_graph else "static loop"]
        if self.decoder.compiled:
            parts.append("torch.compile")
        parts.append(f"prefill chunk {self.prefill_chunk}" if self.prefill_chunk else "one-shot prefill")
        return ", ".join(parts)

    def prefill(self, prompt: torch.Tensor) -> None:
        self.decoder.prefill(prompt)

    def step(self) -> None:
        self.decoder.step()


def measure(decoder, length: int, new_tokens: int, batch: int, device: str, vocab: int) -> dict:
    """One point: prefill `length` tokens, then `new_tokens` single-token steps; times in seconds/ms.

    Prefill computes the last position's logits only (as `generate` does). Peak memory covers prefill and
    decoding (`peak_gib`) and decoding alone (`decode_peak_gib`).
    """
    gen = torch.Generator(device).manual_seed(0)
    prompt = torch.randint(0, vocab, (batch, length), device=device, generator=gen)
    cuda = device.startswith("cuda")
    with torch.no_grad():
        # warm-up at this very length: kernels compile and autotune per shape, which is not what we time
        decoder.prefill(prompt)
        for _ in range(3):
            decoder.step()
        _sync(device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        decoder.prefill(prompt)
        _sync(device)
        prefill = time.perf_counter() - t0
        peak_prefill = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        steps = []
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            decoder.step()
            _sync(device)
            steps.append(time.perf_counter() - t0)
    steps.sort()
    median = statistics.median(steps)
    peak_decode = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {
        "prefill_s": prefill,
        "prefill_tok_s": batch * length / prefill,
        "decode_ms_median": 1e3 * median,
        "decode_ms_p90": 1e3 * steps[int(0.9 * (len(steps) - 1))],
        "decode_tok_s": batch / median,
        "peak_gib": max(peak_prefill, peak_decode),
        "decode_peak_gib": peak_decode,
        "status": "ok",
    }


def copy_bandwidth(device: str, gib: float = 1.0, repeats: int = 20) -> float:
    """Device memory bandwidth in bytes/s (bytes read plus bytes written) of a device-to-device copy."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * n / statistics.median(times)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def build_variant(variant: str, model_dir: Path | None, shape: str | None, device: str, dtype: torch.dtype,
                  liger_options: dict | None = None):
    """`base_eager`, `base_sdpa`, or a Liger method name (converted from the base with sdpa attention)."""
    import liger
    from liger.shapes import random_model

    attn = "eager" if variant == "base_eager" else "sdpa"
    if model_dir is not None:
        model = liger.load(model_dir, dtype=dtype, attn_implementation=attn).to(device).eval()
    else:
        model = random_model(shape, dtype=dtype, device=device, attn_implementation=attn)
    if variant not in ("base_eager", "base_sdpa"):
        opts = dict(liger_options or {"method": variant})
        liger.linearize(model, opts.pop("method"), **opts)
    return model


def make_decoder(model, variant: str, liger_decoder: str, batch: int, prefill_chunk: int | None):
    """The transformers loop for the base variants, `--liger-decoder hf` and layers GraphDecoder does not cover."""
    if variant.startswith("base_") or liger_decoder == "hf":
        return HFDecoder(model)
    try:
        return GraphDecoderAdapter(model, batch, prefill_chunk)
    except LigerError:  # e.g. LoLCATs layers or softmax_layers
        return HFDecoder(model)


def profile(out_csv: Path, *, model_dir: Path | None = None, shape: str | None = None, variants: list[str],
            lengths: list[int], new_tokens: int = 128, batch: int = 1, methods: dict | None = None,
            liger_decoder: str = "graph", prefill_chunk: int | None = 4096) -> pd.DataFrame:
    """Measure every (variant, length) point and write the CSV (atomically). CPU runs say so in `device`.

    Liger variants decode with `liger.decode.GraphDecoder` (liger_decoder="graph") or the transformers loop
    ("hf"); the base variants always use the transformers loop. On CUDA the CSV also records the measured copy
    bandwidth and the weight-read floor of one decoding step (all weights read once at that bandwidth).
    """
    if (model_dir is None) == (shape is None):
        raise LigerError("give exactly one of a model folder or a shape")
    if liger_decoder not in ("graph", "hf"):
        raise LigerError(f"liger_decoder must be graph or hf, got {liger_decoder!r}")
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    cuda = device.startswith("cuda")
    bandwidth = copy_bandwidth(device) if cuda else float("nan")
    rows = []
    for variant in variants:
        model = build_variant(variant, model_dir, shape, device, dtype, (methods or {}).get(variant))
        decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk)
        weights = weight_bytes(model)
        floor_ms = 1e3 * weights / bandwidth
        for n in tqdm(lengths, desc=variant, unit="len"):
            try:
                point = measure(decoder, n, new_tokens, batch, device, model.config.vocab_size)
            except torch.OutOfMemoryError:
                point = {"status": "OOM"}
                decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk)  # drop its buffers
                torch.cuda.empty_cache()
            rows.append({"variant": variant, "decoder": decoder.name, "length": n, "batch": batch, **point,
                         "weights_gib": weights / 2**30, "floor_ms": floor_ms})
        del model, decoder
        if cuda:
            torch.cuda.empty_cache()
    df = pd.DataFrame(rows).reindex(columns=[*COLUMNS, "weights_gib", "floor_ms"])
    df["copy_tb_s"] = bandwidth / 1e12
    df["device"] = torch.cuda.get_device_name() if cuda else "cpu (small lengths; not the paper's setting)"
    df["dtype"] = str(dtype).removeprefix("torch.")
    df["weights"] = str(model_dir) if model_dir else f"random ({shape} shape)"
    write_text_atomic(out_csv, df.to_csv(index=False))
    return df


def plot(csv: Path, out_prefix: Path) -> list[Path]:
    """Latency and memory against context length (log-2 x axis), one line per variant, OOM marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(csv)
    written = []
    for column, label, suffix in [("decode_ms_median", "decode latency (ms / token, median)", "latency"),
                                  ("peak_gib", "peak GPU memory (GiB)", "memory"),
                                  ("prefill_tok_s", "prefill throughput (tokens / s)", "prefill")]:
        if df[column].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, g in df.groupby("variant", sort=False):
            ok = g[g["status"] == "ok"]
            ax.plot(ok["length"], ok[column], marker="o", label=variant)
            for n in g.loc[g["status"] == "OOM", "length"]:
                ax.axvline(n, color="grey", ls=":", lw=1)
                ax.annotate(f"{variant}: OOM", (n, ax.get_ylim()[1]), rotation=90, va="top", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.set_title(f"{df['weights'].iloc[0]}, {df['device'].iloc[0]}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_prefix.with_name(f"{out_prefix.name}_{suffix}.png")
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        written.append(path)
    return written


def _cli(args: argparse.Namespace) -> int:
    df = profile(args.out, model_dir=args.model, shape=args.shape, variants=args.variants.split(","),
                 lengths=[int(x) for x in args.lengths.split(",")], new_tokens=args.new_tokens,
                 batch=args.batch_size, methods=args.methods, liger_decoder=args.liger_decoder,
                 prefill_chunk=args.prefill_chunk or None)
    if args.plot:
        plot(args.out, args.plot)
    print(df[COLUMNS].to_string(index=False))
    if df["copy_tb_s"].notna().any():
        floors = df.groupby("variant", sort=False)["floor_ms"].first()
        print(f"copy bandwidth {df['copy_tb_s'].iloc[0]:.2f} TB/s; weight-read floor per decoding step: "
              + ", ".join(f"{v} {ms:.2f} ms" for v, ms in floors.items()))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="decode latency, prefill throughput and memory against context length")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="model folder (real weights)")
    src.add_argument("--shape", help="random weights of a named shape (liger.shapes: smollm2-135m, llama3-8b)")
    p.add_argument("--variants", default="base_eager,base_sdpa,liger_gla",
                   help="comma-separated: base_eager (w/o FA2), base_sdpa (w/ FA2), Liger method names")
    p.add_argument("--methods", type=json_object_arg('{"gla64": {"method": "liger_gla", "window": 64}}'),
                   help="JSON {variant: Liger options} for variants named other than their method")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--liger-decoder", choices=("graph", "hf"), default="graph",
                   help="Liger variants: graph = liger.decode.GraphDecoder (CUDA graph + torch.compile on CUDA), "
                        "hf = the transformers forward loop")
    p.add_argument("--prefill-chunk", type=int, default=4096,
                   help="Liger prefill in chunks of this many tokens (0: whole prompt); memory stays flat")
    p.add_argument("--out", type=Path, required=True, help="CSV file")
    p.add_argument("--plot", type=Path, help="write PNGs as PREFIX_latency.png, PREFIX_memory.png, ...")
    p.set_defaults(func=_cli)
