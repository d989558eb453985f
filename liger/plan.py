"""`liger plan`: what a config will run and roughly how long it takes here, said before the run starts."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from liger import methods

# Benchmark sizes (items in the evaluated split; lm-eval's defaults and the mirrors agree).
TASK_ITEMS = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "winogrande": 1267,
              "mmlu": 14042}
ALPACA_RECORDS = 51_802  # training records of Alpaca after the 200 validation records
TOKENS_PER_RECORD = 112  # SmolLM2 tokenizer, Alpaca template (5,798,912 tokens / 51,802 records)
# Rates measured on a 2-core CPU machine (fp32, SmolLM2-135M, 2026-11-23): LoRA fine-tuning of Liger-GLA at
# 1024-token chunks (benchmarks/bench_train.py), and lm-eval seconds per item (0-shot tasks, limit 20; MMLU
# 5-shot). Larger models are scaled by parameter count, which is rough.
CPU_TRAIN_TOK_S = 30.0
CPU_EVAL_S = {"base": 0.27, "liger": 0.37, "mmlu": 1.3}
SMOLLM2_PARAMS = 135e6


def _params(model: dict) -> float:
    """A rough parameter count from the hub id's name (e.g. 8B), the embedded model otherwise."""
    name = model.get("hf_id", "").lower()
    for token in name.replace("-", " ").replace("_", " ").split():
        if token.endswith("b") and token[:-1].replace(".", "").isdigit():
            return float(token[:-1]) * 1e9
    return SMOLLM2_PARAMS


# Method keys of the pipeline, not Liger options (workflow/rules/common.smk holds the same tuple; tested equal).
PIPELINE_KEYS = ("finetune", "control", "weights_of", "layer_options")


def plan(config: dict, resources: Path = Path("resources")) -> dict:
    """Work per model (training tokens, evaluated items) and a CPU time estimate in hours."""
    data, train, ev = config["data"], config.get("train", {}), config["eval"]
    trained = [m for m, opts in config["methods"].items()  # converted and fine-tuned (finetune: false is not)
               if set(opts) - set(PIPELINE_KEYS) and opts.get("finetune", True)]
    stages = sum(len(methods.stages(config["methods"][m].get("method"))) for m in trained)  # e.g. LoLCATs: two
    out = {}
    for name, model in config["models"].items():
        meta = resources / "data" / name / "meta.json"
        if meta.exists():
            tokens_epoch = json.loads(meta.read_text())["tokens_per_epoch"]
        else:
            records = min(data.get("limit") or ALPACA_RECORDS, ALPACA_RECORDS)
            tokens_epoch = records * TOKENS_PER_RECORD
        tokens = train.get("epochs", 2) * tokens_epoch
        if train.get("max_tokens"):
            tokens = min(tokens, train["max_tokens"])
        if train.get("max_steps"):
            seq = data.get("seq_len", 1024) * train.get("micro_batch", 1) * train.get("grad_accum", 8)
            tokens = min(tokens, train["max_steps"] * seq)
        limit = ev.get("limit")
        items = {t: (min(TASK_ITEMS[t], limit if t != "mmlu" else 57 * math.ceil(limit / 57)) if limit else
                     TASK_ITEMS[t]) for t in ev["tasks"]}
        scale = _params(model) / SMOLLM2_PARAMS
        zero_shot = sum(n for t, n in items.items() if t != "mmlu")
        mmlu = items.get("mmlu", 0)
        eval_s = (zero_shot * CPU_EVAL_S["base"] + mmlu * CPU_EVAL_S["mmlu"]) * (1 + len(trained) * 1.4)
        train_s = stages * tokens / CPU_TRAIN_TOK_S
        out[name] = {"methods": list(config["methods"]), "train_tokens_per_method": int(tokens),
                     "eval_items_per_method": sum(items.values()), "training_stages": stages,
                     "cpu_hours": round(scale * (train_s + eval_s) / 3600, 1)}
    return out


def _cli(args: argparse.Namespace) -> int:
    import torch

    config = yaml.safe_load(args.configfile.read_text())
    work = plan(config)
    total = sum(w["cpu_hours"] for w in work.values())
    for name, w in work.items():
        print(f"{name}: methods {', '.join(w['methods'])}; {w['train_tokens_per_method']:,} training tokens per "
              f"trained method; {w['eval_items_per_method']:,} benchmark items per method")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}; the CPU estimate ({total:.1f} h) does not apply.")
    else:
        print(f"No GPU: on this CPU the whole run takes about {total:.1f} hours (rates measured on 2 cores; "
              "Liger fine-tuning on CPU runs the chunked PyTorch path).")
        if total > 1:
            print("For a quick end-to-end check: make run CONFIG=config/smoke.yaml (a few minutes), or "
                  "snakemake --cores 2 --configfile config/smoke.yaml")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="what a config will run and how long it takes on this machine")
    p.add_argument("--configfile", type=Path, default=Path("config/config.yaml"))
    p.set_defaults(func=_cli)
