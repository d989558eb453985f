"""What a conversion method declares, without torch: its options, layer, training stages and recipes, the
parameters it adds, and how it decodes.

The options of every method share one convention (`OPTIONS_VERSION`, recorded in every saved entry):

- ``window``: the keys a query attends to with softmax, itself included (a terraced window: its block length).
- ``chunk_size``: the chunk length of a chunked recurrence; ``query_block``: queries per block of a parallel
  attention form. Version 1 (entries saved without ``options_version``) counted Liger's window as the keys
  before the query and called LoLCATs' query block ``chunk_size``; `MethodOptions.upgrade` maps such entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from liger.errors import LigerError

OPTIONS_VERSION = 2  # the convention above; saved entries without "options_version" are version 1
VERSION_KEY = "options_version"
# TrainConfig fields that a stage's recipe sets; the other fields (budgets, batch, device) are shared by all methods.
RECIPE_FIELDS = ("lr", "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                 "eval_every")


class MethodOptions:
    """Base of a method's options dataclass (which declares ``method`` and ``softmax_layers`` among its fields)."""

    kind: ClassVar[str] = "Liger"  # how errors name the options: "unknown Liger option(s)"
    renamed: ClassVar[dict[str, str]] = {}  # option names of version 1 -> their name now (said in errors)

    method: str
    softmax_layers: list[int]

    @classmethod
    def build(cls, method: str, **options: Any) -> MethodOptions:
        """The options from keyword settings of the current convention; unknown names are a LigerError."""
        known = {f.name for f in fields(cls)} - {"method"}
        unknown = sorted(set(options) - known)
        if unknown:
            hints = [f"{name} is now {cls.renamed[name]}" for name in unknown if name in cls.renamed]
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise LigerError(f"unknown {cls.kind} option(s) {', '.join(unknown)}{hint}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(method=method, **options)

    @classmethod
    def upgrade(cls, options: dict[str, Any], version: int) -> dict[str, Any]:
        """Settings written under convention `version` (< OPTIONS_VERSION) in the current one (a new dict)."""
        return dict(options)

    def to_dict(self) -> dict[str, Any]:
        """Every option, with the convention's version: what a converted model's config and adapters record."""
        return {**asdict(self), VERSION_KEY: OPTIONS_VERSION}


def head_dim(config: Any) -> int:
    """A model config's attention head dimension: its `head_dim`, else hidden_size / num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _no_parameters(config: Any, options: Any) -> int:
    return 0


@dataclass(frozen=True)
class Method:
    """One conversion method, as the registry (liger.methods) knows it.

    name: the `method` of `liger.linearize` and of the options; family: methods that are variants of one another
    share it ("liger": the Liger methods); options: its `MethodOptions` dataclass; layer: its attention layer, a
    class or "module:Class" imported when a model is converted (torch is needed only then); stages: its training
    stages in order ("transfer": attention transfer, `liger transfer`; "lora": LoRA fine-tuning, `liger finetune`);
    recipes: the options -> {stage: the TrainConfig fields it sets (RECIPE_FIELDS)}; added_parameters: (model
    config, options) -> parameters the conversion adds; step_decoding: its layer implements the fixed-buffer `step`
    of `liger.decode.GraphDecoder`; exact_window_shapes: None when decoding token by token equals the parallel
    forward for all options, else the `window_shape`s for which it does; runtime_options: the options a saved
    model may be loaded with instead of its own (they change how attention is computed, not the parameters).
    """

    name: str
    family: str
    options: type
    layer: str | type
    recipes: Callable[[Any], Mapping[str, Mapping[str, Any]]]
    stages: tuple[str, ...] = ("lora",)
    added_parameters: Callable[[Any, Any], int] = _no_parameters
    step_decoding: bool = False
    exact_window_shapes: tuple[str, ...] | None = None
    runtime_options: tuple[str, ...] = ()

    def not_runtime(self, keys: Any) -> list[str]:
        """The keys, sorted, that are not runtime options of this method (a saved model cannot take them)."""
        return sorted(set(keys) - set(self.runtime_options))

    def recipe(self, stage: str, options: Any) -> dict[str, Any]:
        """The TrainConfig fields that `stage` sets for these options (a copy: safe to edit)."""
        if stage not in self.stages:
            raise LigerError(f"method {self.name} has no {stage} stage (its stages: {', '.join(self.stages)})")
        recipe = self.recipes(options)[stage]
        bad = sorted(set(recipe) - set(RECIPE_FIELDS))
        if bad:
            raise LigerError(f"method {self.name}: its {stage} recipe sets {bad}, which are not recipe fields")
        return {k: list(v) if isinstance(v, list) else v for k, v in recipe.items()}

    def layer_class(self) -> type:
        """The layer class (imports its module, and torch, on first use)."""
        return load_object(self.layer) if isinstance(self.layer, str) else self.layer

    def decodes_exactly(self, options: Any) -> bool:
        """Whether decoding token by token equals the parallel forward with these options."""
        shapes = self.exact_window_shapes
        return shapes is None or getattr(options, "window_shape", None) in shapes


def load_object(ref: str) -> Any:
    """The object a "module:object" reference names."""
    module, _, name = ref.partition(":")
    if not module or not name:
        raise LigerError(f"{ref!r} is not a 'module:object' reference")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LigerError(f"{ref}: cannot be imported ({e})") from e
