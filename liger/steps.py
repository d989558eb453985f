"""One optimizer step of a training stage and the order of the steps.

The schedule: each epoch shuffles the training chunks (a numpy Generator seeded with seed + epoch) and cuts them
into steps of `grad_accum` micro-batches of `micro_batch` chunks; the token budget (`max_tokens`) cuts the step
that reaches it. The loss of one step is the mean over all its target tokens (token-weighted across the
accumulated micro-batches); the validation loss is the mean over all target tokens of the validation chunks.
The optimizer is AdamW with ReduceLROnPlateau on the validation loss. A loss or gradient norm that is not finite
raises `NonFinite` before any update (`train_step`); `check_update` refuses the weights an update left unusable.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liger.device import synchronize
from liger.packed import PackedData

if TYPE_CHECKING:
    from liger.train_config import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, labels (-100 where the token is no target)


# ------------------------------------------------------------------------------------------- schedule


def epoch_order(n_chunks: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training chunks in `epoch` (a numpy Generator seeded with seed + epoch)."""
    return np.random.default_rng(seed + epoch).permutation(n_chunks)


def epoch_plan(order: np.ndarray, micro_batch: int, grad_accum: int) -> list[list[np.ndarray]]:
    """Cut an epoch's chunk order into optimizer steps of up to `grad_accum` micro-batches of `micro_batch`."""
    micro = [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def budget_cut(micro: list[np.ndarray], tokens_seen: int, seq_len: int, max_tokens: int | None) -> list[np.ndarray]:
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
        micro = budget_cut(plan[steps % len(plan)], tokens, seq_len, cfg.max_tokens)
        tokens += sum(len(mb) for mb in micro) * seq_len
        steps += 1
    return steps


# ---------------------------------------------------------------------------------------------- losses


def batch(ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, device: torch.device) -> Batch:
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
            x, labels = batch(data.val_ids, data.val_mask, np.arange(start, min(n, start + micro_batch)), device)
            k = n_targets(labels)
            if k:
                total += float(micro_loss(model, x, labels, 1).float())
                count += k
    finally:
        model.train(was_training)
    return total / count if count else None


def base_validation_loss(model_dir: str | os.PathLike[str], data: PackedData, micro_batch: int, device: torch.device,
                         dtype: torch.dtype) -> float | None:
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


# ---------------------------------------------------------------------------------------------- update


class NonFinite(Exception):
    """A loss or gradient norm (`what`) came out NaN or infinite (`value`)."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} {value}")
        self.what, self.value = what, value


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs that the stage trains."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable weights and ReduceLROnPlateau on the validation loss."""
    params = [p for _, p in trainable(model)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor,
                                                       patience=cfg.lr_patience, min_lr=cfg.min_lr)
    return opt, sched


def _loss_and_grads(model: torch.nn.Module, batches: list[Batch]) -> float:
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
               batches: list[Batch], max_grad_norm: float) -> float:
    """One optimizer step over accumulated micro-batches (input_ids, labels); returns the step's loss.

    Stops before any update when the loss or the gradient norm is not finite. Synchronises the device at the end,
    so the caller can time the step.
    """
    opt.zero_grad(set_to_none=True)
    value = _loss_and_grads(model, batches)
    if not math.isfinite(value):
        raise NonFinite("loss", value)
    if max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if not math.isfinite(norm):
            raise NonFinite("gradient norm", norm)
    opt.step()
    if params:
        synchronize(params[0].device)
    return value


def check_update(model: torch.nn.Module, params: list[torch.nn.Parameter], batches: list[Batch]) -> None:
    """Raise `NonFinite` when the weights an update left are unusable: a trainable weight is not finite, or the
    step's own batches through them give a loss or gradient norm that is not (what the next step would meet).

    Run before a checkpoint keeps the weights. In eval mode (no dropout: the RNG streams stay as they were); the
    gradients are dropped after.
    """
    largest = float(torch.stack([p.detach().abs().max().float() for p in params]).max()) if params else 0.0
    if not math.isfinite(largest):
        raise NonFinite("largest trainable weight after the update", largest)
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
        raise NonFinite("loss after the update", loss)
    if not math.isfinite(norm):
        raise NonFinite("gradient norm after the update", norm)
