"""The settings of a training stage (`TrainConfig`) and each method's recipe for them (`default_train_config`).

Defaults are the paper's recipe (docs/method.md#lora-optimizer-and-schedule): LoRA r=8, alpha 8 on q/k/v; AdamW
(weight decay 0.01), lr 1e-3 without warm-up, ReduceLROnPlateau on the validation loss; micro batch 1, global
batch 8; clipping at 1.0; 2 epochs. A method's stage may set other values of the `liger.methods.RECIPE_FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from liger.errors import TrainError
from liger.methods import stage_recipe


@dataclass
class TrainConfig:
    """Settings of one LoRA fine-tuning run; defaults are the paper's recipe (module docstring)."""

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
    """The method's recipe for `stage` (liger.methods.stage_recipe), e.g. the paper's for the Liger methods."""
    if is_base(options):
        return TrainConfig()
    return TrainConfig(**stage_recipe(options.get("method"), stage, options))


def is_base(options: dict | None) -> bool:
    """Whether `options` ask for the unconverted model (None or method base): nothing to train."""
    return options is None or options.get("method") == "base"
