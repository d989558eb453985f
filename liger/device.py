"""Where a stage runs: CUDA when available, in bf16 there and fp32 on the CPU, unless the user says otherwise."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch

from liger.errors import LigerError


def resolve_device(device: str | None) -> str:
    """`auto`/None: cuda when available, else cpu; anything else as given."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere, unless given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}  # fmt: skip
    if dtype not in names:
        raise LigerError(f"unknown dtype {dtype!r}; choose auto, {', '.join(names)}")
    return names[dtype]


def synchronize(device: str | torch.device) -> None:
    """Wait until the device has run the work queued on it (CUDA; other devices run it at once)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: str | torch.device) -> float:
    """Seconds one call of `fn` takes, the device's work included (synchronised before and after)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def device_name(device: torch.device) -> str:
    """The device as a summary records it: the GPU's name, or the CPU's and its threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_for_inference(model_dir, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
                       layer_options: dict | None = None):
    """A saved model (base or Liger; `layer_options` as `liger.load`'s) on the resolved device and dtype, in eval
    mode; returns (model, device)."""
    from liger.convert import load

    dev = resolve_device(device)
    model = load(model_dir, dtype=resolve_dtype(dtype, dev), layer_options=layer_options).to(dev).eval()
    return model, dev

