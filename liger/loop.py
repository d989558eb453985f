"""The run of one training stage, in the pieces `liger.train.run_stage` calls: setup, resume, the step loop,
evaluation and finishing (`StageRun`).

Setup loads the packed data, the stage's model and the optimizer, and seeds every RNG from ``seed``; resume
continues from the last checkpoint (`liger.checkpoints`) when there is one; each optimizer step (`liger.steps`)
is logged to ``train_log.csv``, validated every ``eval_every`` steps and checkpointed every ``ckpt_every`` steps
and at the end; finishing writes the stage's outputs, then ``summary.json``. A non-finite step stops the run
(`NonFiniteLossError`) and marks the last good checkpoint so that it resumes with a lower lr.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liger import steps
from liger.checkpoints import (
    CsvLog,
    TrainState,
    checkpoint_path,
    drop_checkpoints,
    list_checkpoints,
    load_checkpoint,
    mark_diverged,
    save_checkpoint,
)
from liger.convert import ADAPTER_OPTIONS, saved_conversion
from liger.device import device_name
from liger.errors import NonFiniteLossError
from liger.fileio import remove_stale_temps, write_json_atomic
from liger.models import load_tokenizer, model_fingerprint
from liger.packed import check_vocab, load_packed
from liger.provenance import versions
from liger.stages import Stage, device_and_dtype, save_lora_outputs

if TYPE_CHECKING:
    from liger.train_config import TrainConfig

log = logging.getLogger("liger.train")
VERSIONS = ("torch", "transformers", "peft", "liger", "numpy")  # the packages a summary records


class StageRun:
    """One run of a stage into `out`, in the order `liger.train.run_stage` calls its pieces: setup (here),
    `resume`, `validate_first`, `train` (the step loop, with `validate` and `checkpoint` on schedule), `finish`."""

    def __init__(self, stage: Stage, model_dir: Path, data_dir: Path, out: Path, options: dict,
                 cfg: TrainConfig) -> None:
        from liger.methods import build_options

        self.stage, self.name, self.cfg = stage, stage.name, cfg
        self.model_dir, self.data_dir, self.out = model_dir, data_dir, out
        self.options = dict(options)
        self.full_options = build_options(**self.options).to_dict()  # fails fast on a bad method or option
        self.data = stage.data(load_packed(data_dir, cfg.val_limit))
        self.tokenizer = load_tokenizer(model_dir, required=False)
        self.device, self.dtype = device_and_dtype(cfg)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

        self.model = stage.build(model_dir, self.options, cfg, self.device, self.dtype)
        self.objective = stage.objective(self.model)
        check_vocab(self.data, self.model.config, self.tokenizer)
        self.weights = dict(steps.trainable(self.model))
        self.params = list(self.weights.values())
        self.n_trainable = sum(p.numel() for p in self.params)
        self.n_total = sum(p.numel() for p in self.model.parameters())
        self.opt, self.sched = steps.make_optimizer(self.model, cfg)
        self.run_info = {"train_config": asdict(cfg), "options": self.full_options, "data": self.data.fingerprint(),
                         "model": model_fingerprint(model_dir), "dtype": self._dtype_name()}
        self.ckpt_root = out / "checkpoints"
        self.csv_log = CsvLog(out / "train_log.csv")
        self.state = TrainState()
        self.last_ckpt: Path | None = None
        self.n_train, self.seq_len = int(self.data.train_ids.shape[0]), self.data.seq_len
        self.total = steps.planned_steps(self.n_train, self.seq_len, cfg)
        self.tok_rate: float | None = None
        self.base_wall, self.proc_start = 0.0, time.perf_counter()

    def _dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    # -------------------------------------------------------------------------------------------- resume

    def resume(self, restart: bool) -> None:
        """Continue from the last checkpoint (which must hold this run's settings), else start the log; `restart`
        deletes the checkpoints first. Then say what the run will do."""
        name, cfg = self.name, self.cfg
        remove_stale_temps(self.ckpt_root)
        if restart:
            drop_checkpoints(self.ckpt_root)
            (self.out / "summary.json").unlink(missing_ok=True)  # it describes the run being discarded
            log.info("%s: --restart: the checkpoints in %s are deleted; training starts over", name, self.ckpt_root)
        existing = list_checkpoints(self.ckpt_root)
        if existing:
            self.state = load_checkpoint(existing[-1], self.weights, self.opt, self.sched, self.run_info)
            self.state.resumed_at.append(self.state.step)
            self.csv_log.start(existing[-1] / "train_log.csv")
            log.info("%s: resuming from checkpoint %s (step %d, %d tokens seen)", name, existing[-1], self.state.step,
                     self.state.tokens_seen)
            self.last_ckpt = existing[-1]
        else:
            self.csv_log.start(None)

        lora = f"LoRA r={cfg.lora_r} on {','.join(cfg.lora_targets)}"
        log.info(
            "%s: %s, options %s, device %s %s; %s: %d trainable of %d parameters; %d train chunks x %d tokens, %d "
            "val chunks; %d optimizer steps planned (global batch %d)",
            name, self.model_dir, self.options, self.device, self._dtype_name(),
            lora if self.stage.save is save_lora_outputs else "trained", self.n_trainable, self.n_total, self.n_train,
            self.seq_len, self.data.val_ids.shape[0], self.total, cfg.global_batch,
        )
        if self.data.val_ids.shape[0] == 0:
            log.warning("%s: no validation chunks: the learning rate is never reduced", name)

    # ---------------------------------------------------------------------------------------- evaluation

    def validate_first(self) -> None:
        """Before the first step: the validation loss of the model as trained (and of the unconverted model, when
        `model_dir` is one), the log's step 0."""
        state, cfg = self.state, self.cfg
        if state.step != 0 or state.initial_val_loss is not None:
            return
        if saved_conversion(self.model_dir) is None:
            state.base_val_loss = steps.base_validation_loss(self.model_dir, self.data, cfg.micro_batch, self.device,
                                                             self.dtype)
            log.info("%s: validation loss of the unconverted model: %s", self.name, fmt_loss(state.base_val_loss))
        val = steps.validation_loss(self.objective, self.data, cfg.micro_batch, self.device)
        state.initial_val_loss = state.last_val_loss = val
        state.last_val_step = 0
        self.csv_log.write(step=0, epoch=0.0, lr=self.opt.param_groups[0]["lr"], tokens_seen=0, val_loss=val)
        log.info("%s: validation loss at the start: %s", self.name, fmt_loss(val))

    def validate(self, loss: float) -> float | None:
        """After a step: the validation loss every `eval_every` steps (it steps the scheduler) and at the end."""
        state, cfg = self.state, self.cfg
        periodic = cfg.eval_every > 0 and state.step % cfg.eval_every == 0
        if not (periodic or state.step == self.total):
            return None
        val = steps.validation_loss(self.objective, self.data, cfg.micro_batch, self.device)
        state.last_val_loss, state.last_val_step = val, state.step
        log.info("%s: step %d: train loss %.4f, validation loss %s", self.name, state.step, loss, fmt_loss(val))
        if periodic and val is not None:
            self.sched.step(val)
        return val

    # ------------------------------------------------------------------------------------------ the loop

    def train(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        """The step loop, from where the state is to the planned end; a progress bar unless `progress` is off."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, state = self.cfg, self.state
        self.base_wall, self.proc_start = state.wall_time, time.perf_counter()
        bar = tqdm(total=self.total, initial=min(state.step, self.total), unit="step", desc=self.name,
                   disable=not cfg.progress, dynamic_ncols=True)
        try:
            with logging_redirect_tqdm() if _console_logging(cfg.progress) else contextlib.nullcontext():
                for epoch in range(state.epoch, cfg.epochs):
                    plan = steps.epoch_plan(steps.epoch_order(self.n_train, cfg.seed, epoch), cfg.micro_batch,
                                            cfg.grad_accum)
                    for s in range(state.step_in_epoch, len(plan)):
                        if state.step >= self.total:
                            break
                        info = self.step(epoch, s, plan)
                        bar.update(1)
                        bar.set_postfix(loss=f"{info['loss']:.4f}", tok_s=f"{self.tok_rate:.0f}",
                                        lr=f"{info['lr']:.1e}")
                        if callback is not None:
                            callback(info)
                    if state.step >= self.total:
                        break
        except KeyboardInterrupt:
            where = (f"the last checkpoint ({self.last_ckpt}) is kept: rerun to resume" if self.last_ckpt
                     else "no checkpoint yet")
            log.warning("%s: interrupted at step %d; %s", self.name, state.step, where)
            raise
        finally:
            bar.close()

    def step(self, epoch: int, s: int, plan: list[list[np.ndarray]]) -> dict[str, Any]:
        """Optimizer step `s` of `epoch` (`plan`: the epoch's steps): train, validate, log, checkpoint on schedule;
        returns the numbers the callback gets."""
        cfg, state, data = self.cfg, self.state, self.data
        micro = steps.budget_cut(plan[s], state.tokens_seen, self.seq_len, cfg.max_tokens)
        t0 = time.perf_counter()
        batches = [steps.batch(data.train_ids, data.train_mask, mb, self.device) for mb in micro]
        n_items = sum(steps.n_targets(lab) for _, lab in batches)
        lr = self.opt.param_groups[0]["lr"]
        try:
            loss = steps.train_step(self.objective, self.params, self.opt, batches, cfg.max_grad_norm)
        except steps.NonFinite as e:
            raise self._nonfinite(state.step + 1, e) from None
        dt = time.perf_counter() - t0
        tokens = sum(x.numel() for x, _ in batches)
        state.train_time += dt
        state.step += 1
        state.tokens_seen += tokens
        state.target_tokens += n_items
        state.step_in_epoch = s + 1
        if state.step_in_epoch == len(plan):
            state.epoch, state.step_in_epoch = epoch + 1, 0
        state.last_loss = loss
        if state.initial_train_loss is None:
            state.initial_train_loss = loss
        rate = tokens / dt if dt > 0 else float("nan")
        self.tok_rate = rate if self.tok_rate is None else 0.9 * self.tok_rate + 0.1 * rate

        val = self.validate(loss)
        epoch_pos = epoch + (s + 1) / len(plan)
        self.csv_log.write(step=state.step, epoch=round(epoch_pos, 4), loss=loss, lr=lr,
                           tokens_seen=state.tokens_seen, tokens_per_s=round(rate, 1), val_loss=val)
        if (cfg.ckpt_every > 0 and state.step % cfg.ckpt_every == 0) or state.step == self.total:
            self.last_ckpt = self.checkpoint(batches)
        return {"step": state.step, "epoch": epoch_pos, "loss": loss, "lr": lr, "tokens_seen": state.tokens_seen,
                "val_loss": val}

    def checkpoint(self, batches: list[steps.Batch] | None = None) -> Path:
        """A checkpoint of the weights that `batches` (the last step's; None: no step in this process) trained,
        once `check_update` passed them."""
        if batches is not None:
            try:
                steps.check_update(self.objective, self.params, batches)
            except steps.NonFinite as e:
                raise self._nonfinite(self.state.step, e) from None
        self.state.wall_time = self.base_wall + time.perf_counter() - self.proc_start
        return save_checkpoint(self.ckpt_root, self.weights, self.opt, self.sched, self.state, self.run_info,
                               self.csv_log.path)

    def _nonfinite(self, step: int, e: steps.NonFinite) -> NonFiniteLossError:
        """The error that stops the run at a non-finite `step`; the kept checkpoint records it (`mark_diverged`)."""
        advice = "a lower learning rate (--lr) or gradient clipping on (--max-grad-norm 1.0)"
        if self.last_ckpt is None:
            kept = f"no checkpoint had been written yet: rerun with {advice}"
        else:
            mark_diverged(self.last_ckpt, step, e.what, e.value)
            kept = (f"the last good checkpoint is kept at {self.last_ckpt}: rerun with {advice} to resume from it, or "
                    "add --restart to start over")
        return NonFiniteLossError(f"step {step}: the {e.what} is {e.value}; training stopped, {kept}")

    # --------------------------------------------------------------------------------------------- finish

    def finish(self, t_start: float) -> dict[str, Any]:
        """The last checkpoint (if the loop wrote none at this step), the stage's outputs, then summary.json."""
        state, name = self.state, self.name
        if self.last_ckpt is None or self.last_ckpt.name != checkpoint_path(self.ckpt_root, state.step).name:
            self.last_ckpt = self.checkpoint()  # e.g. a run of 0 steps: a rerun then starts where this one ended
        wall = self.base_wall + time.perf_counter() - self.proc_start

        self.stage.save(self.model, self.out, self.tokenizer)
        if (self.out / "adapter").is_dir() and saved_conversion(self.model_dir) is None:
            # liger.load(base, adapter=...) converts first
            write_json_atomic(self.out / "adapter" / ADAPTER_OPTIONS, self.full_options)

        summary = self.summary(wall, t_start)
        write_json_atomic(self.out / "summary.json", summary)
        log.info("%s: done: %d steps, %d tokens, %.1f tokens/s; train loss %s -> %s, val loss %s -> %s; wrote %s",
                 name, state.step, state.tokens_seen, summary["tokens_per_s"] or 0.0,
                 fmt_loss(state.initial_train_loss), fmt_loss(state.last_loss), fmt_loss(state.initial_val_loss),
                 fmt_loss(state.last_val_loss), self.out)
        return summary

    def summary(self, wall: float, t_start: float) -> dict[str, Any]:
        """summary.json: what was trained, on what, how far, the losses, the parameters and the versions."""
        state, data = self.state, self.data
        steps_per_epoch = len(steps.epoch_plan(np.arange(self.n_train), self.cfg.micro_batch, self.cfg.grad_accum))
        return {
            "status": "trained",
            "stage": self.name,
            "method": self.full_options["method"],
            "options": self.options,
            "liger_options": self.full_options,
            "train_config": asdict(self.cfg),
            "model_dir": str(self.model_dir),
            "data_dir": str(self.data_dir),
            "out_dir": str(self.out),
            "device": device_name(self.device),
            "dtype": self._dtype_name(),
            "optimizer_steps": state.step,
            "planned_steps": self.total,
            "epochs_completed": round(state.step / steps_per_epoch, 4),
            "tokens_trained": state.tokens_seen,
            "target_tokens_trained": state.target_tokens,
            "seq_len": self.seq_len,
            "train_chunks": self.n_train,
            "val_chunks": int(data.val_ids.shape[0]),
            "wall_time_s": round(wall, 3),
            "train_time_s": round(state.train_time, 3),
            "tokens_per_s": round(state.tokens_seen / state.train_time, 2) if state.train_time > 0 else None,
            "initial_train_loss": state.initial_train_loss,
            "final_train_loss": state.last_loss,
            "base_val_loss": state.base_val_loss,
            "initial_val_loss": state.initial_val_loss,
            "final_val_loss": state.last_val_loss,
            "final_lr": self.opt.param_groups[0]["lr"],
            "trainable_parameters": self.n_trainable,
            "total_parameters": self.n_total,
            **self.stage.extra(self.model),
            "resumed_at_steps": state.resumed_at,
            "resume_changes": state.changes,
            "checkpoint": str(self.last_ckpt),
            "versions": versions(*VERSIONS),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "process_time_s": round(time.perf_counter() - t_start, 3),
        }


def _console_logging(progress: bool) -> bool:
    """Route log records through tqdm only when a bar is shown and the root logger writes to the console."""
    consoles = (sys.stderr, sys.stdout)
    return progress and any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in consoles
                            for h in logging.getLogger().handlers)


def fmt_loss(x: float | None) -> str:
    """A loss for a log line: 4 decimals, n/a for none."""
    return "n/a" if x is None else f"{x:.4f}"
