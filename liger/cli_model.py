"""Model commands: `fetch-model` (the embedded SmolLM2 or a hub model as a local Hugging Face folder),
`convert` (a base model linearized with given options and saved untrained, e.g. the base_window control) and
`merge` (a trained model rebuilt from the base model and the small files a run publishes: a LoRA adapter, the
parameters a conversion added)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from liger.cli_args import json_object
from liger.convert import ADDED_WEIGHTS
from liger.errors import LigerError
from liger.fileio import atomic_dir, atomic_target, check_output, claim_dir, write_json_atomic
from liger.models import EMBEDDED, fetch_embedded, is_fetched, load_hub, load_tokenizer, save_model_dir


def fetch_model(args: argparse.Namespace) -> None:
    out = args.out or Path("resources/models") / args.name
    if args.hf_id:
        if is_fetched(out):
            print(f"{out}: already there")
            return
        from liger.convert import check_supported

        check_output(out, "fetch-model")
        model, tokenizer = load_hub(args.hf_id, dtype="auto")
        check_supported(model.config)
        save_model_dir(model, out, tokenizer, "fetch-model")
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
    import liger
    from liger.convert import linearize_base, split_method

    method, options = split_method(options)
    inputs = {"--model": model_dir}
    check_output(out, "convert", inputs=inputs)
    model = linearize_base(liger.load(model_dir, dtype="auto"), method, options, model_dir)
    save_model_dir(model, out, load_tokenizer(model_dir), "convert", inputs=inputs)
    return out


def _convert_cli(args: argparse.Namespace) -> None:
    options = json_object(args.options, flag="--options")
    print(f"{convert(args.model, options, args.out)}: converted with {options}, not trained")


DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}


def merge(model_dir: Path, out: Path, adapter: Path | None = None, added: Path | None = None,
          dtype: str = "auto", command: str | None = "merge") -> Path:
    """The base model in `model_dir`, converted and given the `added` parameters and/or the LoRA `adapter`
    (merged), saved as a model folder at `out` (what `finetune` / `transfer` write as OUT/model). `command`: whose
    output `out` is (`liger.fileio.atomic_dir`; None: a part of an output folder the caller claimed)."""
    import liger

    if adapter is None and added is None:
        raise LigerError("merge needs --adapter and/or --added: there is nothing to merge into the base model")
    for folder in (adapter, added):
        if folder is not None and not folder.is_dir():
            raise LigerError(f"{folder}: no such folder")
    inputs = {"--model": model_dir, "--adapter": adapter, "--added": added} if command else None
    if command:
        check_output(out, command, inputs=inputs)
    model = liger.load(model_dir, adapter=adapter, added=added, dtype=DTYPES[dtype])
    try:
        tokenizer = load_tokenizer(model_dir, required=False)
    except LigerError:  # a broken tokenizer: the weights alone, as without one
        tokenizer = None
    save_model_dir(model, out, tokenizer, command, inputs=inputs)
    return out


RUN_FILES = ("summary.json", "train_log.csv")
# The commands whose output folder `restore` may write over (the pipeline writes a run or restores it, by config)
RUN_COMMANDS = ("finetune", "transfer")
# The weight file of each kind of published run (git keeps a run's configs, summaries and logs, not its weights)
RUN_WEIGHTS = {"adapter": "adapter_model.safetensors", "added": ADDED_WEIGHTS}


def restore(model_dir: Path, run_dir: Path, out: Path) -> Path:
    """A published training run (a `finetune` or `transfer` OUT without its model/: ``adapter/``, ``added/`` or
    both (a fine-tune that trained parameters its conversion added), ``summary.json``, ``train_log.csv``)
    restored as a full OUT: model/ rebuilt on `model_dir` by `merge`."""
    import shutil

    check_output(out, "restore", accept=RUN_COMMANDS, inputs={"--model": model_dir, "--run": run_dir})
    parts = [name for name in RUN_WEIGHTS if (run_dir / name).is_dir()]
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if not parts or missing:
        raise LigerError(f"{run_dir}: not a published run: it needs adapter/, added/ or both (found neither) and "
                         f"{', '.join(RUN_FILES)} (missing: {missing or 'none'})")
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LigerError(f"{run_dir / 'summary.json'}: not JSON ({e.msg}); copy the run again") from e
    for part in parts:
        weights = run_dir / part / RUN_WEIGHTS[part]
        if not weights.is_file():
            raise LigerError(f"{weights}: missing. The repository keeps a published run's configs, summaries and "
                             "logs but not its weights: copy the run's weight file there "
                             "(results/published/gpu-runs/README.md)")
    claim_dir(out, "restore", accept=RUN_COMMANDS)
    merge(model_dir, out / "model", command=None, **{part: run_dir / part for part in parts})
    for part in parts:
        with atomic_dir(out / part) as tmp:
            shutil.copytree(run_dir / part, tmp, dirs_exist_ok=True)
    with atomic_target(out / "train_log.csv") as tmp:
        shutil.copyfile(run_dir / "train_log.csv", tmp)
    write_json_atomic(out / "summary.json", {**summary, "restored_from": str(run_dir)})
    return out


def _restore_cli(args: argparse.Namespace) -> None:
    out = restore(args.model, args.run, args.out)
    print(f"{out}: restored from {args.run} on {args.model}")


def _merge_cli(args: argparse.Namespace) -> None:
    out = merge(args.model, args.out, adapter=args.adapter, added=args.added, dtype=args.dtype)
    print(f"{out}: {args.model} with {', '.join(str(p) for p in (args.added, args.adapter) if p)}")


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

    p = sub.add_parser("merge", help="rebuild a trained model folder from the base model and a run's adapter / "
                                     "added parameters")
    p.add_argument("--model", required=True, type=Path, help="base model folder (unconverted)")
    p.add_argument("--adapter", type=Path, help="LoRA adapter folder (finetune OUT/adapter), merged")
    p.add_argument("--added", type=Path, help="added-parameters folder (transfer OUT/added, or a finetune's that "
                   "trained added parameters), loaded first")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                   help="weights' dtype (auto: the base model's stored dtype)")
    p.add_argument("--out", required=True, type=Path, help="output model folder")
    p.set_defaults(func=_merge_cli)

    p = sub.add_parser("restore", help="restore a published training run (adapter/, added/ or both, summary, log) "
                                       "as a full finetune / transfer output")
    p.add_argument("--model", required=True, type=Path,
                   help="the model the run trained on (base model; a LoLCATs stage 2: the stage-1 model)")
    p.add_argument("--run", required=True, type=Path, help="published run folder, e.g. "
                   "results/published/gpu-runs/RUN/finetuned/MODEL/METHOD")
    p.add_argument("--out", required=True, type=Path, help="output folder (writes model/, adapter/ and/or added/, "
                   "summary.json, train_log.csv)")
    p.set_defaults(func=_restore_cli)
