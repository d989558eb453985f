"""Benchmark evaluation with lm-eval: the paper's six tasks on a base or Liger model.

`evaluate()` (CLI: `python -m liger evaluate`) scores PiQA, ARC-e, ARC-c, HellaSwag, WinoGrande (0-shot) and
MMLU (5-shot) with `lm_eval.simple_evaluate` and the lm-eval model `liger` (`liger.eval_model.LigerLM`). Prompts
and metrics are lm-eval 0.4.13's. Two data sources: lm-eval's own tasks (the Hugging Face hub) or, with `data_dir`,
the local tasks of `liger/tasks/` reading the offline JSONL mirrors (`liger.tasks.loading`; same prompts, checked
by tests/test_evaluate.py against the official YAMLs). The report (`metrics.json`) holds, per task, every lm-eval
metric with its stderr, the paper's metric, the chance level, each item's outcome (`liger.paired`) and, for MMLU,
its categories and subjects; each task's entry is also saved as it finishes, so an interrupted run resumes.
With `val_data` (a prepare-data folder) it also holds `val_loss`: the model's loss on that folder's validation
chunks, the measure a fine-tune logs (`liger.steps.validation_loss`), for rows that are converted and not trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liger.cli_args import add_inference_flags, add_probe_parser
from liger.convert import layer_config, saved_conversion
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.eval_model import LigerLM
from liger.fileio import sha256_file, write_json_atomic
from liger.packed import PackedData, check_vocab, load_packed
from liger.paired import record as record_items
from liger.pipeline import PAPER_METRIC, PAPER_TASKS  # the paper's tasks and the metric each reports
from liger.provenance import versions
from liger.tasks.loading import check_data, data_files, leaf_task_names, lm_eval_name, loaded_tasks
from liger.tasks.utils import MMLU_CATEGORIES, MMLU_SUBJECTS

log = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm")
MMLU_AGGREGATION = (
    "lm-eval 0.4.13 `mmlu` group acc: aggregate_metric_list weight_by_size=true, pooled over all 57 leaf "
    "subjects, i.e. the sample-weighted mean (accuracy over all items), not the mean of subject accuracies"
)


def check_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Paper task names from a list or a comma-separated string; a LigerError naming the valid ones."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n.removeprefix("liger_") for n in names if n]
    unknown = [n for n in names if n not in PAPER_TASKS]
    if unknown or not names:
        raise LigerError(
            f"unknown task(s) {', '.join(map(repr, unknown)) or '(none given)'}; valid tasks: {', '.join(PAPER_TASKS)}"
        )
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------- results


def _metrics(entry: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        if f"{m},none" in entry:
            out[m] = float(entry[f"{m},none"])
            err = entry.get(f"{m}_stderr,none")
            out[f"{m}_stderr"] = float(err) if isinstance(err, int | float) else None
    return out


def _task_report(task: str, raw: dict, samples: dict, local: bool, mmlu_limit: int | None) -> dict:
    """A paper task's entry of the metrics report from lm-eval's results and logged samples (`samples`: leaf
    task -> samples; only each item's paper metric is kept, as `items`, see `liger.paired`)."""
    name = lm_eval_name(task, local)
    results, n_samples = raw["results"], raw["n-samples"]
    entry: dict[str, Any] = {"lm_eval_task": name}
    if task != "mmlu":
        entry |= {"n": n_samples[name]["effective"], "n_total": n_samples[name]["original"],
                  "num_fewshot": raw["n-shot"][name]}  # fmt: skip
    else:
        leaves = {s: f"{'liger_' if local else ''}mmlu_{s}" for s in MMLU_SUBJECTS}
        entry |= {
            "n": sum(n_samples[leaf]["effective"] for leaf in leaves.values()),
            "n_total": sum(n_samples[leaf]["original"] for leaf in leaves.values()),
            "num_fewshot": raw["n-shot"][leaves["abstract_algebra"]],
            "limit_per_subject": mmlu_limit,
            "aggregation": MMLU_AGGREGATION,
        }
    metrics = _metrics(results[name])
    entry["metrics"] = metrics
    entry["paper_metric"] = PAPER_METRIC[task]
    entry["value"] = metrics.get(PAPER_METRIC[task])
    entry["items"] = record_items(task, PAPER_METRIC[task], [samples[leaf] for leaf in leaf_task_names(task, local)])
    if task == "mmlu":
        entry["categories"] = {
            cat: _metrics(results[f"{name}_{cat}"]) | {"n": sum(n_samples[leaves[s]]["effective"] for s in subs)}
            for cat, subs in MMLU_CATEGORIES.items()
        }
        entry["subjects"] = {
            s: _metrics(results[leaf]) | {"n": n_samples[leaf]["effective"]} for s, leaf in leaves.items()
        }
    return entry


def chance_level(task_objs: Sequence[Any], limit: int | None) -> float:
    """Accuracy of uniform guessing on the evaluated items: the mean over items of 1 / number of choices."""
    inverse = []
    for task in task_objs:
        docs = list(task.eval_docs)
        for doc in docs[:limit] if limit is not None else docs:
            inverse.append(1 / len(task.doc_to_choice(doc)))
    return sum(inverse) / len(inverse)


def _liger_options(model_path: Path, layer_options: dict | None = None) -> dict | str:
    """The conversion the model is evaluated with ("base": none), `layer_options` applied (checked early)."""
    if layer_options:
        return layer_config(model_path, layer_options).liger
    return saved_conversion(model_path) or "base"


# ----------------------------------------------------------------------------------------- evaluate


def evaluate(
    model_path: str | Path,
    out_json: str | Path,
    *,
    adapter: str | Path | None = None,
    tasks: str | Sequence[str] = PAPER_TASKS,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    mmlu_batch_size: int | None = None,
    batch_tokens: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    num_fewshot_mmlu: int = 5,
    seed: int = 0,
    layer_options: dict | None = None,
    val_data: str | Path | None = None,
) -> dict:
    """Score a saved model (base or Liger; `adapter` merged) on the paper's tasks; write and return the report.

    `data_dir`: the offline mirrors (local tasks `liger_*`); None uses lm-eval's own tasks (the hub).
    `limit`: at most N items per task for smoke runs; MMLU's is spread over its 57 subjects (ceil(N/57)
    each, lm-eval's per-task limit). MMLU runs `num_fewshot_mmlu`-shot, the others 0-shot. All lm-eval
    seeds are `seed`. `layer_options` evaluates a converted model's weights with other runtime layer settings
    (its method's `runtime_options` in `liger.methods`, e.g. {"window_shape": "sliding"}). `batch_size`: at most
    that many requests' inputs per forward (None: no cap); `mmlu_batch_size` (default `batch_size`) is MMLU's
    alone; `batch_tokens`: padded tokens per forward (None: `default_batch_tokens`). `val_data`: a prepare-data
    folder whose validation loss is added as `val_loss`. Input errors raise LigerError before the model loads.
    """
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    task_list = check_tasks(tasks)
    model_path = Path(model_path)
    out_json = Path(out_json)
    if not (model_path / "config.json").is_file():
        raise LigerError(f"--model {model_path}: no config.json; not a saved model folder")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise LigerError(f"--adapter {adapter}: no adapter_config.json; not a saved LoRA adapter")
    if limit is not None and limit < 1:
        raise LigerError(f"--limit {limit}: must be a positive number of items")
    if num_fewshot_mmlu < 0:
        raise LigerError(f"num_fewshot_mmlu={num_fewshot_mmlu}: must be >= 0")
    liger_options = _liger_options(model_path, layer_options)
    local = data_dir is not None
    if local:
        check_data(data_dir, task_list)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    for flag, value in (("--batch-size", batch_size), ("--mmlu-batch-size", mmlu_batch_size),
                        ("--batch-tokens", batch_tokens)):
        if value is not None and int(value) < 1:
            raise LigerError(f"{flag} {value}: must be >= 1")
    sizes = {"mmlu": mmlu_batch_size if mmlu_batch_size is not None else batch_size}
    mmlu_limit = math.ceil(limit / len(MMLU_SUBJECTS)) if limit is not None else None
    val = load_packed(val_data) if val_data is not None else None

    # Each run's reports are saved as it finishes: a rerun with the same settings (an interrupted job) skips them.
    partial = out_json.with_name(out_json.name + ".partial")
    settings = {"model": _fingerprint(model_path), "adapter": _fingerprint(Path(adapter)) if adapter else None,
                "data": _data_fingerprint(Path(data_dir), task_list) if local else None, "limit": limit,
                "num_fewshot_mmlu": num_fewshot_mmlu, "seed": seed, "dtype": str(torch_dtype),
                "layer_options": layer_options or None}  # fmt: skip
    reports: dict[str, dict] = _resumed(partial, settings, task_list)
    resumed = set(reports)
    runs = []  # (paper tasks, num_fewshot, limit): MMLU is the one few-shot task
    zero_shot = [t for t in task_list if t != "mmlu" and t not in reports]
    if zero_shot:
        runs.append((zero_shot, 0, limit))
    if "mmlu" in task_list and "mmlu" not in reports:
        runs.append((["mmlu"], num_fewshot_mmlu, mmlu_limit))

    with loaded_tasks(task_list, data_dir) as (manager, top, leaves):
        lm = LigerLM(model_path, adapter=adapter, layer_options=layer_options, device=dev, dtype=torch_dtype,
                     batch_tokens=batch_tokens) if runs or val is not None else None  # fmt: skip
        seeds = dict(random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        for run_tasks, shots, run_limit in runs:
            given = sizes.get(run_tasks[0], batch_size)
            bs = int(given) if given is not None else None
            lm.batch_size_per_gpu = bs
            log.info("lm-eval: %s, %d-shot, at most %s rows and %d tokens a batch, limit %s", ",".join(run_tasks),
                     shots, bs or "any", lm.batch_tokens, run_limit)
            run_start = time.perf_counter()
            raw = simple_evaluate(
                model=lm, tasks=[top[t] for t in run_tasks], num_fewshot=shots, limit=run_limit,
                task_manager=manager, log_samples=True, **seeds,
            )  # fmt: skip
            samples = raw.pop("samples")  # per-item outcomes are kept; the rest (contexts, responses) dropped here
            run_s = round(time.perf_counter() - run_start, 2)
            for t in run_tasks:
                chance = chance_level([leaves[n] for n in leaf_task_names(t, local)], run_limit)
                reports[t] = _task_report(t, raw, samples, local, mmlu_limit) | {
                    "batch_size": bs, "batch_tokens": lm.batch_tokens, "chance": chance, "run_wall_time_s": run_s}
            write_json_atomic(partial, {"settings": settings, "tasks": reports})
        val_loss = None if val is None else _val_loss(lm, val)

    report = {
        "model": str(model_path),
        "adapter": str(adapter) if adapter is not None else None,
        "liger": liger_options,
        "layer_options": layer_options or None,
        "data_source": {"kind": "local", "data_dir": str(Path(data_dir).resolve())} if local else {"kind": "hub"},
        "tasks": {t: reports[t] for t in task_list},
        "paper_metrics": {t: reports[t]["value"] for t in task_list},
        "chance": {t: reports[t]["chance"] for t in task_list},
        "limit": limit,
        "batch_size": int(batch_size) if batch_size is not None else "default",
        "device": dev,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "seed": seed,
        "num_fewshot_mmlu": num_fewshot_mmlu,
        "versions": versions("lm_eval", "torch", "transformers", "liger"),
        "wall_time_s": round(time.perf_counter() - start, 2),  # this process's; resumed runs add their own
        "resumed": sorted(resumed),
        "val_loss": val_loss,
    }
    write_json_atomic(out_json, report)
    partial.unlink(missing_ok=True)
    return report


def _val_loss(lm: LigerLM, val: PackedData) -> dict[str, Any]:
    """The evaluated model's loss on the validation chunks of a prepare-data folder (every target token, as a
    fine-tune's validation), with the folder and the number of chunks."""
    from liger.steps import validation_loss

    check_vocab(val, lm.model.config, lm.tokenizer)
    value = validation_loss(lm.model, val, micro_batch=8, device=lm.model.device)
    log.info("validation loss on %d chunks of %s: %s", val.val_ids.shape[0], val.path, value)
    return {"value": value, "chunks": int(val.val_ids.shape[0]), "data": str(val.path)}


def _fingerprint(folder: Path, files: Sequence[Path] | None = None) -> list[list]:
    """Files of `folder` (all of them unless given), each with its path in it, size and SHA-256: changes when their
    contents do, not when the same files are written again (a restored adapter, a model rebuilt on another machine)
    or lie in another folder (the mirrors on another machine)."""
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if files is None else sorted(files)
    return [[str(f.relative_to(folder)), f.stat().st_size, sha256_file(f)] for f in files]


def _data_fingerprint(data_dir: Path, tasks: Sequence[str]) -> list[list]:
    """The mirror files the tasks read (`_fingerprint`): a run cut on one machine resumes on another holding the
    same files."""
    return _fingerprint(data_dir, list({data_dir / rel for task in tasks for rel in data_files(task).values()}))


def _resumed(partial: Path, settings: dict, task_list: Sequence[str]) -> dict[str, dict]:
    """The task reports an interrupted run of the same settings saved in `partial` (none if it differs; a task
    saved without per-item outcomes, by an older version, is scored again)."""
    if not partial.is_file():
        return {}
    try:
        saved = json.loads(partial.read_text())
        if saved["settings"] != settings:
            log.warning("%s: saved by a run with other settings; starting over", partial)
            return {}
        done = {t: r for t, r in saved["tasks"].items() if t in task_list and "items" in r}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        log.warning("%s: unreadable; starting over", partial)
        return {}
    if done:
        log.info("resuming: %s scored by an earlier run (%s)", ", ".join(done), partial)
    return done


def _cli(args: argparse.Namespace) -> int:
    report = evaluate(
        args.model, args.out, adapter=args.adapter, tasks=args.tasks, data_dir=args.data_dir, limit=args.limit,
        batch_size=args.batch_size, mmlu_batch_size=args.mmlu_batch_size, batch_tokens=args.batch_tokens,
        device=args.device, dtype=args.dtype,
        num_fewshot_mmlu=args.num_fewshot_mmlu, seed=args.seed, layer_options=args.layer_options,
        val_data=args.val_data,
    )  # fmt: skip
    for task, entry in report["tasks"].items():
        value = entry["value"]
        shown = f"{100 * value:.1f}" if value is not None else "n/a"
        print(f"{task:14s} {entry['paper_metric']:8s} {shown:>6s}  (n={entry['n']}, {entry['num_fewshot']}-shot)")
    if report["val_loss"] is not None:
        print(f"validation loss {report['val_loss']['value']:.4f} ({report['val_loss']['chunks']} chunks)")
    print(f"{args.out}: written ({report['wall_time_s']:.0f} s)")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_probe_parser(sub, "evaluate", "score a base or Liger model on the paper's benchmarks with lm-eval", __doc__)
    p.add_argument("--adapter", type=Path, help="LoRA adapter folder, merged before evaluation")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help=f"comma-separated (default {','.join(PAPER_TASKS)})")
    p.add_argument("--data-dir", type=Path, help="offline mirrors folder (piqa/, arc_easy/, ...); default: the hub")
    p.add_argument("--limit", type=int, help="at most N items per task (smoke runs; MMLU: ceil(N/57) per subject)")
    p.add_argument("--batch-size", type=int, help="at most N requests' inputs per forward (default: no cap)")
    p.add_argument("--mmlu-batch-size", type=int, help="MMLU's --batch-size (default: --batch-size)")
    p.add_argument("--batch-tokens", type=int, help="at most N padded tokens per forward (default: 65536 on CUDA, "
                   "8192 on CPU)")
    add_inference_flags(p)
    p.add_argument("--num-fewshot-mmlu", type=int, default=5, help="MMLU shots (default 5, as the paper)")
    p.add_argument("--seed", type=int, default=0, help="lm-eval seeds (default 0)")
    p.add_argument("--val-data", type=Path, help="also score the loss on this prepare-data folder's validation chunks")
    p.add_argument("--out", required=True, type=Path, help="output JSON file")
    p.set_defaults(func=_cli)
