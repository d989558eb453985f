"""LoLCATs (Zhang et al., arXiv 2410.10254), the Liger paper's main baseline (docs/lolcats.md).

Each attention layer keeps its q/k/v/o projections and rotary embedding and gains a Hedgehog feature map per
head for q and for k and a learnable window factor per head; its output is a softmax window and linear attention
over older keys with one shared normaliser (`liger.ops.hybrid`; the layer is `liger.layers.lolcats`). Two
training stages: attention transfer (`liger transfer`: the feature maps learn to match softmax attention), then
LoRA (`liger finetune`). Two variants: `original` (LoLCATs' code and paper) and `liger` (the Liger authors'
re-run). Terraced blocks are cut from each sequence's first real token (LoLCATs' code cuts them from its end), so
both window shapes decode token by token exactly as the parallel forward computes, at every length (a terraced
model with its terraced window, where the original code continues with the sliding one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from liger.errors import LigerError
from liger.methods.spec import Method, MethodOptions, head_dim

VARIANTS = ("original", "liger")
WINDOW_SHAPES = ("sliding", "terraced")
INITS = ("identity", "normal", "kaiming")
INIT_WINDOW_FACTOR = -2.1972245773362196  # logit(0.1): gamma = 0.1 at the start (LoLCATs' init_window_factor)
# Per variant: window shape, feature width (None: 64 capped at the head dim), feature-map init, whether stage 1
# trains the window factors, and the eps of the shared denominator (docs/lolcats.md, the two variants).
VARIANT_DEFAULTS = {
    "original": dict(window_shape="terraced", feature_dim=None, feature_init="identity", train_window_factor=True,
                     eps=0.0),
    "liger": dict(window_shape="sliding", feature_dim=128, feature_init="normal", train_window_factor=False,
                  eps=1e-6),
}
# The training recipe of each stage per variant (docs/lolcats.md): the TrainConfig fields that differ from the
# Liger fine-tune. No gradient clipping in either code base.
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
RECIPES = {
    "original": {
        "transfer": dict(lr=1e-2, weight_decay=0.0, max_grad_norm=0.0, eval_every=100),
        "lora": dict(lr=1e-4, weight_decay=0.0, max_grad_norm=0.0, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                     lora_targets=_QKVO, eval_every=100),
    },
    "liger": {
        "transfer": dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.0, eval_every=200),
        "lora": dict(lr=1e-4, weight_decay=0.01, max_grad_norm=0.0, lora_r=8, lora_alpha=8, lora_dropout=0.0,
                     lora_targets=_QKVO[:3], eval_every=200),
    },
}
MSE_FACTOR = 1000.0  # stage-1 loss: 1000 x the mean over layers of the MSE (LoLCATs' xent0_mse1000 config)


@dataclass
class LolcatsOptions(MethodOptions):
    """Settings of the LoLCATs layer. `None` means the variant's default (VARIANT_DEFAULTS)."""

    kind = "LoLCATs"
    renamed = {"chunk_size": "query_block"}

    method: str = "lolcats"
    variant: str = "original"  # original (LoLCATs' code and paper) | liger (the Liger authors' re-run)
    window: int = 64  # softmax keys per query, its own included (terraced: the block length; 65-128 keys then)
    window_shape: str | None = None  # terraced (original) | sliding (liger); both decode exactly
    feature_dim: int | None = None  # f: Hedgehog projection width, 2f features (original 64 capped at the head dim)
    feature_init: str | None = None  # identity (original) | normal (N(0, 0.02), liger) | kaiming
    init_window_factor: float = INIT_WINDOW_FACTOR
    train_window_factor: bool | None = None  # stage 1 trains the window factors (original) or keeps them (liger)
    eps: float | None = None  # added to the shared denominator (original 0, liger 1e-6)
    softmax_layers: list[int] = field(default_factory=list)  # layers kept as softmax attention
    query_block: int = 1024  # queries per block of the parallel form: memory O(block * (block + 2 window))

    def __post_init__(self) -> None:
        if self.method != "lolcats":
            raise LigerError(f"LolcatsOptions is for method 'lolcats', not {self.method!r}")
        if self.variant not in VARIANTS:
            raise LigerError(f"variant={self.variant!r} is not one of {', '.join(VARIANTS)}")
        for name, value in VARIANT_DEFAULTS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.window_shape not in WINDOW_SHAPES:
            raise LigerError(f"window_shape={self.window_shape!r} is not one of {', '.join(WINDOW_SHAPES)}")
        if self.feature_init not in INITS:
            raise LigerError(f"feature_init={self.feature_init!r} is not one of {', '.join(INITS)}")
        if self.window < 1 or self.query_block < 1 or (self.feature_dim is not None and self.feature_dim < 1):
            raise LigerError("window, query_block and feature_dim must be >= 1")
        if self.eps < 0:
            raise LigerError(f"eps must be >= 0, got {self.eps}")
        self.train_window_factor = bool(self.train_window_factor)
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    @classmethod
    def upgrade(cls, options: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 called the query block `chunk_size` (the window counted as now)."""
        options = dict(options)
        if version < 2 and "chunk_size" in options:
            options["query_block"] = options.pop("chunk_size")
        return options

    def features(self, head_dim: int) -> int:
        """f for a model of this head dimension."""
        return self.feature_dim if self.feature_dim is not None else min(64, head_dim)


def added_parameters(config: Any, options: LolcatsOptions) -> int:
    """Parameters the conversion adds: per converted layer 2 H D F (the two feature maps) + H (window factors)."""
    H, D = config.num_attention_heads, head_dim(config)
    converted = config.num_hidden_layers - len(options.softmax_layers)
    return converted * (2 * H * D * options.features(D) + H)


def _recipes(options: LolcatsOptions) -> dict[str, dict]:
    return RECIPES[options.variant]


LOLCATS = Method(name="lolcats", family="lolcats", options=LolcatsOptions,
                 layer="liger.layers.lolcats:LolcatsAttention", recipes=_recipes, stages=("transfer", "lora"),
                 added_parameters=added_parameters, step_decoding=False, exact_window_shapes=None,
                 runtime_options=("window", "window_shape", "query_block"))
