"""Command-line pieces that several `liger` commands share: JSON-object values (`--options`, `--layer-options`,
`--methods`, and the options files beside adapters) and the probes' common flags."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liger.errors import LigerError

OPTIONS_EXAMPLE = '{"method": "liger_gla"}'


def json_object(text: str, example: str = OPTIONS_EXAMPLE, *, flag: str | None = None, null: bool = False,
                file: bool = False) -> dict[str, Any] | None:
    """The JSON object in `text`: with `file`, the JSON file `text` names also counts; with `null`, ``null`` gives
    None. Otherwise a LigerError naming `flag` (when given) and what is wrong, with `example` as a hint."""
    source = text
    if file and not text.lstrip().startswith(("{", "null")) and Path(text).is_file():
        source = Path(text).read_text(encoding="utf-8")
    where = f"{flag} {text!r}" if flag else repr(text)
    try:
        value = json.loads(source)
    except json.JSONDecodeError as e:
        raise LigerError(f"{where}: not JSON ({e.msg})") from None
    if value is None and null:
        return None
    if not isinstance(value, dict):
        raise LigerError(f"{where}: a JSON object is needed, e.g. '{example}'")
    return value


def json_object_arg(example: str = OPTIONS_EXAMPLE, **kwargs: bool) -> Callable[[str], dict[str, Any] | None]:
    """`json_object` as an argparse type: a bad value is a usage error of its flag."""

    def parse(text: str) -> dict[str, Any] | None:
        try:
            return json_object(text, example, **kwargs)
        except LigerError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_probe_parser(sub: Any, name: str, help: str, doc: str,
                     model_help: str = "saved model folder (base or Liger)") -> argparse.ArgumentParser:
    """A probe's subcommand, described by the first line of its module's `doc`, with its --model."""
    p = sub.add_parser(name, help=help, description=doc.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help=model_help)
    return p


def add_layer_options_arg(parser: argparse.ArgumentParser) -> None:
    """`--layer-options JSON`: score a converted model's weights with other runtime layer settings."""
    from liger import methods

    runtime = {m: ", ".join(methods.get(m).runtime_options) for m in methods.names()}
    parser.add_argument("--layer-options", type=json_object_arg('{"window_shape": "sliding"}'), metavar="JSON",
                        help="other runtime options of a converted model's method ("
                             + "; ".join(f"{m}: {o}" for m, o in runtime.items() if o)
                             + "), e.g. '{\"window_shape\": \"sliding\"}' (LoLCATs: a terraced model with the sliding "
                             "window); "
                             "the weights are unchanged")


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """--device, --dtype and --layer-options: how a probe loads its model (`liger.device.load_for_inference`)."""
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    add_layer_options_arg(p)
