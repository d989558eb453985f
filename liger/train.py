"""LoRA fine-tuning of a linearized model on the packed Alpaca chunks (docs/method.md#fine-tuning-recipe), and
`run_stage`, which runs any training stage (`liger.stages`: this fine-tune, or attention transfer in
`liger.transfer`) in the pieces of `liger.loop`, with the settings of `liger.train_config`.

`finetune(model_dir, data_dir, out_dir, options=..., train=TrainConfig(...))` loads the base model, converts
it with `liger.linearize(model, **options)`, attaches LoRA (peft) to the attention projections with everything
else frozen, and trains on the packed chunks of `liger.data.prepare_data` (`liger.packed`).

Recipe (docs/method.md#lora-optimizer-and-schedule): AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-3
without warm-up, ReduceLROnPlateau(factor 0.1, patience 10, min_lr 1e-5) stepped on the validation loss measured
every `eval_every` optimizer steps, micro batch 1 and global batch 8 by gradient accumulation, gradient clipping
at 1.0, 2 epochs. The loss of one optimizer step is the mean over all its target tokens (token-weighted across the
accumulated micro-batches); the validation loss is the mean over all target tokens of the validation chunks
(`liger.steps`).

Outputs in `out_dir`: ``adapter/`` (peft), ``model/`` (LoRA merged into the converted model, with the
tokenizer; `liger.load` opens it), ``train_log.csv``, ``checkpoints/`` (the last checkpoint, `liger.checkpoints`;
a rerun resumes from it and ends exactly as an uninterrupted run would) and ``summary.json``, written last.
`out_dir` must be new, empty, this command's own earlier output (`liger.fileio`) or a run's ``checkpoints/`` copied
without the rest (`liger.checkpoints.copied_run`: it resumes from them); ``restart=True``
(``--restart``) deletes its checkpoints and starts over.

Resuming: every setting that changes what the weights become must be the checkpoint's, else the run refuses
(a new `out_dir`, or ``--restart``): the base model's files, the packed data, the Liger options, the dtype (as
resolved) and every other `TrainConfig` field (lr and its schedule, batch, accumulation, clipping, LoRA, seed,
epochs / max_steps / max_tokens; ``eval_every`` and ``val_limit`` too, as the validation loss steers the learning
rate). Free to change (`liger.checkpoints.RESUME_FREE`): ``ckpt_every``, ``device`` (the same computation
elsewhere) and ``progress``. The exception: a run stopped on a non-finite update keeps its last checkpoint that
passed `liger.steps.check_update`, and that checkpoint resumes with other `RECOVERY` settings (``lr``,
``max_grad_norm``: the advice of that stop); the summary's ``train_config`` is then the settings of the last part
and ``resume_changes`` lists each change with the step it took effect after.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from liger.checkpoints import copied_run
from liger.fileio import claim_dir, write_json_atomic
from liger.loop import VERSIONS, StageRun
from liger.provenance import versions
from liger.stages import LORA, Stage
from liger.train_config import TrainConfig, default_train_config, is_base

log = logging.getLogger("liger.train")

# The commands besides this stage's own whose output folder a training stage may write over
STAGE_ACCEPTS = ("restore",)


def finetune(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    options: dict | None,
    train: TrainConfig | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Linearize the model in `model_dir` with `options`, fine-tune LoRA on `data_dir`, write `out_dir`.

    `options` (e.g. ``{"method": "liger_gla", "hybrid": "liger_attention"}``) go to `liger.linearize`;
    ``None`` or ``{"method": "base"}`` trains nothing and writes only a summary saying so. Resumes from the
    last checkpoint in ``out_dir/checkpoints`` when there is one (the module docstring says with which settings);
    `restart` deletes the checkpoints first. `callback` is called after every optimizer step (and its checkpoint)
    with the step's numbers. `train` None: `default_train_config(options)`. Returns the summary (also in
    summary.json).
    """
    return run_stage(LORA, model_dir, data_dir, out_dir, options=options, train=train, callback=callback,
                     restart=restart)


def run_stage(stage: Stage, model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str],
              out_dir: str | os.PathLike[str], *, options: dict | None, train: TrainConfig | None = None,
              callback: Callable[[dict[str, Any]], None] | None = None, restart: bool = False) -> dict[str, Any]:
    """One training stage (`finetune`'s contract, with `stage` saying what is trained and how)."""
    cfg = train or default_train_config(options, stage.recipe)
    model_dir, data_dir, out = Path(model_dir).expanduser(), Path(data_dir).expanduser(), Path(out_dir).expanduser()
    claim_dir(out, stage.name, accept=STAGE_ACCEPTS, inputs={"--model": model_dir, "--data": data_dir},
              adopt=copied_run)
    t_start = time.perf_counter()
    if is_base(options):
        return _skip(stage.name, model_dir, data_dir, out, options, cfg)
    run = StageRun(stage, model_dir, data_dir, out, options, cfg)
    run.resume(restart)
    run.validate_first()
    run.train(callback)
    return run.finish(t_start)


def _skip(name: str, model_dir: Path, data_dir: Path, out: Path, options: dict | None,
          cfg: TrainConfig) -> dict[str, Any]:
    """Method base: nothing converted or trained; the summary says so."""
    summary = {
        "status": "skipped",
        "method": "base",
        "reason": "method base: no conversion and no training; the base model is evaluated untouched",
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "options": options,
        "train_config": asdict(cfg),
        "optimizer_steps": 0,
        "tokens_trained": 0,
        "trainable_parameters": 0,
        "versions": versions(*VERSIONS),
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("%s: method base: nothing to convert or train; wrote %s", name, out / "summary.json")
    return summary


__all__: Sequence[str] = ["finetune", "run_stage"]
