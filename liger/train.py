"""LoRA fine-tuning of a linearized model on the packed Alpaca chunks (docs/method.md).

`finetune(model_dir, data_dir, out_dir, options=..., train=TrainConfig(...))` loads the base model, converts
it with `liger.linearize(model, **options)`, attaches LoRA (peft) to the attention projections with everything
else frozen, and trains on ``{train,val}_{ids,mask}.npy`` from `liger.data.prepare_data`.

Recipe: AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-3 without warm-up, ReduceLROnPlateau(factor 0.1,
patience 10, min_lr 1e-5) stepped on the validation loss measured every `eval_every` optimizer steps, micro
batch 1 and global batch 8 by gradient accumulation, gradient clipping at 1.0, 2 epochs. The loss of one
optimizer step is the mean over all its target tokens (token-weighted across the accumulated micro-batches);
the validation loss is the mean over all target tokens of the validation chunks.

Outputs in `out_dir`: ``adapter/`` (peft), ``model/`` (LoRA merged into the converted model, with the
tokenizer; `liger.load` opens it), ``train_log.csv``, ``checkpoints/`` (the last checkpoint; a rerun resumes
from it and ends exactly as an uninterrupted run would) and ``summary.json``, written last. `out_dir` must be new,
empty or this command's own earlier output (`liger.fileio`); ``restart=True`` (``--restart``) deletes its
checkpoints and starts over.

Resuming: every setting that changes what the weights become must be the checkpoint's, else the run refuses
(a new `out_dir`, or ``--restart``): the base model's files, the packed data, the Liger options, the dtype (as
resolved) and every other `TrainConfig` field (lr and its schedule, batch, accumulation, clipping, LoRA, seed,
epochs / max_steps / max_tokens; ``eval_every`` and ``val_limit`` too, as the validation loss steers the learning
rate). Free to change (`RESUME_FREE`): ``ckpt_every``, ``device`` (the same computation elsewhere) and
``progress``. The exception: a run stopped on a non-finite update keeps its last checkpoint that passed
`check_update`, and that checkpoint resumes with other `RECOVERY` settings (``lr``, ``max_grad_norm``: the advice
of that stop); the summary's ``train_config`` is then the settings of the last part and ``resume_changes`` lists
each change with the step it took effect after.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liger.convert import ADAPTER_OPTIONS
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.fileio import atomic_dir, claim_dir, remove_stale_temps, sha256_file, write_json_atomic
from liger.methods import RECIPE_FIELDS, stage_recipe  # RECIPE_FIELDS: the TrainConfig fields a stage's recipe sets
from liger.models import save_model_dir
from liger.provenance import versions

log = logging.getLogger("liger.train")

DATA_FILES = ("train_ids.npy", "train_mask.npy", "val_ids.npy", "val_mask.npy", "meta.json")
CSV_FIELDS = ("step", "epoch", "loss", "lr", "tokens_seen", "tokens_per_s", "val_loss")
CKPT_PREFIX = "step-"
# TrainConfig fields that may differ from a checkpoint's when a run resumes (the rest must match; dtype is compared
# as resolved, in run_info). RECOVERY: may differ when resuming after a non-finite stop (the module docstring).
RESUME_FREE = ("ckpt_every", "device", "progress", "dtype")
RECOVERY = ("lr", "max_grad_norm")
DIVERGED = "diverged.json"  # in the checkpoint kept by a non-finite stop: what stopped the run
# The commands besides this stage's own whose output folder a training stage may write over
STAGE_ACCEPTS = ("restore",)


class TrainError(LigerError):
    """A fine-tuning run cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainError):
    """The loss (or gradient norm) became NaN or infinite."""


@dataclass
class TrainConfig:
    """Settings of one LoRA fine-tuning run; defaults are the paper's recipe (docs/method.md)."""

    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 disables clipping
    micro_batch: int = 1
    grad_accum: int = 8
    epochs: int = 2
    max_tokens: int | None = None  # stop once this many micro-batch tokens were seen
    max_steps: int | None = None  # stop after this many optimizer steps
    eval_every: int = 200  # optimizer steps between validation losses (0: only at the start and the end)
    val_limit: int | None = None  # use only the first N validation chunks
    ckpt_every: int = 200  # optimizer steps between checkpoints (0: only at the end)
    lr_factor: float = 0.1  # ReduceLROnPlateau
    lr_patience: int = 10
    min_lr: float = 1e-5
    seed: int = 0
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        self.lora_targets = list(self.lora_targets)
        positive = {"lora_r": self.lora_r, "micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
                    "epochs": self.epochs, "lr": self.lr, "lora_alpha": self.lora_alpha}
        bad = [f"{k}={v}" for k, v in positive.items() if not v > 0]
        for name in ("max_tokens", "max_steps", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                bad.append(f"{name}={value}")
        for name in ("eval_every", "ckpt_every", "max_grad_norm", "weight_decay", "min_lr", "lr_patience"):
            if getattr(self, name) < 0:
                bad.append(f"{name}={getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1 or not 0 < self.lr_factor < 1:
            bad.append(f"lora_dropout={self.lora_dropout} (0 <= p < 1), lr_factor={self.lr_factor} (0 < f < 1)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            bad.append(f"dtype={self.dtype!r} (auto, float32 or bfloat16)")
        if not self.lora_targets:
            bad.append("lora_targets is empty")
        if bad:
            raise TrainError(f"invalid training settings: {', '.join(bad)}")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum


# ------------------------------------------------------------------------------------------------ data


@dataclass
class PackedData:
    """The packed chunks of one data folder (memory-mapped) and its meta.json."""

    path: Path
    train_ids: np.ndarray
    train_mask: np.ndarray
    val_ids: np.ndarray
    val_mask: np.ndarray
    meta: dict[str, Any]

    @property
    def seq_len(self) -> int:
        return int(self.train_ids.shape[1])

    def fingerprint(self) -> str:
        """What identifies the data for resuming: the file hashes prepare_data recorded, else the shapes."""
        sha = self.meta.get("sha256")
        if sha:
            return json.dumps(sha, sort_keys=True)
        return json.dumps([list(self.train_ids.shape), list(self.val_ids.shape)])


def load_data(data_dir: str | os.PathLike[str], val_limit: int | None = None) -> PackedData:
    """Open a prepare_data folder read-only (mmap) and check its files; clear errors for missing or bad files."""
    path = Path(data_dir).expanduser()
    for name in DATA_FILES:
        if not (path / name).is_file():
            raise TrainError(
                f"{path / name}: missing; the data folder must come from prepare-data: run "
                f"`python -m liger prepare-data --tokenizer MODEL_DIR --out {path}` first"
            )
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"{path / 'meta.json'}: unreadable ({e}); run prepare-data again") from e
    arrays = {}
    for name in DATA_FILES[:4]:
        try:
            arrays[name[:-4]] = np.load(path / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TrainError(f"{path / name}: unreadable ({e}); run prepare-data again") from e
    for split in ("train", "val"):
        ids, mask = arrays[f"{split}_ids"], arrays[f"{split}_mask"]
        if ids.ndim != 2 or ids.shape != mask.shape or ids.dtype.kind != "u" or mask.dtype != np.bool_:
            raise TrainError(
                f"{path}: {split}_ids {ids.dtype}{list(ids.shape)} and {split}_mask {mask.dtype}{list(mask.shape)} "
                "are not the packed format (unsigned ids and bool mask of one (chunks, seq_len) shape); "
                "run prepare-data again"
            )
    if arrays["train_ids"].shape[0] == 0:
        raise TrainError(f"{path}: no training chunks; prepare more records (prepare-data --limit)")
    if arrays["val_ids"].shape[0] and arrays["val_ids"].shape[1] != arrays["train_ids"].shape[1]:
        raise TrainError(f"{path}: train and val chunks have different lengths; run prepare-data again")
    if meta.get("seq_len") not in (None, arrays["train_ids"].shape[1]):
        raise TrainError(f"{path}: meta.json says seq_len {meta['seq_len']} but the chunks have "
                         f"{arrays['train_ids'].shape[1]} tokens; run prepare-data again")
    if val_limit is not None:
        arrays["val_ids"], arrays["val_mask"] = arrays["val_ids"][:val_limit], arrays["val_mask"][:val_limit]
    return PackedData(path=path, meta=meta, **arrays)


def check_vocab(data: PackedData, config: Any, tokenizer: Any | None) -> None:
    """Fail when the data was tokenized with another tokenizer than the model's (meta.json records it)."""
    tok_meta = data.meta.get("tokenizer", {})
    vocab = tok_meta.get("vocab_size")
    model_vocab = int(config.vocab_size)
    hint = "run prepare-data with this model's tokenizer (--tokenizer MODEL_DIR) into a new data folder"
    if vocab is not None and vocab > model_vocab:
        raise TrainError(f"{data.path}: tokenized with a vocabulary of {vocab} tokens but the model has "
                         f"{model_vocab} embeddings: data and model do not match; {hint}")
    if tokenizer is not None:
        if vocab is not None and len(tokenizer) != vocab:
            raise TrainError(f"{data.path}: tokenized with a vocabulary of {vocab} tokens but the model's "
                             f"tokenizer has {len(tokenizer)}: data and model do not match; {hint}")
        eos = tok_meta.get("eos_token_id")
        if eos is not None and tokenizer.eos_token_id is not None and eos != tokenizer.eos_token_id:
            raise TrainError(f"{data.path}: EOS id {eos} in the data but {tokenizer.eos_token_id} in the model's "
                             f"tokenizer: data and model do not match; {hint}")
    for split, ids in (("train", data.train_ids), ("val", data.val_ids)):
        if ids.size and int(ids.max()) >= model_vocab:
            raise TrainError(f"{data.path}: {split} token id {int(ids.max())} >= the model's vocabulary size "
                             f"{model_vocab}: data and model do not match; {hint}")


def epoch_order(n_chunks: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training chunks in `epoch` (a numpy Generator seeded with seed + epoch)."""
    return np.random.default_rng(seed + epoch).permutation(n_chunks)


def epoch_plan(order: np.ndarray, micro_batch: int, grad_accum: int) -> list[list[np.ndarray]]:
    """Cut an epoch's chunk order into optimizer steps of up to `grad_accum` micro-batches of `micro_batch`."""
    micro = [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def _budget_cut(micro: list[np.ndarray], tokens_seen: int, seq_len: int, max_tokens: int | None) -> list[np.ndarray]:
    """The micro-batches of a step that start before the token budget is spent."""
    if max_tokens is None:
        return micro
    kept, seen = [], tokens_seen
    for mb in micro:
        if seen >= max_tokens:
            break
        kept.append(mb)
        seen += len(mb) * seq_len
    return kept


def planned_steps(n_chunks: int, seq_len: int, cfg: TrainConfig) -> int:
    """How many optimizer steps a run does (epochs, max_steps and max_tokens all bound it)."""
    plan = epoch_plan(np.arange(n_chunks), cfg.micro_batch, cfg.grad_accum)  # step sizes do not depend on order
    total = cfg.epochs * len(plan)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if cfg.max_tokens is None:
        return total
    steps = tokens = 0
    while steps < total and tokens < cfg.max_tokens:
        micro = _budget_cut(plan[steps % len(plan)], tokens, seq_len, cfg.max_tokens)
        tokens += sum(len(mb) for mb in micro) * seq_len
        steps += 1
    return steps


def _batch(ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """input_ids and labels (ids where the mask is set, else -100) of some chunks, on `device`."""
    rows = np.sort(np.asarray(rows))
    x = torch.from_numpy(np.asarray(ids[rows], dtype=np.int64))
    m = torch.from_numpy(np.asarray(mask[rows], dtype=np.bool_))
    labels = torch.where(m, x, torch.full_like(x, -100))
    return x.to(device), labels.to(device)


def n_targets(labels: torch.Tensor) -> int:
    """Tokens the model predicts (HF shifts labels by one: position 0 is never a target)."""
    return int((labels[:, 1:] != -100).sum())


def micro_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, n_items: int) -> torch.Tensor:
    """Summed token loss of one micro-batch divided by `n_items` (the targets of the whole optimizer step)."""
    return model(input_ids=input_ids, labels=labels, num_items_in_batch=n_items, use_cache=False).loss


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: PackedData, micro_batch: int, device: torch.device) -> float | None:
    """Mean loss over every target token of the validation chunks; None without validation chunks."""
    n = data.val_ids.shape[0]
    if n == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, n, micro_batch):
            x, labels = _batch(data.val_ids, data.val_mask, np.arange(start, min(n, start + micro_batch)), device)
            k = n_targets(labels)
            if k:
                total += float(micro_loss(model, x, labels, 1).float())
                count += k
    finally:
        model.train(was_training)
    return total / count if count else None


def is_converted(model_dir: str | os.PathLike[str]) -> bool:
    """Whether a model folder holds a converted model (its config records the conversion)."""
    config = Path(model_dir) / "config.json"
    return config.is_file() and "liger" in json.loads(config.read_text(encoding="utf-8"))


def base_validation_loss(model_dir: str | os.PathLike[str], data: PackedData, micro_batch: int,
                         device: torch.device, dtype: torch.dtype) -> float | None:
    """The validation loss of the model in `model_dir` as it is (before conversion), for comparison."""
    import liger

    if data.val_ids.shape[0] == 0:
        return None
    base = liger.load(model_dir, dtype=dtype).to(device)
    try:
        return validation_loss(base, data, micro_batch, device)
    finally:
        del base
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- model


class _NonFinite(Exception):
    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} {value}")
        self.what, self.value = what, value


def _loss_and_grads(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Backward through accumulated micro-batches (input_ids, labels); the loss, the mean over all their targets.

    The device is synchronised only once the micro-batches are queued (a sync per micro-batch would stall the GPU
    behind Python)."""
    n_items = max(sum(n_targets(labels) for _, labels in batches), 1)
    total = None
    for x, labels in batches:
        loss = micro_loss(model, x, labels, n_items)
        loss.backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
    return float(total) if total is not None else 0.0


def train_step(model: torch.nn.Module, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
               batches: list[tuple[torch.Tensor, torch.Tensor]], max_grad_norm: float) -> float:
    """One optimizer step over accumulated micro-batches (input_ids, labels); returns the step's loss.

    Stops before any update when the loss or the gradient norm is not finite. Synchronises the device at the end,
    so the caller can time the step.
    """
    opt.zero_grad(set_to_none=True)
    value = _loss_and_grads(model, batches)
    if not math.isfinite(value):
        raise _NonFinite("loss", value)
    if max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if not math.isfinite(norm):
            raise _NonFinite("gradient norm", norm)
    opt.step()
    if params and params[0].is_cuda:
        torch.cuda.synchronize(params[0].device)
    return value


def check_update(model: torch.nn.Module, params: list[torch.nn.Parameter],
                 batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Raise `_NonFinite` when the weights an update left are unusable: a trainable weight is not finite, or the
    step's own batches through them give a loss or gradient norm that is not (what the next step would meet).

    Run before a checkpoint keeps the weights. In eval mode (no dropout: the RNG streams stay as they were); the
    gradients are dropped after.
    """
    largest = float(torch.stack([p.detach().abs().max().float() for p in params]).max()) if params else 0.0
    if not math.isfinite(largest):
        raise _NonFinite("largest trainable weight after the update", largest)
    was_training = model.training
    model.eval()
    try:
        loss = _loss_and_grads(model, batches)
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    finally:
        model.train(was_training)
        for p in params:
            p.grad = None
    if not math.isfinite(loss):
        raise _NonFinite("loss after the update", loss)
    if not math.isfinite(norm):
        raise _NonFinite("gradient norm after the update", norm)


def device_and_dtype(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 weights when available (dtype auto), else CPU with fp32."""
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {cfg.device!r} asked for but CUDA is not available; use --device cpu")
    return device, resolve_dtype(cfg.dtype, device.type)


def is_base(options: dict | None) -> bool:
    return options is None or options.get("method") == "base"


def load_tokenizer(model_dir: Path) -> Any | None:
    """The model folder's tokenizer, or None when it has none (a bare model folder)."""
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # a broken tokenizer must not hide behind a model error
        raise TrainError(f"{model_dir}: could not load its tokenizer ({type(e).__name__}: {e})") from e


def load_converted(model_dir: str | os.PathLike[str], options: dict | None, device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    """Load the model and linearize it with `options` (None: keep softmax attention), every parameter frozen.

    A folder that holds an already converted model is accepted when its options are the requested ones.
    """
    import liger
    from liger.methods import build_options

    model = liger.load(model_dir, dtype=dtype)
    if options is not None:
        have = liger.options_of(model)
        if have is None:
            liger.linearize(model, **options)
        elif have != build_options(**options):
            raise TrainError(f"{model_dir} holds a model already converted with {have.to_dict()}, not the "
                             f"requested {options}; give the base model folder")
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_model(model_dir: str | os.PathLike[str], options: dict | None, cfg: TrainConfig, device: torch.device,
                dtype: torch.dtype) -> torch.nn.Module:
    """Load the model, linearize it with `options` (None: keep softmax attention) and attach LoRA (peft).

    Only the LoRA weights are trainable. A folder that holds an already converted model is accepted when
    its options are the requested ones (e.g. a LoLCATs model after attention transfer).
    """
    from peft import LoraConfig, get_peft_model

    model = load_converted(model_dir, options, device, dtype)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise TrainError(f"LoRA target module(s) {missing} not found in the model; e.g. q_proj, k_proj, v_proj, o_proj")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 for a deprecated attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, lora)  # LoRA weights in fp32 even when the model is bf16 (peft's autocast)
    model.train()
    return model


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the LoRA weights and ReduceLROnPlateau on the validation loss."""
    params = [p for _, p in trainable(model)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor,
                                                       patience=cfg.lr_patience, min_lr=cfg.min_lr)
    return opt, sched


# ------------------------------------------------------------------------------------------ checkpoints


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


def _checkpoints(root: Path) -> list[Path]:
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit():
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def _set_rng_state(d: dict[str, Any]) -> None:
    py = d["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, key, *rest = d["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))


def save_checkpoint(root: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    state: TrainState, run_info: dict[str, Any], log_csv: Path) -> Path:
    """Write checkpoint `step-N` atomically (temp folder, then rename); then drop the older ones."""
    from safetensors.torch import save_file

    final = root / f"{CKPT_PREFIX}{state.step:08d}"
    with atomic_dir(final) as tmp:
        save_file({n: p.detach().contiguous().cpu() for n, p in trainable(model)}, str(tmp / "lora.safetensors"))
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
    _drop_checkpoints(root, keep=final)
    return final


def _drop_checkpoints(root: Path, keep: Path | None = None) -> None:
    """Delete the checkpoints (``step-N`` folders) in `root` but `keep`."""
    for old in _checkpoints(root):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _corrupt(path: Path, root: Path, e: BaseException) -> TrainError:
    detail = (str(e).strip().splitlines() or [""])[0][:200]
    return TrainError(f"{path}: checkpoint file missing or corrupt ({type(e).__name__}: {detail}); rerun with "
                      f"--restart to delete {root} and start the run over")


def load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    run_info: dict[str, Any]) -> TrainState:
    """Restore the LoRA weights, optimizer, scheduler and RNG states; return the saved TrainState."""
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
                         "add --restart to delete the checkpoints and start over")
    f = ckpt / "lora.safetensors"
    try:
        weights = load_file(str(f))
        params = dict(trainable(model))
        if set(weights) != set(params):
            raise ValueError(f"{len(set(weights) ^ set(params))} LoRA weight names differ from the model's")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
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
    except TrainError:
        raise
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


# -------------------------------------------------------------------------------------------- outputs


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class CsvLog:
    """train_log.csv, one row per optimizer step (step 0: the initial validation loss)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, from_checkpoint: Path | None) -> None:
        if from_checkpoint is not None and from_checkpoint.exists():
            shutil.copyfile(from_checkpoint, self.path)
        else:
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(CSV_FIELDS)

    def write(self, **row: Any) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in CSV_FIELDS])


def _console_logging(progress: bool) -> bool:
    """Route log records through tqdm only when a bar is shown and the root logger writes to the console."""
    consoles = (sys.stderr, sys.stdout)
    return progress and any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in consoles
                            for h in logging.getLogger().handlers)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ----------------------------------------------------------------------------------------------- main


def save_lora_outputs(model: torch.nn.Module, out: Path, tokenizer: Any | None, model_dir: Path) -> None:
    """``adapter/`` (the LoRA weights) and ``model/`` (LoRA merged into the converted model, with the tokenizer)."""
    with atomic_dir(out / "adapter") as tmp:
        model.save_pretrained(str(tmp), save_embedding_layers=False)  # LoRA only; skips a config reload
    save_model_folder(model.merge_and_unload(), out, tokenizer, model_dir)


def save_model_folder(model: torch.nn.Module, out: Path, tokenizer: Any | None, model_dir: Path) -> None:
    """``model/``: a Hugging Face folder that `liger.load` opens, with the tokenizer of `model_dir`."""
    save_model_dir(model, out / "model", tokenizer)


@dataclass
class Stage:
    """What differs between training stages; the loop, checkpoints, logs and summary are shared.

    build: the model with only its trained parameters requiring grad; objective: the module that `train_step`
    and `validation_loss` call in place of the model (its output's ``.loss`` is the micro-batch loss); data: a
    view of the packed data; save: the outputs besides the log, checkpoints and summary; extra: summary fields.
    """

    name: str
    build: Callable[[Path, dict, TrainConfig, torch.device, torch.dtype], torch.nn.Module]
    objective: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    data: Callable[[PackedData], PackedData] = lambda data: data
    save: Callable[[torch.nn.Module, Path, Any, Path], None] = save_lora_outputs
    extra: Callable[[torch.nn.Module], dict[str, Any]] = lambda model: {}
    recipe: str = "lora"  # the method's stage whose recipe (liger.methods.stage_recipe) is the default TrainConfig


LORA = Stage("finetune", build_model)


def default_train_config(options: dict | None, stage: str = "lora") -> TrainConfig:
    """The method's recipe for `stage` (liger.methods.stage_recipe), e.g. the paper's for the Liger methods."""
    if is_base(options):
        return TrainConfig()
    return TrainConfig(**stage_recipe(options.get("method"), stage, options))


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


def model_fingerprint(model_dir: Path) -> str:
    """What identifies a model folder for resuming: the sha256 of its config.json and of each weight file."""
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors")), *sorted(model_dir.glob("*.bin"))]
    return json.dumps({f.name: sha256_file(f) for f in files if f.is_file()}, sort_keys=True)


def run_stage(stage: Stage, model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str],
              out_dir: str | os.PathLike[str], *, options: dict | None, train: TrainConfig | None = None,
              callback: Callable[[dict[str, Any]], None] | None = None, restart: bool = False) -> dict[str, Any]:
    """One training stage (`finetune`'s contract, with `stage` saying what is trained and how)."""
    cfg = train or default_train_config(options, stage.recipe)
    name = stage.name
    model_dir, data_dir, out = Path(model_dir).expanduser(), Path(data_dir).expanduser(), Path(out_dir).expanduser()
    claim_dir(out, name, accept=STAGE_ACCEPTS, inputs={"--model": model_dir, "--data": data_dir})
    t_start = time.perf_counter()
    if is_base(options):
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
            "versions": versions("torch", "transformers", "peft", "liger", "numpy"),
        }
        write_json_atomic(out / "summary.json", summary)
        log.info("%s: method base: nothing to convert or train; wrote %s", name, out / "summary.json")
        return summary

    from liger.methods import build_options

    options = dict(options)
    full_options = build_options(**options).to_dict()  # fails fast on a bad method or option
    data = stage.data(load_data(data_dir, cfg.val_limit))
    tokenizer = load_tokenizer(model_dir)
    device, dtype = device_and_dtype(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    model = stage.build(model_dir, options, cfg, device, dtype)
    objective = stage.objective(model)
    check_vocab(data, model.config, tokenizer)
    params = [p for _, p in trainable(model)]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt, sched = make_optimizer(model, cfg)

    run_info = {"train_config": asdict(cfg), "options": full_options, "data": data.fingerprint(),
                "model": model_fingerprint(model_dir), "dtype": str(dtype).removeprefix("torch.")}
    ckpt_root = out / "checkpoints"
    remove_stale_temps(ckpt_root)
    if restart:
        _drop_checkpoints(ckpt_root)
        (out / "summary.json").unlink(missing_ok=True)  # it describes the run being discarded
        log.info("%s: --restart: the checkpoints in %s are deleted; training starts over", name, ckpt_root)
    csv_log = CsvLog(out / "train_log.csv")
    existing = _checkpoints(ckpt_root)
    if existing:
        state = load_checkpoint(existing[-1], model, opt, sched, run_info)
        state.resumed_at.append(state.step)
        csv_log.start(existing[-1] / "train_log.csv")
        log.info("%s: resuming from checkpoint %s (step %d, %d tokens seen)", name, existing[-1], state.step,
                 state.tokens_seen)
        last_ckpt: Path | None = existing[-1]
    else:
        state = TrainState()
        csv_log.start(None)
        last_ckpt = None

    seq_len = data.seq_len
    n_train = data.train_ids.shape[0]
    total = planned_steps(n_train, seq_len, cfg)
    trained = f"LoRA r={cfg.lora_r} on {','.join(cfg.lora_targets)}" if stage.save is save_lora_outputs else "trained"
    log.info(
        "%s: %s, options %s, device %s %s; %s: %d trainable of %d parameters; %d train chunks x %d tokens, %d val "
        "chunks; %d optimizer steps planned (global batch %d)",
        name, model_dir, options, device, str(dtype).removeprefix("torch."), trained, n_trainable, n_total, n_train,
        seq_len, data.val_ids.shape[0], total, cfg.global_batch,
    )
    if data.val_ids.shape[0] == 0:
        log.warning("%s: no validation chunks: the learning rate is never reduced", name)

    if state.step == 0 and state.initial_val_loss is None:
        if not is_converted(model_dir):
            state.base_val_loss = base_validation_loss(model_dir, data, cfg.micro_batch, device, dtype)
            log.info("%s: validation loss of the unconverted model: %s", name, _fmt(state.base_val_loss))
        val = validation_loss(objective, data, cfg.micro_batch, device)
        state.initial_val_loss = state.last_val_loss = val
        state.last_val_step = 0
        csv_log.write(step=0, epoch=0.0, lr=opt.param_groups[0]["lr"], tokens_seen=0, val_loss=val)
        log.info("%s: validation loss at the start: %s", name, _fmt(val))

    steps_per_epoch = len(epoch_plan(np.arange(n_train), cfg.micro_batch, cfg.grad_accum))
    base_wall = state.wall_time
    proc_start = time.perf_counter()

    def ckpt(batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Path:
        """A checkpoint of the weights that `batches` (the last step's, None: no step in this process) trained."""
        if batches is not None:
            try:
                check_update(objective, params, batches)
            except _NonFinite as e:
                raise _nonfinite(state.step, e, last_ckpt) from None
        state.wall_time = base_wall + time.perf_counter() - proc_start
        return save_checkpoint(ckpt_root, model, opt, sched, state, run_info, csv_log.path)

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, initial=min(state.step, total), unit="step", desc=name, disable=not cfg.progress,
               dynamic_ncols=True)
    tok_rate = None
    try:
        with logging_redirect_tqdm() if _console_logging(cfg.progress) else contextlib.nullcontext():
            for epoch in range(state.epoch, cfg.epochs):
                plan = epoch_plan(epoch_order(n_train, cfg.seed, epoch), cfg.micro_batch, cfg.grad_accum)
                for s in range(state.step_in_epoch, len(plan)):
                    if state.step >= total:
                        break
                    micro = _budget_cut(plan[s], state.tokens_seen, seq_len, cfg.max_tokens)
                    t0 = time.perf_counter()
                    batches = [_batch(data.train_ids, data.train_mask, mb, device) for mb in micro]
                    n_items = sum(n_targets(lab) for _, lab in batches)
                    lr = opt.param_groups[0]["lr"]
                    try:
                        loss_sum = train_step(objective, params, opt, batches, cfg.max_grad_norm)
                    except _NonFinite as e:
                        raise _nonfinite(state.step + 1, e, last_ckpt) from None
                    dt = time.perf_counter() - t0
                    tokens = sum(x.numel() for x, _ in batches)
                    state.train_time += dt
                    state.step += 1
                    state.tokens_seen += tokens
                    state.target_tokens += n_items
                    state.step_in_epoch = s + 1
                    if state.step_in_epoch == len(plan):
                        state.epoch, state.step_in_epoch = epoch + 1, 0
                    state.last_loss = loss_sum
                    if state.initial_train_loss is None:
                        state.initial_train_loss = loss_sum
                    rate = tokens / dt if dt > 0 else float("nan")
                    tok_rate = rate if tok_rate is None else 0.9 * tok_rate + 0.1 * rate

                    val = None
                    periodic = cfg.eval_every > 0 and state.step % cfg.eval_every == 0
                    if periodic or state.step == total:
                        val = validation_loss(objective, data, cfg.micro_batch, device)
                        state.last_val_loss, state.last_val_step = val, state.step
                        log.info("%s: step %d: train loss %.4f, validation loss %s", name, state.step, loss_sum,
                                 _fmt(val))
                        if periodic and val is not None:
                            sched.step(val)
                    epoch_pos = epoch + (s + 1) / len(plan)
                    csv_log.write(step=state.step, epoch=round(epoch_pos, 4), loss=loss_sum, lr=lr,
                                  tokens_seen=state.tokens_seen, tokens_per_s=round(rate, 1), val_loss=val)
                    if (cfg.ckpt_every > 0 and state.step % cfg.ckpt_every == 0) or state.step == total:
                        last_ckpt = ckpt(batches)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{tok_rate:.0f}", lr=f"{lr:.1e}")
                    if callback is not None:
                        callback({"step": state.step, "epoch": epoch_pos, "loss": loss_sum, "lr": lr,
                                  "tokens_seen": state.tokens_seen, "val_loss": val})
                if state.step >= total:
                    break
    except KeyboardInterrupt:
        where = f"the last checkpoint ({last_ckpt}) is kept: rerun to resume" if last_ckpt else "no checkpoint yet"
        log.warning("%s: interrupted at step %d; %s", name, state.step, where)
        raise
    finally:
        bar.close()

    if last_ckpt is None or last_ckpt.name != f"{CKPT_PREFIX}{state.step:08d}":
        last_ckpt = ckpt()  # e.g. a run of 0 steps: a rerun then starts where this one ended
    wall = base_wall + time.perf_counter() - proc_start

    stage.save(model, out, tokenizer, model_dir)
    if (out / "adapter").is_dir() and not is_converted(model_dir):  # liger.load(base, adapter=...) converts first
        write_json_atomic(out / "adapter" / ADAPTER_OPTIONS, full_options)

    summary = {
        "status": "trained",
        "stage": name,
        "method": full_options["method"],
        "options": options,
        "liger_options": full_options,
        "train_config": asdict(cfg),
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "out_dir": str(out),
        "device": _device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "optimizer_steps": state.step,
        "planned_steps": total,
        "epochs_completed": round(state.step / steps_per_epoch, 4),
        "tokens_trained": state.tokens_seen,
        "target_tokens_trained": state.target_tokens,
        "seq_len": seq_len,
        "train_chunks": n_train,
        "val_chunks": int(data.val_ids.shape[0]),
        "wall_time_s": round(wall, 3),
        "train_time_s": round(state.train_time, 3),
        "tokens_per_s": round(state.tokens_seen / state.train_time, 2) if state.train_time > 0 else None,
        "initial_train_loss": state.initial_train_loss,
        "final_train_loss": state.last_loss,
        "base_val_loss": state.base_val_loss,
        "initial_val_loss": state.initial_val_loss,
        "final_val_loss": state.last_val_loss,
        "final_lr": opt.param_groups[0]["lr"],
        "trainable_parameters": n_trainable,
        "total_parameters": n_total,
        **stage.extra(model),
        "resumed_at_steps": state.resumed_at,
        "resume_changes": state.changes,
        "checkpoint": str(last_ckpt),
        "versions": versions("torch", "transformers", "peft", "liger", "numpy"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_time_s": round(time.perf_counter() - t_start, 3),
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("%s: done: %d steps, %d tokens, %.1f tokens/s; train loss %s -> %s, val loss %s -> %s; wrote %s",
             name, state.step, state.tokens_seen, summary["tokens_per_s"] or 0.0, _fmt(state.initial_train_loss),
             _fmt(state.last_loss), _fmt(state.initial_val_loss), _fmt(state.last_val_loss), out)
    return summary


def _nonfinite(step: int, e: _NonFinite, last_ckpt: Path | None) -> NonFiniteLossError:
    """The error that stops a run at a non-finite `step`; the kept checkpoint records it (`DIVERGED`)."""
    advice = "a lower learning rate (--lr) or gradient clipping on (--max-grad-norm 1.0)"
    if last_ckpt is None:
        kept = f"no checkpoint had been written yet: rerun with {advice}"
    else:
        write_json_atomic(last_ckpt / DIVERGED, {"step": step, "what": e.what, "value": str(e.value)})
        kept = (f"the last good checkpoint is kept at {last_ckpt}: rerun with {advice} to resume from it, or add "
                "--restart to start over")
    return NonFiniteLossError(f"step {step}: the {e.what} is {e.value}; training stopped, {kept}")


# ------------------------------------------------------------------------------------------------ CLI


def _options_arg(text: str) -> dict | None:
    """--options: a JSON object (or null), or the path of a JSON file holding one."""
    src = text
    if not text.lstrip().startswith(("{", "null")) and Path(text).is_file():
        src = Path(text).read_text(encoding="utf-8")
    try:
        value = json.loads(src)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object ({e.msg}): {text!r}") from None
    if value is not None and not isinstance(value, dict):
        example = '{"method": "liger_gla"}'
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{example}', got {text!r}")
    return value


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
    return TrainConfig(**{**asdict(default_train_config(options, stage)), **given})


def _cli_finetune(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, args.options)
    summary = finetune(args.model, args.data, args.out, options=args.options, train=cfg, restart=args.restart)
    if summary["status"] == "skipped":
        print(f"{args.out}: method base, nothing trained")
    else:
        print(f"{args.out}: {summary['optimizer_steps']} steps, {summary['tokens_trained']} tokens, "
              f"val loss {_fmt(summary['initial_val_loss'])} -> {_fmt(summary['final_val_loss'])} "
              f"(unconverted model: {_fmt(summary.get('base_val_loss'))})")
    return 0


def add_stage_cli(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str,
                  options_help: str, recipe_note: str) -> argparse.ArgumentParser:
    """A training stage's subcommand: --model, --data, --out, --options and one flag per TrainConfig field."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--model", required=True, type=Path, help="base model folder")
    p.add_argument("--data", required=True, type=Path, help="prepare-data output folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--options", required=True, type=_options_arg, help=options_help)
    p.add_argument("--restart", action="store_true",
                   help="delete OUT/checkpoints and train from the start (a resume needs the checkpoint's settings)")
    _add_config_flags(p, recipe_note)
    p.set_defaults(func=func)
    return p


def add_cli(sub: Any) -> argparse.ArgumentParser:
    """Add the `finetune` subcommand."""
    return add_stage_cli(
        sub, "finetune", _cli_finetune,
        help="linearize a model and fine-tune LoRA on the packed Alpaca chunks",
        description="Linearize (liger.linearize with --options), attach LoRA, train; resumes from "
                    "OUT/checkpoints. Writes OUT/{adapter,model,train_log.csv,summary.json}. For lolcats this is "
                    "stage 2: --model is the stage-1 (liger transfer) OUT/model.",
        options_help='Liger method and options as JSON, e.g. \'{"method": "liger_gla"}\' (or a JSON file); '
                     '\'{"method": "base"}\' trains nothing',
        recipe_note="; lolcats: its variant's stage-2 recipe",
    )


__all__: Sequence[str] = ["TrainConfig", "TrainError", "NonFiniteLossError", "finetune", "add_cli"]
