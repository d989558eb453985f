"""LoRA fine-tuning of a linearized model on the packed Alpaca chunks (docs/method.md): its settings (`TrainConfig`,
each method's recipe) and `run_stage`, which runs any training stage (`liger.stages`: this fine-tune, or LoLCATs'
attention transfer in `liger.transfer`) in the pieces of `liger.loop`.

`finetune(model_dir, data_dir, out_dir, options=..., train=TrainConfig(...))` loads the base model, converts
it with `liger.linearize(model, **options)`, attaches LoRA (peft) to the attention projections with everything
else frozen, and trains on the packed chunks of `liger.data.prepare_data` (`liger.packed`).

Recipe: AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-3 without warm-up, ReduceLROnPlateau(factor 0.1,
patience 10, min_lr 1e-5) stepped on the validation loss measured every `eval_every` optimizer steps, micro
batch 1 and global batch 8 by gradient accumulation, gradient clipping at 1.0, 2 epochs. The loss of one
optimizer step is the mean over all its target tokens (token-weighted across the accumulated micro-batches);
the validation loss is the mean over all target tokens of the validation chunks (`liger.steps`).

Outputs in `out_dir`: ``adapter/`` (peft), ``model/`` (LoRA merged into the converted model, with the
tokenizer; `liger.load` opens it), ``train_log.csv``, ``checkpoints/`` (the last checkpoint, `liger.checkpoints`;
a rerun resumes from it and ends exactly as an uninterrupted run would) and ``summary.json``, written last.
`out_dir` must be new, empty or this command's own earlier output (`liger.fileio`); ``restart=True``
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from liger.errors import NonFiniteLossError, TrainError
from liger.fileio import claim_dir, write_json_atomic
from liger.loop import VERSIONS, StageRun
from liger.provenance import versions
from liger.stages import LORA, Stage

log = logging.getLogger("liger.train")

# TrainConfig fields that a LoLCATs recipe sets (liger.lolcats.RECIPES); the other fields are shared by all methods.
RECIPE_FIELDS = ("lr", "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                 "eval_every")
# The commands besides this stage's own whose output folder a training stage may write over
STAGE_ACCEPTS = ("restore",)


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


def default_train_config(options: dict | None, stage: str = "lora") -> TrainConfig:
    """The paper's recipe: Liger's for Liger methods, the variant's stage recipe for lolcats (liger.lolcats)."""
    if options and options.get("method") == "lolcats":
        from liger.lolcats import recipe

        return TrainConfig(**recipe(options.get("variant", "original"), stage))
    return TrainConfig()


def is_base(options: dict | None) -> bool:
    """Whether `options` ask for the unconverted model (None or method base): nothing to train."""
    return options is None or options.get("method") == "base"


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
    claim_dir(out, stage.name, accept=STAGE_ACCEPTS, inputs={"--model": model_dir, "--data": data_dir})
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


__all__: Sequence[str] = ["TrainConfig", "TrainError", "NonFiniteLossError", "finetune", "run_stage",
                          "default_train_config"]
