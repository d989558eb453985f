"""`linearize` any Llama-family causal LM in place; save and load converted models.

A converted model's config is the original config under a `liger_<type>` model type with a `liger` entry
(the method and its options, `liger.methods`). Importing this module (as `liger.linearize` and `liger.load` do)
registers those types with transformers' Auto classes, so `AutoModelForCausalLM.from_pretrained(dir)` rebuilds
the original architecture, converts it again, and loads the weights: a Liger conversion with its default options
adds no parameters, so the state dicts have the same keys (a LoLCATs one adds its feature maps and window factors,
Liger's ablation options a gate projection or feature maps, which the saved weights then hold).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from liger import methods
from liger.errors import LigerError
from liger.layers.base import LinearizedAttention, PaddingContext
from liger.methods import build_options, options_from_dict


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


def is_linearized(model: PreTrainedModel) -> bool:
    """Whether any attention layer of `model` is a converted one (its config may say otherwise)."""
    return any(isinstance(layer.self_attn, LinearizedAttention) for layer in model.get_decoder().layers)


def _convert_layers(model: PreTrainedModel, options) -> None:
    backbone = model.get_decoder()
    n_layers = len(backbone.layers)
    bad = [i for i in options.softmax_layers if not 0 <= i < n_layers]
    if bad:
        raise LigerError(f"softmax_layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    if len(options.softmax_layers) == n_layers:
        raise LigerError(f"softmax_layers {options.softmax_layers} keep every layer as softmax attention: nothing "
                         "to convert (method base keeps the model as it is)")
    if is_linearized(model):
        raise LigerError("the model is already linearized")
    layer_cls = methods.get(options.method).layer_class()
    padding = PaddingContext()
    backbone.register_forward_pre_hook(padding.hook, with_kwargs=True)
    for i, layer in enumerate(backbone.layers):
        if i not in options.softmax_layers:
            layer.self_attn = layer_cls(layer.self_attn, options, padding)


def linearize(model: PreTrainedModel, method: str = "liger_gla", **options) -> PreTrainedModel:
    """Convert every attention layer of `model` (except `softmax_layers`) into the layer of `method`, in place.

    `method` is a registered method (`liger.methods.names()`: liger_gla, liger_hgrn2, liger_gsa, lolcats) and
    `options` the fields of its options (e.g. `liger.methods.liger.LigerOptions`). The parameter count grows by
    exactly the method's `added_parameters` (asserted): not at all for the Liger methods' defaults, by the feature
    maps and window factors for lolcats. The converted model gets its own copy of the config, which records the
    conversion; the caller's is unchanged.
    """
    model_type = check_supported(model.config)
    opts = build_options(method, **options)
    expected = methods.added_parameters(model.config, opts)
    before = count_parameters(model)
    _convert_layers(model, opts)
    after = count_parameters(model)
    assert after - before == expected, f"conversion added {after - before} parameters, expected {expected}"
    shared, config = model.config, copy.deepcopy(model.config)
    config.__class__ = LIGER_CONFIGS[model_type]
    config.liger = opts.to_dict()
    for module in model.modules():  # the model, its backbone and its layers hold the same config object
        if getattr(module, "config", None) is shared:
            module.config = config
    return model


def split_method(options: dict) -> tuple[str, dict]:
    """The method of a conversion's `--options` JSON and its other options; a one-line error without a method."""
    rest = dict(options)
    method = rest.pop("method", None)
    if not method:
        raise LigerError(f"--options {rest}: needs a Liger method (e.g. liger_gla)")
    return method, rest


def linearize_base(model: PreTrainedModel, method: str, options: dict, where: str | Path) -> PreTrainedModel:
    """`linearize` the model loaded from the folder `where`, refusing one that is already converted."""
    if options_of(model) is not None:
        raise LigerError(f"{where}: already converted; give the base model folder")
    return linearize(model, method, **options)


def options_of(model: PreTrainedModel):
    """The options (of its method, `liger.methods`) of a converted model, None for an unconverted one."""
    d = getattr(model.config, "liger", None)
    return options_from_dict(d) if d else None


def _register() -> None:
    """Register `liger_<type>` configs and models with the Auto classes (once, at import of this module)."""
    for model_type, (config_cls, model_cls) in SUPPORTED.items():
        liger_type = f"liger_{model_type}"
        config_sub = type(f"Liger{config_cls.__name__}", (config_cls,), {"model_type": liger_type})

        def __init__(self, config, *args, base=model_cls, **kwargs):
            if not getattr(config, "liger", None):
                raise LigerError(_unrecorded(config.name_or_path or "the config", config.model_type))
            base.__init__(self, config, *args, **kwargs)
            options = options_from_dict(config.liger)
            config.liger = options.to_dict()  # the current convention: a model saved again records it
            _convert_layers(self, options)

        model_sub = type(f"Liger{model_cls.__name__}", (model_cls,), {"config_class": config_sub, "__init__": __init__})
        AutoConfig.register(liger_type, config_sub, exist_ok=True)
        AutoModelForCausalLM.register(config_sub, model_sub, exist_ok=True)
        LIGER_CONFIGS[model_type] = config_sub


def _unrecorded(where: str | Path, model_type: str) -> str:
    return (f"{where}: model_type {model_type!r} marks a converted model, but the config has no 'liger' entry (the "
            "method and options of the conversion); restore the config.json it was saved with, or convert the "
            "base model again")


def saved_conversion(path: Path) -> dict | None:
    """The conversion a saved model folder's config.json records (its `liger` entry; None: not converted).

    A converted config records it twice, as a `liger_<type>` model type and the `liger` entry: a LigerError when
    config.json is missing, not JSON, or the two disagree (a hand-edited or damaged config).
    """
    file = path / "config.json"
    if not file.is_file():
        raise LigerError(f"{path}: no config.json; not a saved model folder (run the convert/finetune step first)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        model_type, saved = str(config.get("model_type", "")), config.get("liger")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise LigerError(f"{file}: not a JSON object ({e}); the folder may be corrupt: produce it again") from e
    if model_type.startswith("liger_") and not saved:
        raise LigerError(_unrecorded(file, model_type))
    if saved and not model_type.startswith("liger_"):
        raise LigerError(f"{file}: has a 'liger' entry (a converted model) but model_type {model_type!r}, which "
                         f"loads unconverted; set it to 'liger_{model_type}' or convert the base model again")
    return saved


_register()


ADAPTER_OPTIONS = "liger_options.json"  # written beside a fine-tuned adapter: the conversion it was trained on
# the parameters a conversion adds (LoLCATs' feature maps and window factors, Liger's ablation gate projection or
# feature maps)
ADDED_WEIGHTS = "added.safetensors"


def save_added(model: PreTrainedModel, folder: str | Path) -> Path:
    """Save the parameters the model's conversion added, with its options, into `folder` (a few MB): with the
    base model they rebuild the converted model (``load(base, added=folder)``), e.g. after attention transfer."""
    from safetensors.torch import save_file

    opts = options_of(model)
    if opts is None:
        raise LigerError("the model is not converted: it has no added parameters to save")
    config_cls, model_cls = SUPPORTED[model.config.model_type.removeprefix("liger_")]
    with torch.device("meta"):  # the unconverted model's parameter names, no memory
        base = set(model_cls(config_cls.from_dict({k: v for k, v in model.config.to_dict().items()
                                                   if k not in ("liger", "model_type")})).state_dict())
    added = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in base}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(added, str(folder / ADDED_WEIGHTS))
    (folder / ADAPTER_OPTIONS).write_text(json.dumps(opts.to_dict(), indent=1) + "\n", encoding="utf-8")
    return folder


def _read_options(folder: Path, what: str):
    opts_file = folder / ADAPTER_OPTIONS
    if not opts_file.is_file():
        return None
    try:
        return options_from_dict(json.loads(opts_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, LigerError) as e:
        raise LigerError(f"{opts_file}: not the options of a conversion ({e}); {what} may be corrupt") from e


def _convert_as(model: PreTrainedModel, want, path: Path, source: Path) -> None:
    """Convert `model` (loaded from `path`) with `want`, or check it already is."""
    have = options_of(model)
    if have is None:
        linearize(model, **want.to_dict())
    elif have != want:
        raise LigerError(f"{source} was trained on a model converted with {want.to_dict()}, but {path} "
                         f"holds one converted with {have.to_dict()}")


def layer_config(path: Path, layer_options: dict):
    """The config of the converted model in `path` with some of its method's runtime options replaced (validated:
    they change how attention is computed, not which parameters exist)."""
    saved = saved_conversion(path)
    if not saved:
        raise LigerError(f"{path}: not a converted model; layer options apply to converted models only")
    options = options_from_dict(saved)
    spec = methods.get(options.method)
    bad = spec.not_runtime(layer_options)
    if bad:
        raise LigerError(f"layer options {bad}: only {', '.join(spec.runtime_options) or 'none'} can be changed on a "
                         f"trained {options.method} model (the others change its parameters)")
    config = AutoConfig.from_pretrained(path)
    config.liger = build_options(**{**options.to_dict(), **layer_options}).to_dict()
    return config


def _load_added(model: PreTrainedModel, path: Path, folder: Path) -> None:
    """Convert the base model with `folder`'s options and load the parameters the conversion added."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    want = _read_options(folder, "the added-weights folder")
    if want is None or not (folder / ADDED_WEIGHTS).is_file():
        raise LigerError(f"{folder}: needs {ADDED_WEIGHTS} and {ADAPTER_OPTIONS} (written by save_added, e.g. "
                         "`liger transfer` OUT/added)")
    if options_of(model) is not None:
        raise LigerError(f"{path}: already converted; give the base model folder with added weights")
    before = set(model.state_dict())
    _convert_as(model, want, path, folder)
    expected = set(model.state_dict()) - before
    try:
        tensors = load_file(str(folder / ADDED_WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise LigerError(f"{folder / ADDED_WEIGHTS}: unreadable ({e}); copy or produce it again") from e
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise LigerError(f"{folder / ADDED_WEIGHTS} does not fit {path} converted with {want.to_dict()}: "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    state = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.shape != state[name].shape:
            raise LigerError(f"{folder / ADDED_WEIGHTS}: {name} has shape {tuple(tensor.shape)}, the model's is "
                             f"{tuple(state[name].shape)}")
    model.load_state_dict(tensors, strict=False)


def load(path: str | Path, adapter: str | Path | None = None, merge: bool = True, added: str | Path | None = None,
         layer_options: dict | None = None, **kwargs) -> PreTrainedModel:
    """Load a saved model (converted or not); optionally attach a peft LoRA adapter and merge it.

    An adapter trained on a converted model carries its conversion (``liger_options.json``): given the base
    model folder, the model is converted with those options before the adapter is attached. `added` (a folder of
    `save_added`) converts the base model and loads the parameters that conversion adds, before any adapter: a
    fine-tune whose conversion added parameters (Liger's `gate: projection`, `feature_map: learnable`) trained
    them beside its adapter and wrote them to its added/, which the adapter then needs.
    `layer_options` replaces some of its method's `runtime_options` (the same weights, computed otherwise).
    """
    from safetensors import SafetensorError

    from liger.models import weights_problem

    path = Path(path)
    saved_conversion(path)
    kwargs.setdefault("dtype", torch.float32)
    if layer_options:
        kwargs["config"] = layer_config(path, layer_options)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise LigerError(f"{path}: could not load the model ({weights_problem(path) or e}); the folder may be "
                         "corrupt: produce it again") from e
    if added is not None:
        _load_added(model, path, Path(added))
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise LigerError(f"{adapter}: no adapter_config.json; not a LoRA adapter folder (finetune OUT/adapter)")
        want = _read_options(Path(adapter), "the adapter")
        if want is not None:
            if options_of(model) is None and methods.added_parameters(model.config, want):
                raise LigerError(f"{adapter}: trained beside parameters its conversion added ({want.to_dict()}); "
                                 "give the run's added/ too (`liger merge --added RUN/added --adapter RUN/adapter`)")
            _convert_as(model, want, path, Path(adapter))
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    return model
