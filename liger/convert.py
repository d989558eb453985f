"""`linearize` any Llama-family causal LM in place; save and load converted models.

A converted model's config is the original config under a `liger_<type>` model type with a `liger` entry
(the method and its options). Importing `liger` registers those types with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` rebuilds the original architecture, converts it again, and loads
the weights: a Liger conversion adds no parameters, so the state dicts have the same keys (a LoLCATs one adds
its feature maps and window factors, which the saved weights then hold).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from liger.attention import LigerAttention, PaddingContext
from liger.errors import LigerError
from liger.options import build_options, options_from_dict


def _architectures() -> dict[str, tuple[type, type]]:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    return {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }


SUPPORTED = _architectures()
LIGER_CONFIGS: dict[str, type] = {}


def check_supported(config) -> str:
    """The base model type of `config` (a Liger config counts as its base type); a clear error otherwise."""
    model_type = config.model_type.removeprefix("liger_")
    if model_type not in SUPPORTED:
        raise LigerError(
            f"architecture {config.model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED))} "
            "(the Llama family, incl. Llama-3.x and SmolLM2)"
        )
    return model_type


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convert_layers(model: PreTrainedModel, options) -> None:
    backbone = model.get_decoder()
    n_layers = len(backbone.layers)
    bad = [i for i in options.softmax_layers if not 0 <= i < n_layers]
    if bad:
        raise LigerError(f"softmax_layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    layer_cls = LigerAttention
    if options.method == "lolcats":
        from liger.lolcats import LolcatsAttention as layer_cls
    padding = PaddingContext()
    backbone.register_forward_pre_hook(padding.hook, with_kwargs=True)
    for i, layer in enumerate(backbone.layers):
        if isinstance(layer.self_attn, LigerAttention):
            raise LigerError("the model is already linearized")
        if i not in options.softmax_layers:
            layer.self_attn = layer_cls(layer.self_attn, options, padding)


def linearize(model: PreTrainedModel, method: str = "liger_gla", **options) -> PreTrainedModel:
    """Convert every attention layer of `model` (except `softmax_layers`) into a Liger layer, in place.

    `method` is one of liger_gla, liger_hgrn2, liger_gsa (`options`: the fields of `LigerOptions`; the parameter
    count does not change, asserted) or lolcats (`options`: the fields of `liger.lolcats.LolcatsOptions`; it adds
    the feature maps and window factors, and the count grows by exactly `liger.lolcats.added_parameters`).
    """
    model_type = check_supported(model.config)
    if model.config.model_type.startswith("liger_"):
        raise LigerError("the model is already linearized")
    opts = build_options(method, **options)
    expected = 0
    if opts.method == "lolcats":
        from liger.lolcats import added_parameters

        expected = added_parameters(model.config, opts)
    before = count_parameters(model)
    _convert_layers(model, opts)
    after = count_parameters(model)
    assert after - before == expected, f"conversion added {after - before} parameters, expected {expected}"
    model.config.__class__ = LIGER_CONFIGS[model_type]
    model.config.liger = opts.to_dict()
    return model


def options_of(model: PreTrainedModel):
    """The options (`LigerOptions` or `LolcatsOptions`) of a converted model, None for an unconverted one."""
    d = getattr(model.config, "liger", None)
    return options_from_dict(d) if d else None


def _register() -> None:
    """Register `liger_<type>` configs and models with the Auto classes (once, at import)."""
    for model_type, (config_cls, model_cls) in SUPPORTED.items():
        liger_type = f"liger_{model_type}"
        config_sub = type(f"Liger{config_cls.__name__}", (config_cls,), {"model_type": liger_type})

        def __init__(self, config, *args, base=model_cls, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            _convert_layers(self, options_from_dict(config.liger))

        model_sub = type(f"Liger{model_cls.__name__}", (model_cls,), {"config_class": config_sub, "__init__": __init__})
        AutoConfig.register(liger_type, config_sub, exist_ok=True)
        AutoModelForCausalLM.register(config_sub, model_sub, exist_ok=True)
        LIGER_CONFIGS[model_type] = config_sub


_register()


ADAPTER_OPTIONS = "liger_options.json"  # written beside a fine-tuned adapter: the conversion it was trained on


def load(path: str | Path, adapter: str | Path | None = None, merge: bool = True, **kwargs) -> PreTrainedModel:
    """Load a saved model (converted or not); optionally attach a peft LoRA adapter and merge it.

    An adapter trained on a converted model carries its conversion (``liger_options.json``): given the base
    model folder, the model is converted with those options before the adapter is attached.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise LigerError(f"{path}: no config.json; not a saved model folder (run the convert/finetune step first)")
    kwargs.setdefault("dtype", torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise LigerError(f"{path}: could not load the model ({e}); the folder may be corrupt: produce it again") from e
    if adapter is not None:
        from peft import PeftModel

        opts_file = Path(adapter) / ADAPTER_OPTIONS
        if opts_file.is_file():
            want = options_from_dict(json.loads(opts_file.read_text(encoding="utf-8")))
            have = options_of(model)
            if have is None:
                linearize(model, **want.to_dict())
            elif have != want:
                raise LigerError(f"{adapter} was trained on a model converted with {want.to_dict()}, but {path} "
                                 f"holds one converted with {have.to_dict()}")
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    return model
