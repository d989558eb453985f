"""The Liger methods (docs/method.md): liger_gla, liger_hgrn2 and liger_gsa.

Each turns a pretrained attention layer into Liger Attention: a sliding-window softmax branch beside a gated
recurrence built from the layer's own q/k/v projections (no new parameters), trained in one LoRA stage with the
paper's recipe, and decoded token by token (also by `liger.decode.GraphDecoder`'s fixed-buffer step), exactly.
Two ablation options of the paper's Table 12 add parameters, trained in the same LoRA stage: ``gate: projection``
and ``feature_map: learnable`` (`added_parameters`; docs/method.md#ablation-options). The three share their
options, recipe and layer machinery and differ in two defaults and the recurrence, so they are declared together
here; their layers are in `liger.layers.liger`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from liger.errors import LigerError
from liger.methods.spec import Method, MethodOptions, head_dim

HYBRIDS = ("liger_attention", "none")
FEATURE_MAPS = ("softmax", "learnable", "none")
GATES = ("pooled", "none", "projection")
GATE_RANK = 16  # rank of the `gate: projection` low-rank projection (GLA's gate_low_rank_dim)
GATE_SOURCES = ("k", "q", "v")
IMPLS = ("auto", "chunk", "recurrent", "fla")
# What differs between the methods: the gate normaliser and the feature map of q and k (docs/method.md).
DEFAULTS = {
    "liger_gla": dict(gate_normalizer=16.0, feature_map="softmax"),
    "liger_hgrn2": dict(gate_normalizer=1.0, feature_map="softmax"),
    "liger_gsa": dict(gate_normalizer=16.0, feature_map="none"),
}
# The paper's LoRA recipe (docs/method.md): the default TrainConfig of `liger finetune`.
RECIPE = dict(lr=1e-3, weight_decay=0.01, max_grad_norm=1.0, lora_r=8, lora_alpha=8, lora_dropout=0.0,
              lora_targets=["q_proj", "k_proj", "v_proj"], eval_every=200)


@dataclass
class LigerOptions(MethodOptions):
    """Settings of the Liger layer. `None` means the method's default (DEFAULTS)."""

    method: str = "liger_gla"
    hybrid: str = "liger_attention"  # intra-layer hybrid: sliding-window softmax attention beside the recurrence
    window: int = 65  # softmax keys per query, its own included: itself and the 64 before it (the paper's window 64)
    alpha: float = 0.5  # weight of the sliding-window branch
    beta: float = 0.5  # weight of the recurrent branch (0: window only)
    gate_normalizer: float | None = None  # g = logsigmoid(Pool(k)) / normalizer; 16 for GLA/GSA, 1 for HGRN2
    feature_map: str | None = None  # softmax over the head dim (GLA, HGRN2); none for GSA; learnable: Table 12
    gate: str = "pooled"  # pooled: Pool(gate_source); none: no decay (GLA only); projection: a new x W1 W2 + b
    gate_source: str = "k"  # the projection pooled into the gate (the paper's ablation also tries q and v)
    num_slots: int = 64  # GSA slots per head
    softmax_layers: list[int] = field(default_factory=list)  # inter-layer hybrid: layers kept as softmax attention
    chunk_size: int = 16  # chunk length of the PyTorch chunked recurrence
    impl: str = "auto"  # recurrence implementation: auto | chunk | recurrent | fla

    def __post_init__(self) -> None:
        if self.method not in DEFAULTS:
            raise LigerError(f"LigerOptions is for the Liger methods ({', '.join(DEFAULTS)}), not {self.method!r}")
        for name, value in DEFAULTS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value, allowed in [
            ("hybrid", self.hybrid, HYBRIDS),
            ("feature_map", self.feature_map, FEATURE_MAPS),
            ("gate", self.gate, GATES),
            ("gate_source", self.gate_source, GATE_SOURCES),
            ("impl", self.impl, IMPLS),
        ]:
            if value not in allowed:
                raise LigerError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.window < 1 or self.num_slots < 1 or self.chunk_size < 1 or self.gate_normalizer <= 0:
            raise LigerError("window (keys per query, its own included), num_slots and chunk_size must be >= 1, "
                             "gate_normalizer > 0")
        if self.hybrid == "none" and self.beta == 0:
            raise LigerError("hybrid=none with beta=0 leaves no branch: the layer would output zeros")
        if self.gate == "none" and self.method != "liger_gla":
            raise LigerError(f"gate=none is for liger_gla only: {self.method}'s keys (HGRN2) or slot writes (GSA) "
                             "are 1 - exp(g), which a zero log-gate makes zero (pure linear attention is liger_gla "
                             "with gate=none)")
        if self.gate != "pooled" and self.gate_source != "k":
            raise LigerError(f"gate_source={self.gate_source!r} needs gate=pooled (it picks what Pool() reads), "
                             f"not gate={self.gate!r}")
        if self.adds_parameters and not self.uses_recurrence:
            raise LigerError("gate=projection and feature_map=learnable act on the recurrent branch, which beta=0 "
                             "turns off")
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    @classmethod
    def upgrade(cls, options: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 counted the window's keys before the query: one fewer than now."""
        options = dict(options)
        if version < 2 and "window" in options:
            options["window"] = options["window"] + 1
        return options

    @property
    def lookback(self) -> int:
        """Keys before the query in its window (what the decoding state keeps)."""
        return self.window - 1

    @property
    def uses_window(self) -> bool:
        return self.hybrid == "liger_attention" and self.alpha != 0

    @property
    def uses_recurrence(self) -> bool:
        return self.beta != 0 or self.hybrid == "none"

    @property
    def maps_keys(self) -> bool:
        """Whether the keys go through the feature map: not HGRN2's, whose keys are 1 - exp(g), its gates."""
        return self.method != "liger_hgrn2"

    @property
    def adds_parameters(self) -> bool:
        """Whether the layer gets parameters of its own (gate projection, learnable feature maps)."""
        return self.gate == "projection" or self.feature_map == "learnable"


def gate_width(config: Any, options: LigerOptions) -> int:
    """Gate logits per token: H_kv * head_dim (GLA, HGRN2: one decay per key dimension) or H_kv * num_slots (GSA)."""
    per_head = options.num_slots if options.method == "liger_gsa" else head_dim(config)
    return config.num_key_value_heads * per_head


def added_parameters(config: Any, options: LigerOptions) -> int:
    """Parameters the conversion adds per converted layer: none by default; `gate: projection` adds
    hidden * r + r * width + width (x W1 W2 + b, r = GATE_RANK); `feature_map: learnable` adds a d x d map per
    query head and per key/value head (H d^2 + H_kv d^2; HGRN2 has no key map, its keys are 1 - exp(g))."""
    H, Hkv, d = config.num_attention_heads, config.num_key_value_heads, head_dim(config)
    per_layer = 0
    if options.gate == "projection":
        width = gate_width(config, options)
        per_layer += config.hidden_size * GATE_RANK + GATE_RANK * width + width
    if options.feature_map == "learnable":
        per_layer += (H + (Hkv if options.maps_keys else 0)) * d * d
    return (config.num_hidden_layers - len(options.softmax_layers)) * per_layer


def _recipes(options: LigerOptions) -> dict[str, dict]:
    return {"lora": RECIPE}


def _method(name: str, layer: str) -> Method:
    return Method(name=name, family="liger", options=LigerOptions, layer=f"liger.layers.liger:{layer}",
                  recipes=_recipes, stages=("lora",), added_parameters=added_parameters, step_decoding=True,
                  runtime_options=("window", "chunk_size"))


GLA = _method("liger_gla", "GLAAttention")
HGRN2 = _method("liger_hgrn2", "HGRN2Attention")
GSA = _method("liger_gsa", "GSAAttention")
