"""Where a stage runs: CUDA when available, in bf16 there and fp32 on the CPU, unless the user says otherwise."""

from __future__ import annotations

import argparse
import json

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


def load_for_inference(model_dir, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
                       layer_options: dict | None = None):
    """A saved model (base or Liger; `layer_options` as `liger.load`'s) on the resolved device and dtype, in eval
    mode; returns (model, device)."""
    from liger.convert import load

    dev = resolve_device(device)
    model = load(model_dir, dtype=resolve_dtype(dtype, dev), layer_options=layer_options).to(dev).eval()
    return model, dev


def add_layer_options_arg(parser: argparse.ArgumentParser) -> None:
    """`--layer-options JSON`: score a converted model's weights with other runtime layer settings."""
    parser.add_argument("--layer-options", type=_json_object, metavar="JSON",
                        help='other runtime layer settings for a converted model, e.g. \'{"window_shape": "sliding"}\' '
                             "(LoLCATs: the window it decodes with); the weights are unchanged")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. '{{\"window_shape\": \"sliding\"}}': {text}")
    return value
