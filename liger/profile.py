"""Efficiency profile: prefill time, per-token decode latency and peak memory against context length, and the
paper's Table 9 protocol (total seconds and peak memory to generate N tokens at batch 16).

For each context length: prefill a random prompt, then decode `new_tokens` greedily through the cache.
Variants: the base model with eager attention ("w/o FA2"), with SDPA ("w/ FA2"), through transformers' fast path
(`generate` with a static cache and the compiled decoding step, `base_static_compile`), and Liger methods.
An out-of-memory point is recorded as OOM. Real weights, or random weights of a named shape. `kernels` adds
where the time of a decoding step goes (torch.profiler: CUDA kernels on a GPU, CPU ops on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from liger.cli_args import json_object_arg
from liger.device import resolve_device, resolve_dtype, synchronize, timed
from liger.errors import LigerError
from liger.fileio import atomic_target, write_text_atomic

COLUMNS = ["variant", "decoder", "length", "batch", "prefill_s", "prefill_tok_s", "decode_ms_median",
           "decode_ms_p90", "decode_tok_s", "peak_gib", "decode_peak_gib", "status"]
TABLE9_COLUMNS = ["variant", "decoder", "generated", "batch", "prompt", "total_s", "ms_per_token", "tok_s",
                  "peak_gib", "status"]
KERNEL_COLUMNS = ["variant", "decoder", "length", "batch", "kind", "rank", "name", "calls_per_step",
                  "calls_per_layer_step", "ms_per_step", "share"]
BASE_VARIANTS = ("base_eager", "base_sdpa", "base_static_compile")
FUSED = "_fused"  # a Liger variant named METHOD_fused converts as METHOD and decodes with GraphDecoder(fused=True)
TABLE9_GENERATED = [1024, 2048, 4096, 8192, 16384, 32768]
PAPER_TABLE9 = Path(__file__).resolve().parents[1] / "config" / "paper_table9.csv"


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


class Clock:
    """Timestamps of one decoding run, set by the decoder: `start`, `mark` after the prompt and after each step,
    `stop`. `each_step` synchronises the device at every mark (per-step latency); otherwise only after the prompt
    and at the end (a total). The peak memory of the prompt and of the steps are kept apart."""

    def __init__(self, device: str, *, each_step: bool = True, on_mark: Callable[[], None] | None = None) -> None:
        self.device, self.each_step, self.on_mark = device, each_step, on_mark
        self.t0 = self.t_end = 0.0
        self.marks: list[float] = []
        self.prefill_peak = self.decode_peak = float("nan")

    def start(self) -> None:
        synchronize(self.device)
        _reset_peak(self.device)
        self.marks = []
        self.t0 = time.perf_counter()

    def mark(self) -> None:
        if self.each_step or not self.marks:
            synchronize(self.device)
            self.marks.append(time.perf_counter())
            if len(self.marks) == 1:
                self.prefill_peak = _peak_gib(self.device)
                _reset_peak(self.device)
        if self.on_mark is not None:
            self.on_mark()

    def stop(self) -> None:
        synchronize(self.device)
        self.t_end = time.perf_counter()
        self.decode_peak = _peak_gib(self.device)

    @property
    def prefill_s(self) -> float:
        return self.marks[0] - self.t0

    @property
    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]


class StepDecoder:
    """A decoder driven one forward at a time: `prefill(prompt)`, then `step()` per token."""

    name = "step decoder"

    def prepare(self, length: int, steps: int) -> None:
        """Room for a prompt of `length` tokens and `steps` steps (nothing to do for a growing cache)."""

    def prefill(self, prompt: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def current_token(self) -> torch.Tensor:
        raise NotImplementedError

    def state_bytes(self) -> int:
        raise NotImplementedError

    def run(self, prompt: torch.Tensor, steps: int, clock: Clock) -> torch.Tensor:
        """Prefill, then `steps` steps, marking `clock`; the generated tokens (B, steps + 1)."""
        clock.start()
        self.prefill(prompt)
        clock.mark()
        tokens = [self.current_token().clone()]
        for _ in range(steps):
            self.step()
            clock.mark()
            tokens.append(self.current_token().clone())
        clock.stop()
        return torch.cat(tokens, dim=1)


class HFDecoder(StepDecoder):
    """The transformers way: a forward per token through a `DynamicCache` (Liger layers swap in their state)."""

    name = "hf eager loop"

    def __init__(self, model) -> None:
        self.model = model
        self.cache = None
        self.token = None

    def prefill(self, prompt: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.cache = None  # the last run's cache goes before this one is built
        self.cache = DynamicCache()
        logits = self.model(prompt, past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits
        self.token = logits[:, -1:].argmax(-1)

    def step(self) -> None:
        logits = self.model(self.token, past_key_values=self.cache, use_cache=True).logits
        self.token = logits[:, -1:].argmax(-1)

    def current_token(self) -> torch.Tensor:
        return self.token

    def state_bytes(self) -> int:
        from liger.cache import cache_nbytes

        return cache_nbytes(self.cache) if self.cache is not None else 0


class GraphDecoderAdapter(StepDecoder):
    """`liger.decode.GraphDecoder` (CUDA graph + compiled blocks on CUDA; chunked prefill) behind the same calls."""

    def __init__(self, model, batch: int, prefill_chunk: int | None, fused: bool = False) -> None:
        from liger.decode import GraphDecoder

        self.decoder = GraphDecoder(model, batch, prefill_chunk=prefill_chunk, fused=fused)
        self.prefill_chunk = prefill_chunk

    @property
    def name(self) -> str:
        """What actually ran (a compiler failure falls back to the eager block)."""
        parts = ["cuda graph" if self.decoder.use_graph else "static loop"]
        if self.decoder.compiled:
            parts.append("torch.compile")
        if self.decoder.fused:
            parts.append("fused GLA step")
        parts.append(f"prefill chunk {self.prefill_chunk}" if self.prefill_chunk else "one-shot prefill")
        return ", ".join(parts)

    def prefill(self, prompt: torch.Tensor) -> None:
        self.decoder.prefill(prompt)

    def step(self) -> None:
        self.decoder.step()

    def current_token(self) -> torch.Tensor:
        return self.decoder.token

    def state_bytes(self) -> int:
        return sum(b.nbytes() for b in self.decoder.buffers or [])


class _MarkEachToken:
    """A logits processor that marks the clock each time `generate` has the logits of a new token."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.clock.mark()
        return scores


class StaticCompileDecoder:
    """transformers' own fast path for the unconverted model: `generate` with a `StaticCache` (fixed-size key/value
    buffers) and the decoding step compiled by `generate` itself (`torch.compile(mode="reduce-overhead")`, CUDA
    graphs; transformers' `CompileConfig` defaults).

    The cache is made here, sized for the prompt and the steps, and `reset()` between runs (transformers' advice for
    repeated calls): warm-up and timed run then share its shapes, so the timed run does not compile. `compile`:
    None lets transformers decide (it compiles on CUDA, not on the CPU), True compiles on any device, False never.
    `generate` stops at no end-of-sequence token here: every run decodes all its steps.
    """

    def __init__(self, model, compile: bool | None = None) -> None:
        from transformers import CompileConfig

        self.model = model
        self.request = compile
        self.cache = None
        self.size = 0
        self.compile_config = None
        if compile:
            self.compile_config = CompileConfig()
            self.compile_config._compile_all_devices = True  # transformers' switch for compiling on the CPU
        config = model.generation_config
        config.eos_token_id = None
        config.pad_token_id = 0  # never used: the attention mask is given
        config.do_sample = False
        config.disable_compile = compile is False
        config.cache_implementation = None  # the cache is ours (a model's own choice would clash with it)

    @property
    def compiled(self) -> bool:
        """Whether `generate` compiled the step (it keeps the compiled call on the model)."""
        return getattr(self.model, "_compiled_call", None) is not None

    @property
    def name(self) -> str:
        return "generate, static cache, " + ("torch.compile reduce-overhead" if self.compiled else "not compiled")

    def prepare(self, length: int, steps: int) -> None:
        from transformers import StaticCache

        size = length + steps + 1
        if self.cache is None or self.size != size:
            self.cache = None
            self.cache = StaticCache(config=self.model.config, max_cache_len=size)
            self.size = size

    def run(self, prompt: torch.Tensor, steps: int, clock: Clock) -> torch.Tensor:
        """`generate` of `steps + 1` tokens (prompt, then `steps` decoding steps), marking `clock` per token."""
        from transformers import LogitsProcessorList

        if self.cache is None or self.size < prompt.shape[1] + steps + 1:
            self.prepare(prompt.shape[1], steps)
        self.cache.reset()
        clock.start()
        out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps + 1,
                                  do_sample=False, past_key_values=self.cache, compile_config=self.compile_config,
                                  logits_processor=LogitsProcessorList([_MarkEachToken(clock)]))
        clock.stop()
        return out[:, prompt.shape[1]:]

    def state_bytes(self) -> int:
        from liger.cache import cache_nbytes

        return cache_nbytes(self.cache) if self.cache is not None else 0


def _prompt(batch: int, length: int, vocab: int, device: str) -> torch.Tensor:
    gen = torch.Generator(device).manual_seed(0)
    return torch.randint(0, vocab, (batch, length), device=device, generator=gen)


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(decoder, length: int, new_tokens: int, batch: int, device: str, vocab: int) -> dict:
    """One point: prefill `length` tokens, then `new_tokens` single-token steps; times in seconds/ms.

    Prefill computes the last position's logits only (as `generate` does). Peak memory covers prefill and
    decoding (`peak_gib`) and decoding alone (`decode_peak_gib`); `state_gib` is the decoding state at the end.
    """
    prompt = _prompt(batch, length, vocab, device)
    with torch.no_grad():
        # warm-up at this very length: kernels compile and autotune per shape, which is not what we time
        decoder.prepare(length, new_tokens)
        decoder.run(prompt, 3, Clock(device))
        _free(device)
        clock = Clock(device)
        decoder.run(prompt, new_tokens, clock)
    steps = sorted(clock.steps)
    median = statistics.median(steps)
    return {
        "prefill_s": clock.prefill_s,
        "prefill_tok_s": batch * length / clock.prefill_s,
        "decode_ms_median": 1e3 * median,
        "decode_ms_p90": 1e3 * steps[int(0.9 * (len(steps) - 1))],
        "decode_tok_s": batch / median,
        "peak_gib": max(clock.prefill_peak, clock.decode_peak),
        "decode_peak_gib": clock.decode_peak,
        "status": "ok",
        "state_gib": decoder.state_bytes() / 2**30,
    }


def measure_total(decoder, prompt_len: int, generated: int, batch: int, device: str, vocab: int) -> dict:
    """Table 9's point: the seconds to generate `generated` tokens after a `prompt_len`-token prompt (the prompt
    included, the device synchronised only at the end), and the peak memory of the whole run."""
    prompt = _prompt(batch, prompt_len, vocab, device)
    with torch.no_grad():
        decoder.prepare(prompt_len, generated - 1)
        decoder.run(prompt, min(3, generated - 1), Clock(device))  # warm-up (compile, graph capture)
        _free(device)
        clock = Clock(device, each_step=False)
        decoder.run(prompt, generated - 1, clock)
    total = clock.t_end - clock.t0
    return {"total_s": total, "ms_per_token": 1e3 * total / generated, "tok_s": batch * generated / total,
            "peak_gib": max(clock.prefill_peak, clock.decode_peak), "status": "ok"}


def trace_kernels(decoder, length: int, steps: int, batch: int, device: str, vocab: int, layers: int,
                  top: int = 15) -> list[dict]:
    """Where a decoding step's time goes: torch.profiler over `steps` steps after one untraced step, the `top`
    entries by self time (CUDA kernels on a GPU, CPU ops on the CPU) and one "(other)" row for the rest, so the
    shares sum to 1. Call after `measure` at the same length (the decoder is warm and has room for the steps)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = device.startswith("cuda")
    prompt = _prompt(batch, length, vocab, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # step 0 of the schedule is the prompt, step 1 an untraced decoding step, then `steps` traced ones
    with torch.no_grad(), profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=steps)) as prof:
        decoder.run(prompt, steps + 1, Clock(device, on_mark=prof.step))
    return rank_kernels(prof, steps, layers, cuda, top)


def rank_kernels(prof, steps: int, layers: int, cuda: bool, top: int = 15) -> list[dict]:
    """A finished torch.profiler trace of `steps` steps as rows: the `top` entries by self time (CUDA kernels on a
    GPU, CPU ops on the CPU), then one "(other)" row for the rest, so the shares sum to 1 and the rows' `ms_per_step`
    to the time the device was busy in a step."""
    kind = "cuda kernel" if cuda else "cpu op"
    times: dict[str, tuple[int, float]] = {}
    for event in prof.key_averages():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(event, "self_device_time_total", 0.0) if cuda else event.self_cpu_time_total
        if us > 0:
            times[event.key] = (event.count, us)
    total = sum(us for _, us in times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda kv: -kv[1][1])
    rows = [(name, count, us) for name, (count, us) in ranked[:top]]
    rest = ranked[top:]
    if rest:
        rows.append(("(other)", sum(c for _, (c, _) in rest), sum(us for _, (_, us) in rest)))
    return [{"kind": kind, "rank": i + 1, "name": name, "calls_per_step": count / steps,
             "calls_per_layer_step": count / steps / layers, "ms_per_step": us / 1e3 / steps, "share": us / total}
            for i, (name, count, us) in enumerate(rows)]


def copy_bandwidth(device: str, gib: float = 1.0, repeats: int = 20) -> float:
    """Device memory bandwidth in bytes/s (bytes read plus bytes written) of a device-to-device copy."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), device) for _ in range(repeats)]
    return 2 * n / statistics.median(times)


def weight_bytes(model) -> int:
    from liger.cache import tensor_nbytes

    return tensor_nbytes(list(model.parameters()))


def build_variant(variant: str, model_dir: Path | None, shape: str | None, device: str, dtype: torch.dtype,
                  liger_options: dict | None = None):
    """A base variant (`base_eager`, `base_sdpa`, `base_static_compile`: the last two with sdpa attention), or a
    Liger method name, or METHOD_fused (converted from the base with sdpa attention)."""
    import liger
    from liger.shapes import random_model

    attn = "eager" if variant == "base_eager" else "sdpa"
    if model_dir is not None:
        model = liger.load(model_dir, dtype=dtype, attn_implementation=attn).to(device).eval()
    else:
        model = random_model(shape, dtype=dtype, device=device, attn_implementation=attn)
    if variant not in BASE_VARIANTS:
        opts = dict(liger_options or {"method": variant.removesuffix(FUSED)})
        liger.linearize(model, opts.pop("method"), **opts)
    return model


def make_decoder(model, variant: str, liger_decoder: str, batch: int, prefill_chunk: int | None,
                 static_compile: bool | None = None):
    """`generate` with a static cache for `base_static_compile`; the transformers loop for the other base variants,
    `--liger-decoder hf` and layers GraphDecoder does not cover; GraphDecoder for the rest (METHOD_fused: with
    `fused=True`, or a one-line error where that cannot run)."""
    if variant.endswith(FUSED):
        return GraphDecoderAdapter(model, batch, prefill_chunk, fused=True)
    if variant == "base_static_compile":
        return StaticCompileDecoder(model, static_compile)
    if variant.startswith("base_") or liger_decoder == "hf":
        return HFDecoder(model)
    try:
        return GraphDecoderAdapter(model, batch, prefill_chunk)
    except LigerError:  # e.g. LoLCATs layers or softmax_layers
        return HFDecoder(model)


def _check_source(model_dir: Path | None, shape: str | None, liger_decoder: str) -> None:
    if (model_dir is None) == (shape is None):
        raise LigerError("give exactly one of a model folder (--model) or a shape (--shape)")
    if liger_decoder not in ("graph", "hf"):
        raise LigerError(f"--liger-decoder must be graph or hf, got {liger_decoder!r}")


def _describe(df: pd.DataFrame, device: str, dtype: torch.dtype, model_dir: Path | None, shape: str | None,
              bandwidth: float) -> pd.DataFrame:
    cuda = device.startswith("cuda")
    df["copy_tb_s"] = bandwidth / 1e12
    df["device"] = torch.cuda.get_device_name() if cuda else "cpu (small lengths; not the paper's setting)"
    df["dtype"] = str(dtype).removeprefix("torch.")
    df["weights"] = str(model_dir) if model_dir else f"random ({shape} shape)"
    return df


def kernels_path(out_csv: Path, suffix: str = ".csv") -> Path:
    """Where `profile(kernels=...)` writes its table: beside the CSV, `NAME_kernels.csv` (and `.md`)."""
    return out_csv.with_name(f"{out_csv.stem}_kernels{suffix}")


def profile(out_csv: Path, *, model_dir: Path | None = None, shape: str | None = None, variants: list[str],
            lengths: list[int], new_tokens: int = 128, batch: int = 1, methods: dict | None = None,
            liger_decoder: str = "graph", prefill_chunk: int | None = 4096, static_compile: bool | None = None,
            kernels: int = 0) -> pd.DataFrame:
    """Measure every (variant, length) point and write the CSV (atomically). CPU runs say so in `device`.

    Liger variants decode with `liger.decode.GraphDecoder` (liger_decoder="graph") or the transformers loop
    ("hf"); `base_static_compile` with `generate` and a static cache (`static_compile`: see
    `StaticCompileDecoder`); the other base variants with the transformers loop. On CUDA the CSV also records the
    measured copy bandwidth and the weight-read floor of one decoding step (all weights read once at that
    bandwidth); `state_gib` is the decoding state (key/value cache or recurrent state) after the last step.
    `kernels` > 0 traces that many decoding steps per point and writes the top kernels beside the CSV.
    """
    _check_source(model_dir, shape, liger_decoder)
    if kernels < 0 or (kernels and kernels >= new_tokens):
        raise LigerError(f"--kernels must be between 0 and --new-tokens - 1 ({new_tokens - 1}), got {kernels}")
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    cuda = device.startswith("cuda")
    bandwidth = copy_bandwidth(device) if cuda else float("nan")
    rows, kernel_rows = [], []
    for variant in variants:
        model = build_variant(variant, model_dir, shape, device, dtype, (methods or {}).get(variant))
        decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk, static_compile)
        weights = weight_bytes(model)
        floor_ms = 1e3 * weights / bandwidth
        for n in tqdm(lengths, desc=variant, unit="len"):
            try:
                point = measure(decoder, n, new_tokens, batch, device, model.config.vocab_size)
                if kernels:
                    for k in trace_kernels(decoder, n, kernels, batch, device, model.config.vocab_size,
                                           model.config.num_hidden_layers):
                        kernel_rows.append({"variant": variant, "decoder": decoder.name, "length": n,
                                            "batch": batch, **k})
            except torch.OutOfMemoryError:
                point = {"status": "OOM"}
                decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk,
                                       static_compile)  # drop its buffers
                _free(device)
            rows.append({"variant": variant, "decoder": decoder.name, "length": n, "batch": batch, **point,
                         "weights_gib": weights / 2**30, "floor_ms": floor_ms})
        del model, decoder
        _free(device)
    df = pd.DataFrame(rows).reindex(columns=[*COLUMNS, "state_gib", "weights_gib", "floor_ms"])
    df = _describe(df, device, dtype, model_dir, shape, bandwidth)
    write_text_atomic(out_csv, df.to_csv(index=False))
    if kernels:
        kdf = pd.DataFrame(kernel_rows, columns=KERNEL_COLUMNS)
        write_text_atomic(kernels_path(out_csv), kdf.to_csv(index=False))
        write_text_atomic(kernels_path(out_csv, ".md"), kernels_markdown(kdf, kernels, df["device"].iloc[0]))
    return df


def kernels_markdown(kdf: pd.DataFrame, steps: int, device: str) -> str:
    """One table per (variant, length): the top kernels of a decoding step."""
    lines = [f"# Where a decoding step's time goes ({device}; torch.profiler over {steps} steps, self time)", ""]
    if (kdf["kind"] == "cpu op").any():
        lines += ["CPU ops; `ProfilerStep*` is the time of a step spent outside any op (Python, the loop).", ""]
    for (variant, length), g in kdf.groupby(["variant", "length"], sort=False):
        total = g["ms_per_step"].sum()
        lines += [f"## {variant}, context {length} ({g['decoder'].iloc[0]}; batch {g['batch'].iloc[0]}; "
                  f"{total:.3f} ms of {g['kind'].iloc[0]}s per step)", "",
                  "| # | name | calls / step | calls / layer / step | ms / step | share |", "|---|---|---|---|---|---|"]
        for r in g.itertuples():
            name = str(r.name)[:90].replace("|", "/")
            lines.append(f"| {r.rank} | `{name}` | {r.calls_per_step:.1f} | {r.calls_per_layer_step:.2f} "
                         f"| {r.ms_per_step:.4f} | {100 * r.share:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def read_paper_table9(path: Path = PAPER_TABLE9) -> pd.DataFrame:
    """The paper's Table 9 (config/paper_table9.csv): variant, paper_name, generated, seconds, memory_gb, status."""
    if not Path(path).is_file():
        raise LigerError(f"--paper-table: no file {path}; give the CSV of the paper's Table 9 "
                         "(config/paper_table9.csv in the repository)")
    return pd.read_csv(path)


def join_paper(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our Table 9 rows with the paper's (same variant and generated tokens) beside: paper_s, paper_gb,
    paper_status, paper_name (empty where the paper has no such row, e.g. `base_static_compile`)."""
    theirs = paper.rename(columns={"seconds": "paper_s", "memory_gb": "paper_gb", "status": "paper_status"})
    theirs = theirs[["variant", "generated", "paper_name", "paper_s", "paper_gb", "paper_status"]]
    return df.merge(theirs, on=["variant", "generated"], how="left", validate="many_to_one")


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def table9_markdown(joined: pd.DataFrame) -> str:
    """Ours beside the paper's A800 numbers, one row per (generated, variant)."""
    first = joined.iloc[0]
    lines = [f"# Table 9 protocol: {first['weights']}, {first['device']}, {first['dtype']}, batch {first['batch']}, "
             f"{first['prompt']}-token prompt", "",
             "Total seconds to generate N tokens (prompt included) and peak memory (GiB, torch's allocator). "
             "Paper: Liger (arXiv 2503.01496v2) Table 9, one A800 80GB, its memory column labelled GB.", "",
             "| N | variant | decoder | ours s | ours ms/token | ours GiB | paper s (A800) | paper GB "
             "| ours / paper s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in joined.sort_values("generated", kind="stable").itertuples():
        ours_s = f"{r.total_s:.2f}" if r.status == "ok" else r.status
        if r.status == "skipped" and isinstance(r.note, str):
            ours_s += f" ({r.note})"
        ms = f"{r.ms_per_token:.2f}" if r.status == "ok" else ""
        gib = f"{r.peak_gib:.2f}" if r.status == "ok" and pd.notna(r.peak_gib) else ""
        if pd.isna(r.paper_status):
            paper_s = paper_gb = ratio = ""
        elif r.paper_status != "ok":
            paper_s, paper_gb, ratio = r.paper_status, "", ""
        else:
            paper_s, paper_gb = f"{r.paper_s:.2f}", f"{r.paper_gb:.2f}"
            ratio = f"{r.total_s / r.paper_s:.2f}" if r.status == "ok" else ""
        lines.append(f"| {_tokens(r.generated)} | {r.variant} | {r.decoder} | {ours_s} | {ms} | {gib} | {paper_s} "
                     f"| {paper_gb} | {ratio} |")
    return "\n".join(lines) + "\n"


def _write_table9(rows: list[dict], out_csv: Path, paper: pd.DataFrame, describe) -> pd.DataFrame:
    df = describe(pd.DataFrame(rows).reindex(columns=[*TABLE9_COLUMNS, "note"]))
    write_text_atomic(out_csv, df.to_csv(index=False))
    write_text_atomic(out_csv.with_suffix(".md"), table9_markdown(join_paper(df, paper)))
    return df


def table9(out_csv: Path, *, model_dir: Path | None = None, shape: str | None = None, variants: list[str],
           generated: list[int] = TABLE9_GENERATED, batch: int = 16, prompt_len: int = 128,
           methods: dict | None = None, liger_decoder: str = "graph", prefill_chunk: int | None = 4096,
           static_compile: bool | None = None, max_seconds: float | None = None, paper: Path = PAPER_TABLE9,
           resume: bool = False) -> pd.DataFrame:
    """The paper's Table 9 protocol: per variant and N, the total seconds to generate N tokens after a random
    `prompt_len`-token prompt at batch `batch`, and the peak memory. Writes the CSV and, beside it (`.md`), the
    table with the paper's numbers, after every point (a run cut short keeps what it measured).

    A point that runs out of memory is OOM and the larger N of that variant are skipped; with `max_seconds`, a
    point predicted (linearly from the last one) to take longer is skipped. `resume` keeps the measured rows of
    an existing CSV of the same setting (model, device, batch, prompt) and measures only the others.
    """
    _check_source(model_dir, shape, liger_decoder)
    if batch < 1 or prompt_len < 1 or not generated or min(generated) < 2:
        raise LigerError("Table 9 needs --batch-size >= 1, --prompt-length >= 1 and every --generated >= 2")
    paper_df = read_paper_table9(paper)
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)

    def describe(df: pd.DataFrame) -> pd.DataFrame:
        df = _describe(df, device, dtype, model_dir, shape, float("nan")).drop(columns="copy_tb_s")
        df["prompt"] = prompt_len
        return df

    rows: list[dict] = []
    if resume and out_csv.is_file():
        old = pd.read_csv(out_csv)
        same = describe(pd.DataFrame([{"batch": batch}])).iloc[0]
        keep = old["status"].isin(["ok", "OOM"]) & (old["batch"] == batch) & (old["prompt"] == prompt_len)
        for col in ("device", "dtype", "weights"):
            keep &= old[col] == same[col]
        rows = old[keep & old["variant"].isin(variants) & old["generated"].isin(generated)].to_dict("records")
    done = {(r["variant"], r["generated"]) for r in rows}
    for variant in variants:
        todo = [n for n in sorted(generated) if (variant, n) not in done]
        if not todo:
            continue
        model = build_variant(variant, model_dir, shape, device, dtype, (methods or {}).get(variant))
        decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk, static_compile)
        last: tuple[int, float] | None = None
        oom_at: int | None = None
        for n in tqdm(todo, desc=variant, unit="N"):
            point: dict
            if oom_at is not None:
                point = {"status": "skipped", "note": f"OOM at N={oom_at}"}
            elif max_seconds and last and last[1] * n / last[0] > max_seconds:
                point = {"status": "skipped", "note": f"predicted {last[1] * n / last[0]:.0f} s > --max-seconds"}
            else:
                try:
                    point = measure_total(decoder, prompt_len, n, batch, device, model.config.vocab_size)
                    last = (n, point["total_s"])
                except torch.OutOfMemoryError:
                    point, oom_at = {"status": "OOM"}, n
                    decoder = make_decoder(model, variant, liger_decoder, batch, prefill_chunk, static_compile)
                    _free(device)
            rows.append({"variant": variant, "decoder": decoder.name, "generated": n, "batch": batch, **point})
            _write_table9(_ordered(rows, variants), out_csv, paper_df, describe)
        del model, decoder
        _free(device)
    return _write_table9(_ordered(rows, variants), out_csv, paper_df, describe)


def _ordered(rows: list[dict], variants: list[str]) -> list[dict]:
    return sorted(rows, key=lambda r: (variants.index(r["variant"]), r["generated"]))


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _mark_oom(ax, g: pd.DataFrame, x: str, label: str) -> None:
    for n in g.loc[g["status"] == "OOM", x]:
        ax.axvline(n, color="grey", ls=":", lw=1)
        ax.annotate(f"{label}: OOM", (n, ax.get_ylim()[1]), rotation=90, va="top", fontsize=7)


def plot(csv: Path, out_prefix: Path, paper: Path = PAPER_TABLE9) -> list[Path]:
    """Latency and memory against context length (log-2 x axis), one line per variant, OOM marked. A Table 9 CSV
    (`--protocol table9`) gives total seconds and peak memory against N instead, the paper's A800 numbers dashed
    beside ours (`PREFIX_table9_seconds.png`, `PREFIX_table9_memory.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(csv)
    if "generated" in df.columns:
        return _plot_table9(df, out_prefix, read_paper_table9(paper) if Path(paper).is_file() else None)
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
            _mark_oom(ax, g, "length", variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.set_title(f"{df['weights'].iloc[0]}, {df['device'].iloc[0]}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_prefix.with_name(f"{out_prefix.name}_{suffix}.png")))
    return written


def _plot_table9(df: pd.DataFrame, out_prefix: Path, paper: pd.DataFrame | None) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for ours, theirs, label, suffix in [("total_s", "seconds", "total decoding time (s)", "seconds"),
                                        ("peak_gib", "memory_gb", "peak GPU memory (GiB; paper: GB)", "memory")]:
        if df[ours].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (variant, g) in enumerate(df.groupby("variant", sort=False)):
            color = f"C{i}"
            ok = g[g["status"] == "ok"]
            ax.plot(ok["generated"], ok[ours], marker="o", color=color, label=f"{variant} (ours)")
            _mark_oom(ax, g, "generated", variant)
            if paper is not None:
                p = paper[(paper["variant"] == variant) & (paper["status"] == "ok")]
                if len(p):
                    ax.plot(p["generated"], p[theirs], marker="x", ls="--", color=color,
                            label=f"{variant} (paper, A800)")
        ax.set_xscale("log", base=2)
        if suffix == "seconds":
            ax.set_yscale("log")
        ax.set_xlabel("generated tokens N")
        ax.set_ylabel(label)
        first = df.iloc[0]
        ax.set_title(f"Table 9 protocol: {first['weights']}, {first['device']}, batch {first['batch']}, "
                     f"{first['prompt']}-token prompt", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_prefix.with_name(f"{out_prefix.name}_table9_{suffix}.png")))
    return written


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise LigerError(f"{flag}: give comma-separated integers, e.g. 1024,2048; got {text!r}") from None
    return values


def _cli(args: argparse.Namespace) -> int:
    static_compile = {"auto": None, "on": True, "off": False}[args.static_compile]
    common = dict(model_dir=args.model, shape=args.shape, variants=args.variants.split(","), methods=args.methods,
                  liger_decoder=args.liger_decoder, prefill_chunk=args.prefill_chunk or None,
                  static_compile=static_compile)
    if args.protocol == "table9":
        df = table9(args.out, generated=_ints("--generated", args.generated), batch=args.batch_size or 16,
                    prompt_len=args.prompt_length, max_seconds=args.max_seconds, paper=args.paper_table,
                    resume=args.resume, **common)
        if args.plot:
            plot(args.out, args.plot, args.paper_table)
        print(args.out.with_suffix(".md").read_text())
        return 0
    df = profile(args.out, lengths=_ints("--lengths", args.lengths), new_tokens=args.new_tokens,
                 batch=args.batch_size or 1, kernels=args.kernels, **common)
    if args.plot:
        plot(args.out, args.plot)
    print(df[COLUMNS].to_string(index=False))
    if df["copy_tb_s"].notna().any():
        floors = df.groupby("variant", sort=False)["floor_ms"].first()
        print(f"copy bandwidth {df['copy_tb_s'].iloc[0]:.2f} TB/s; weight-read floor per decoding step: "
              + ", ".join(f"{v} {ms:.2f} ms" for v, ms in floors.items()))
    if args.kernels:
        print(f"top kernels per decoding step: {kernels_path(args.out, '.md')}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="decode latency, prefill throughput and memory against context length; "
                                       "the paper's Table 9 protocol")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="model folder (real weights)")
    src.add_argument("--shape", help="random weights of a named shape (liger.shapes: smollm2-135m, llama3-8b)")
    p.add_argument("--protocol", choices=("latency", "table9"), default="latency",
                   help="latency: per-token latency at each context length (--lengths, --new-tokens); table9: the "
                        "paper's Table 9, total seconds and peak memory to generate N tokens (--generated) at batch "
                        "16 after a 128-token prompt, with the paper's A800 numbers beside (OUT.md)")
    p.add_argument("--variants", default="base_eager,base_sdpa,base_static_compile,liger_gla",
                   help="comma-separated: base_eager (w/o FA2), base_sdpa (w/ FA2), base_static_compile (generate "
                        "with a static cache, compiled step), Liger method names; liger_gla_fused: Liger-GLA with "
                        "its decoding step in one kernel (liger.ops.fused_step)")
    p.add_argument("--methods", type=json_object_arg('{"gla64": {"method": "liger_gla", "window": 64}}'),
                   help="JSON {variant: Liger options} for variants named other than their method")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="latency: context lengths")
    p.add_argument("--new-tokens", type=int, default=128, help="latency: timed decoding steps per length")
    p.add_argument("--generated", default=",".join(map(str, TABLE9_GENERATED)),
                   help="table9: the numbers N of tokens to generate")
    p.add_argument("--prompt-length", type=int, default=128, help="table9: prompt tokens (random)")
    p.add_argument("--max-seconds", type=float,
                   help="table9: skip a point predicted (linearly from the variant's last) to take longer")
    p.add_argument("--resume", action="store_true",
                   help="table9: keep the measured rows of an existing --out of the same setting")
    p.add_argument("--paper-table", type=Path, default=PAPER_TABLE9, help="table9: the paper's numbers (CSV)")
    p.add_argument("--batch-size", type=int, help="default 1 (latency) or 16 (table9)")
    p.add_argument("--liger-decoder", choices=("graph", "hf"), default="graph",
                   help="Liger variants: graph = liger.decode.GraphDecoder (CUDA graph + torch.compile on CUDA), "
                        "hf = the transformers forward loop")
    p.add_argument("--prefill-chunk", type=int, default=4096,
                   help="Liger prefill in chunks of this many tokens (0: whole prompt); memory stays flat")
    p.add_argument("--static-compile", choices=("auto", "on", "off"), default="auto",
                   help="base_static_compile: auto = transformers decides (compiles on CUDA only), on = compile on "
                        "any device, off = never")
    p.add_argument("--kernels", type=int, default=0,
                   help="latency: trace this many decoding steps per point with torch.profiler and write the top "
                        "kernels to OUT_kernels.csv / .md (0: off)")
    p.add_argument("--out", type=Path, required=True, help="CSV file (table9: and the Markdown table beside, .md)")
    p.add_argument("--plot", type=Path, help="write PNGs as PREFIX_latency.png, PREFIX_memory.png, ... "
                                             "(table9: PREFIX_table9_seconds.png, PREFIX_table9_memory.png)")
    p.set_defaults(func=_cli)
