"""Attention transfer, stage 1 of the methods that have it (LoLCATs: docs/lolcats.md#stage-1-attention-transfer),
a training stage (`liger.stages`) run by `liger.train`.

Every attention layer is converted; only its `transfer_parameters` (LoLCATs: the feature maps and, in the original,
the window factors) are trained, to match the softmax attention's per-head outputs (before o_proj) on the chunks.
Each layer passes the softmax output on (teacher forcing), so one forward trains all layers at once and
independently. Loss: 1000 x the mean over layers of the MSE over every position of the chunk (prompt included).

`transfer(model_dir, data_dir, out_dir, options={"method": "lolcats"})` writes ``model/`` (the converted model
with its trained feature maps; stage 2 is `liger.train.finetune` on it), ``train_log.csv``, ``checkpoints/``
(resumable, as the LoRA fine-tune) and ``summary.json``. The last step's weights are kept, as in the LoRA
fine-tune and the Liger authors' re-run (the original code reloads the best validation checkpoint).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from liger import methods
from liger.errors import TrainError
from liger.fileio import atomic_dir
from liger.layers.base import LinearizedAttention
from liger.methods.lolcats import MSE_FACTOR
from liger.models import save_model_dir
from liger.packed import PackedData
from liger.stages import Stage, load_converted
from liger.steps import n_targets
from liger.train import run_stage
from liger.train_config import TrainConfig


def transfer_layers(model: torch.nn.Module) -> list[LinearizedAttention]:
    """The converted layers that attention transfer trains."""
    return [m for m in model.modules() if isinstance(m, LinearizedAttention) and m.transfer_parameters()]


def build_transfer_model(model_dir: Path, options: dict, cfg: TrainConfig, device: torch.device,
                         dtype: torch.dtype) -> torch.nn.Module:
    """The converted model with only its layers' `transfer_parameters` trainable."""
    method = options.get("method")
    if "transfer" not in methods.get(method).stages:
        with_transfer = [m for m in methods.names() if "transfer" in methods.get(m).stages]
        raise TrainError(f"attention transfer is a stage of {', '.join(with_transfer)} only: the method must be "
                         f"{' or '.join(with_transfer)}, not {method!r}")
    model = load_converted(model_dir, options, device, dtype)
    for layer in transfer_layers(model):
        for p in layer.transfer_parameters():
            p.requires_grad_(True)
    model.train()
    return model


class TransferObjective(torch.nn.Module):
    """What the training loop calls in stage 1: the backbone in transfer mode; ``.loss`` = MSE_FACTOR x the mean
    over layers of the MSE, scaled by this micro-batch's share of the step's positions (as token losses are)."""

    def __init__(self, model: torch.nn.Module, mse_factor: float = MSE_FACTOR) -> None:
        super().__init__()
        self.model = model
        self.mse_factor = mse_factor
        self.layers = transfer_layers(model)
        if not self.layers:
            raise TrainError("the model has no layer to train by attention transfer (all kept as softmax attention?)")

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int,
                use_cache: bool = False) -> SimpleNamespace:
        for layer in self.layers:
            layer.transfer, layer.transfer_mse = True, None
        try:
            self.model.get_decoder()(input_ids=input_ids, use_cache=False)  # the LM head plays no part
            mse = torch.stack([layer.transfer_mse for layer in self.layers]).mean()
        finally:
            for layer in self.layers:
                layer.transfer, layer.transfer_mse = False, None
        return SimpleNamespace(loss=self.mse_factor * mse * (n_targets(labels) / num_items_in_batch))


def every_position(data: PackedData) -> PackedData:
    """The chunks with every position counted: the transfer loss covers prompts too, each micro-batch alike."""
    ones = {f"{split}_mask": np.ones(getattr(data, f"{split}_ids").shape, dtype=np.bool_) for split in ("train", "val")}
    return dataclasses.replace(data, **ones)


def _save(model: torch.nn.Module, out: Path, tokenizer: Any | None) -> None:
    """``model/`` and ``added/``: the trained feature maps and window factors alone (``liger merge --added``)."""
    from liger.convert import save_added

    save_model_dir(model, out / "model", tokenizer)
    with atomic_dir(out / "added") as tmp:
        save_added(model, tmp)


def _extra(model: torch.nn.Module) -> dict[str, Any]:
    from liger.convert import options_of

    return {"mse_factor": MSE_FACTOR, "added_parameters": methods.added_parameters(model.config, options_of(model))}


TRANSFER = Stage("transfer", build_transfer_model, objective=TransferObjective, data=every_position, save=_save,
                 extra=_extra, recipe="transfer")


def transfer(model_dir, data_dir, out_dir, *, options: dict, train: TrainConfig | None = None,
             callback=None, restart: bool = False) -> dict[str, Any]:
    """Stage 1 on `data_dir`: convert the model in `model_dir` with `options` (e.g. lolcats), train its transfer
    parameters, write `out_dir`. `train` None: the method's transfer recipe (liger.methods.stage_recipe); resuming
    and `restart` as in `liger.train.finetune`. Returns the summary."""
    return run_stage(TRANSFER, model_dir, data_dir, out_dir, options=options, train=train, callback=callback,
                     restart=restart)

