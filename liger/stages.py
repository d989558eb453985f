"""Training stages: what differs between them (`Stage`) and the LoRA fine-tune's (`LORA`), whose model is the
converted model with every weight frozen (`load_converted`) and LoRA attached (`build_model`), plus the parameters
the conversion added when its layers train them in this stage (`finetune_parameters`: Liger's ablation options
`gate: projection`, `feature_map: learnable`). The loop that runs a stage, its checkpoints and its summary are
`liger.train.run_stage`'s.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liger.device import resolve_device, resolve_dtype
from liger.errors import TrainError
from liger.fileio import atomic_dir
from liger.models import save_model_dir
from liger.packed import PackedData

if TYPE_CHECKING:
    from liger.train_config import TrainConfig


def device_and_dtype(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 weights when available (dtype auto), else CPU with fp32."""
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {cfg.device!r} asked for but CUDA is not available; use --device cpu")
    return device, resolve_dtype(cfg.dtype, device.type)


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


def finetune_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The added parameters that the LoRA stage trains beside LoRA: each converted layer's `finetune_parameters`
    (none for LoLCATs, whose feature maps stage 1 trained, nor for the Liger methods' defaults)."""
    return [p for m in model.modules() if callable(getattr(m, "finetune_parameters", None))
            for p in m.finetune_parameters()]


def build_model(model_dir: str | os.PathLike[str], options: dict | None, cfg: TrainConfig, device: torch.device,
                dtype: torch.dtype) -> torch.nn.Module:
    """Load the model, linearize it with `options` (None: keep softmax attention) and attach LoRA (peft).

    Only the LoRA weights are trainable, and the parameters the conversion added for this stage to train
    (`finetune_parameters`). A folder that holds an already converted model is accepted when its options are the
    requested ones (e.g. a LoLCATs model after attention transfer).
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
    for p in finetune_parameters(model):  # peft froze every non-LoRA weight
        p.requires_grad_(True)
    model.train()
    return model


def save_lora_outputs(model: torch.nn.Module, out: Path, tokenizer: Any | None) -> None:
    """``adapter/`` (the LoRA weights), ``model/`` (LoRA merged into the converted model, with the tokenizer) and,
    when the stage trained added parameters, ``added/`` (them alone, `liger.convert.save_added`): the base model,
    added/ and adapter/ rebuild model/ (``liger merge --added --adapter``)."""
    from liger.convert import save_added

    trained_added = bool(finetune_parameters(model))
    with atomic_dir(out / "adapter") as tmp:
        model.save_pretrained(str(tmp), save_embedding_layers=False)  # LoRA only; skips a config reload
    merged = model.merge_and_unload()
    if trained_added:
        with atomic_dir(out / "added") as tmp:
            save_added(merged, tmp)
    elif (out / "added").is_dir():  # an earlier run's, of other options: it does not describe this model
        shutil.rmtree(out / "added")
    save_model_dir(merged, out / "model", tokenizer)


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
    save: Callable[[torch.nn.Module, Path, Any], None] = save_lora_outputs
    extra: Callable[[torch.nn.Module], dict[str, Any]] = lambda model: {}
    recipe: str = "lora"  # the method's stage whose recipe (liger.methods.stage_recipe) is the default TrainConfig


def _extra(model: torch.nn.Module) -> dict[str, Any]:
    """The summary's count of the parameters the conversion added (`liger.methods.added_parameters`)."""
    from liger import methods
    from liger.convert import options_of

    options = options_of(model)
    return {"added_parameters": methods.added_parameters(model.config, options) if options is not None else 0}


LORA = Stage("finetune", build_model, extra=_extra)
