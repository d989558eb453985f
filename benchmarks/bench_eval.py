"""Evaluation speed: `liger evaluate`'s lm-eval model (`LigerLM`: head only at scored tokens, distinct inputs once,
token-budget batches) against lm-eval's own `hf` model, side by side on the same model, tasks and items.

    python benchmarks/bench_eval.py --model resources/models/qwen2.5-coder-1.5b --data-dir DIR [--limit N]

Each task runs once per model class (the five 0-shot tasks, MMLU 5-shot), timed from `simple_evaluate`'s call to
its return (lm-eval's tokenization included, model loading excluded). lm-eval's `hf` model runs as a user would
run it: lm-eval as shipped (`loaded_tasks(..., compile_once=False)`), on the same local task files. The table gives
seconds per task, the ratio, and both scores (the paper's metric) with their difference: the same prompts and
metrics, so scores differ only by numerics (lm-eval's `hf` takes the log-softmax in the model's dtype, bf16 on a
GPU; ours in float32).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from liger.eval_model import LigerLM
from liger.evaluate import PAPER_METRIC, PAPER_TASKS, check_tasks
from liger.provenance import versions
from liger.tasks.loading import lm_eval_name, loaded_tasks


def run(lm, task: str, top: dict, manager, limit: int | None, shots: int) -> tuple[float, float]:
    """Seconds and paper-metric score of one task."""
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    raw = simple_evaluate(model=lm, tasks=[top[task]], num_fewshot=shots, limit=limit, task_manager=manager,
                          log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          fewshot_random_seed=0)  # fmt: skip
    seconds = time.perf_counter() - start
    entry = raw["results"][lm_eval_name(task, True)]
    return seconds, float(entry[f"{PAPER_METRIC[task]},none"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="saved model folder (base or Liger)")
    ap.add_argument("--data-dir", required=True, type=Path, help="offline benchmark mirrors")
    ap.add_argument("--tasks", default=",".join(PAPER_TASKS))
    ap.add_argument("--limit", type=int, help="items per task (MMLU: ceil(N/57) per subject); default every item")
    ap.add_argument("--hf-batch-size", type=int, default=32, help="lm-eval hf's batch size (default 32)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    from lm_eval.models.huggingface import HFLM

    tasks = check_tasks(args.tasks)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = {t: {} for t in tasks}
    for name in ("liger", "hf"):
        with loaded_tasks(tasks, args.data_dir, compile_once=name == "liger") as (manager, top, _):
            if name == "liger":
                lm = LigerLM(args.model, device=device, dtype=dtype)
            else:
                lm = HFLM(pretrained=str(args.model), device=device, dtype=dtype, batch_size=args.hf_batch_size)
            for task in tasks:
                shots = 5 if task == "mmlu" else 0
                limit = -(-args.limit // 57) if args.limit and task == "mmlu" else args.limit
                rows[task][name] = run(lm, task, top, manager, limit, shots)
                print(f"{name:5s} {task:14s} {rows[task][name][0]:8.1f} s  {100 * rows[task][name][1]:.2f}", flush=True)
            del lm
            if device == "cuda":
                torch.cuda.empty_cache()
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    stack = versions("torch", "transformers", "lm_eval")
    print(f"\n{args.model.name}, {where}, {dtype}, limit {args.limit or 'none'}, hf batch {args.hf_batch_size}; "
          + ", ".join(f"{k} {v}" for k, v in stack.items()))
    print(f"{'task':14s} {'liger s':>8s} {'hf s':>8s} {'speed-up':>8s} {'liger':>7s} {'hf':>7s} {'diff':>6s}")
    total = [0.0, 0.0]
    for task in tasks:
        (ls, lv), (hs, hv) = rows[task]["liger"], rows[task]["hf"]
        total[0] += ls
        total[1] += hs
        print(f"{task:14s} {ls:8.1f} {hs:8.1f} {hs / ls:7.2f}x {100 * lv:7.2f} {100 * hv:7.2f} {100 * (lv - hv):+6.2f}")
    print(f"{'all':14s} {total[0]:8.1f} {total[1]:8.1f} {total[1] / total[0]:7.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"device": where, "dtype": str(dtype), "limit": args.limit,
                                        "hf_batch_size": args.hf_batch_size, "versions": stack, "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
