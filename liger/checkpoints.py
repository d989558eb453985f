"""Checkpoints of a training run, and the log they carry: what a rerun resumes from.

``OUT/checkpoints/step-N/`` (only the last is kept) holds the trained weights (``lora.safetensors``: whatever the
stage trains), the optimizer, scheduler and RNG states, the log so far (``train_log.csv``) and ``state.json``: the
`TrainState` and the settings that identify the run (``run_info``: the `TrainConfig`, the conversion options, the
data's and the model's fingerprints, the dtype). `load_checkpoint` resumes only with the same settings, except
`RESUME_FREE` and, from a checkpoint that a non-finite stop marked with `DIVERGED`, `RECOVERY` (the `liger.train`
docstring says why).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liger.errors import TrainError
from liger.fileio import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

CKPT_PREFIX = "step-"
WEIGHTS = "lora.safetensors"  # the trained weights, by parameter name
# TrainConfig fields that may differ from a checkpoint's when a run resumes (the rest must match; dtype is compared
# as resolved, in run_info). RECOVERY: may differ when resuming after a non-finite stop.
RESUME_FREE = ("ckpt_every", "device", "progress", "dtype")
RECOVERY = ("lr", "max_grad_norm")
DIVERGED = "diverged.json"  # in the checkpoint kept by a non-finite stop: what stopped the run
CSV_FIELDS = ("step", "epoch", "loss", "lr", "tokens_seen", "tokens_per_s", "val_loss")


@dataclass
class TrainState:
    """Where a run is: the next step to run is step `step_in_epoch` of epoch `epoch`."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0
    target_tokens: int = 0
    train_time: float = 0.0  # seconds in training steps (no evaluation, no checkpointing)
    wall_time: float = 0.0  # seconds of the whole run up to the state
    initial_train_loss: float | None = None
    initial_val_loss: float | None = None
    base_val_loss: float | None = None  # the unconverted model's, on the same validation chunks
    last_loss: float | None = None
    last_val_loss: float | None = None
    last_val_step: int | None = None
    resumed_at: list[int] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)  # RECOVERY settings changed on resume


class CsvLog:
    """train_log.csv, one row per optimizer step (step 0: the initial validation loss)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, from_checkpoint: Path | None) -> None:
        """Begin the log: a checkpoint's copy (`from_checkpoint`) when resuming, else the header alone."""
        if from_checkpoint is not None and from_checkpoint.exists():
            shutil.copyfile(from_checkpoint, self.path)
        else:
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(CSV_FIELDS)

    def write(self, **row: Any) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in CSV_FIELDS])


def list_checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders (``step-N``) in `root`, oldest first."""
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit():
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def copied_run(out: Path) -> bool:
    """Whether `out` holds nothing but a training run's checkpoints (and its log), as when a run's ``checkpoints/``
    is copied to another machine without its output marker: the training stage takes it as its own and resumes."""
    if not {p.name for p in out.iterdir()} <= {"checkpoints", "train_log.csv"}:
        return False
    found = list_checkpoints(out / "checkpoints")
    try:
        doc = json.loads((found[-1] / "state.json").read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"state", "train_config"} <= doc.keys()


def checkpoint_path(root: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return root / f"{CKPT_PREFIX}{step:08d}"


def drop_checkpoints(root: Path, keep: Path | None = None) -> None:
    """Delete the checkpoints (``step-N`` folders) in `root` but `keep`."""
    for old in list_checkpoints(root):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def mark_diverged(ckpt: Path, step: int, what: str, value: float) -> None:
    """Record in `ckpt` that the run stopped at `step` on a non-finite `what`: it then resumes with `RECOVERY`."""
    write_json_atomic(ckpt / DIVERGED, {"step": step, "what": what, "value": str(value)})


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def _set_rng_state(d: dict[str, Any]) -> None:
    py = d["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, key, *rest = d["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))


def save_checkpoint(root: Path, weights: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer, sched: Any,
                    state: TrainState, run_info: dict[str, Any], log_csv: Path) -> Path:
    """Write checkpoint `step-N` of the trained `weights` atomically (temp folder, then rename); then drop the
    older ones."""
    from safetensors.torch import save_file

    final = checkpoint_path(root, state.step)
    with atomic_dir(final) as tmp:
        save_file({n: p.detach().contiguous().cpu() for n, p in weights.items()}, str(tmp / WEIGHTS))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        if log_csv.exists():
            shutil.copyfile(log_csv, tmp / "train_log.csv")
        doc = {"state": asdict(state), "rng": _rng_state(), **run_info}
        (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    drop_checkpoints(root, keep=final)
    return final


def _corrupt(path: Path, root: Path, e: BaseException) -> TrainError:
    detail = (str(e).strip().splitlines() or [""])[0][:200]
    return TrainError(f"{path}: checkpoint file missing or corrupt ({type(e).__name__}: {detail}); rerun with "
                      f"--restart to delete {root} and start the run over")


def load_checkpoint(ckpt: Path, weights: Mapping[str, torch.nn.Parameter], opt: torch.optim.Optimizer, sched: Any,
                    run_info: dict[str, Any]) -> TrainState:
    """Check that `ckpt` was written with `run_info`'s settings; restore the trained `weights` (in place), optimizer,
    scheduler and RNG states; return the saved TrainState (with any `RECOVERY` change recorded)."""
    from safetensors.torch import load_file

    root = ckpt.parent
    f = ckpt / "state.json"
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        state = TrainState(**doc["state"])
        saved_cfg = doc["train_config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _corrupt(f, root, e) from e
    cfg = run_info["train_config"]
    changed = [k for k in cfg if k not in RESUME_FREE and saved_cfg.get(k) != cfg[k]]
    recovering = (ckpt / DIVERGED).is_file()
    refused = [f"{k} {saved_cfg.get(k)!r}, now {cfg[k]!r}" for k in changed if not (recovering and k in RECOVERY)]
    refused += [f"the {k}" for k in run_info if k != "train_config" and doc.get(k) != run_info[k]]
    if refused:
        raise TrainError(f"{ckpt}: the checkpoint was written with other settings ({'; '.join(refused)}), which change "
                         "what the run trains; rerun with the checkpoint's settings to resume it, give a new --out, or "
                         f"start over: add --restart, or (from the pipeline, which cannot pass it) delete {root}")
    f = ckpt / WEIGHTS
    try:
        saved = load_file(str(f))
        if set(saved) != set(weights):
            raise ValueError(f"{len(set(saved) ^ set(weights))} LoRA weight names differ from the model's")
        with torch.no_grad():
            for name, p in weights.items():
                p.copy_(saved[name])
        f = ckpt / "optimizer.pt"
        opt.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        f = ckpt / "scheduler.pt"
        sched.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        f = ckpt / "rng.pt"
        rng = torch.load(f, map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        f = ckpt / "state.json"
        _set_rng_state(doc["rng"])
    except Exception as e:
        raise _corrupt(f, root, e) from e
    if changed:  # RECOVERY settings after a non-finite stop; max_grad_norm is read from cfg at every step
        state.changes.append({"after_step": state.step, **{k: [saved_cfg.get(k), cfg[k]] for k in changed}})
        log.warning("resuming after the non-finite stop with %s", ", ".join(
            f"{k} {saved_cfg.get(k)} -> {cfg[k]}" for k in changed))
        if "lr" in changed:
            for group in opt.param_groups:
                group["lr"] = cfg["lr"]
    return state
