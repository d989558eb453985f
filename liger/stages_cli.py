"""`liger finetune` and `liger transfer`: the training stages' subcommands, one flag per `TrainConfig` field.

A flag not given leaves its field to the method's recipe (`liger.train_config.default_train_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liger.cli_args import json_object_arg
from liger.loop import fmt_loss
from liger.methods import RECIPE_FIELDS
from liger.train import finetune
from liger.train_config import TrainConfig, default_train_config
from liger.transfer import transfer


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(float(text))


def _add_config_flags(p: argparse.ArgumentParser, recipe_note: str = "") -> None:
    """One flag per TrainConfig field; a flag not given leaves the field to the method's recipe."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, list) else default
        note = f"(default {shown}{recipe_note if f.name in RECIPE_FIELDS else ''})"
        if f.name == "progress":
            p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                           help="no progress bar")
        elif f.name == "lora_targets":
            p.add_argument(flag, default=argparse.SUPPRESS, type=lambda s: [t for t in s.split(",") if t],
                           help=f"comma-separated module names {note}")
        elif f.type == "int | None":
            p.add_argument(flag, type=_optional_int, default=argparse.SUPPRESS, help=note)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), type(default))
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=note)


def config_from_args(args: argparse.Namespace, options: dict | None, stage: str = "lora") -> TrainConfig:
    """The method's recipe (`default_train_config`) with the flags that were given on top."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**{**dataclasses.asdict(default_train_config(options, stage)), **given})


def add_stage_cli(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str,
                  options_help: str, recipe_note: str) -> argparse.ArgumentParser:
    """A training stage's subcommand: --model, --data, --out, --options and one flag per TrainConfig field."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--model", required=True, type=Path, help="base model folder")
    p.add_argument("--data", required=True, type=Path, help="prepare-data output folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--options", required=True, type=json_object_arg(null=True, file=True), help=options_help)
    p.add_argument("--restart", action="store_true",
                   help="delete OUT/checkpoints and train from the start (a resume needs the checkpoint's settings)")
    _add_config_flags(p, recipe_note)
    p.set_defaults(func=func)
    return p


def _cli_finetune(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, args.options)
    summary = finetune(args.model, args.data, args.out, options=args.options, train=cfg, restart=args.restart)
    if summary["status"] == "skipped":
        print(f"{args.out}: method base, nothing trained")
    else:
        print(f"{args.out}: {summary['optimizer_steps']} steps, {summary['tokens_trained']} tokens, "
              f"val loss {fmt_loss(summary['initial_val_loss'])} -> {fmt_loss(summary['final_val_loss'])} "
              f"(unconverted model: {fmt_loss(summary.get('base_val_loss'))})")
    return 0


def _cli_transfer(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, args.options, "transfer")
    summary = transfer(args.model, args.data, args.out, options=args.options, train=cfg, restart=args.restart)
    print(f"{args.out}: {summary['optimizer_steps']} steps, {summary['tokens_trained']} tokens, "
          f"val loss {fmt_loss(summary['initial_val_loss'])} -> {fmt_loss(summary['final_val_loss'])}")
    return 0


def add_cli(sub: Any) -> None:
    """Add the `finetune` and `transfer` subcommands."""
    add_stage_cli(
        sub, "finetune", _cli_finetune,
        help="linearize a model and fine-tune LoRA on the packed Alpaca chunks",
        description="Linearize (liger.linearize with --options), attach LoRA, train; resumes from "
                    "OUT/checkpoints. Writes OUT/{adapter,model,train_log.csv,summary.json}. For lolcats this is "
                    "stage 2: --model is the stage-1 (liger transfer) OUT/model.",
        options_help='Liger method and options as JSON, e.g. \'{"method": "liger_gla"}\' (or a JSON file); '
                     '\'{"method": "base"}\' trains nothing',
        recipe_note="; lolcats: its variant's stage-2 recipe",
    )
    add_stage_cli(
        sub, "transfer", _cli_transfer,
        help="LoLCATs stage 1: train the feature maps to match softmax attention (attention transfer)",
        description="Convert with lolcats --options, train the feature maps (and window factors) on the packed "
                    "chunks; resumes from OUT/checkpoints. Writes OUT/{model,added,train_log.csv,summary.json} "
                    "(added: the trained parameters alone); stage 2 is `liger finetune --model OUT/model` with the "
                    "same --options.",
        options_help='LoLCATs options as JSON, e.g. \'{"method": "lolcats"}\' or '
                     '\'{"method": "lolcats", "variant": "liger"}\' (or a JSON file)',
        recipe_note="; lolcats: its variant's stage-1 recipe",
    )
