"""The registry of conversion methods: the one place that knows which methods exist.

Each method is a torch-free description (`Method`) in its own module, listed here as a lazy "module:object"
entry and imported when first asked for; its layer is named the same way and imported only when a model is
converted. So the pipeline and `liger plan` can ask, without torch, e.g.::

    from liger import methods
    methods.names()                                       # ['liger_gla', 'liger_hgrn2', 'liger_gsa', 'lolcats']
    methods.get("lolcats").stages                         # ('transfer', 'lora')
    methods.stage_recipe("lolcats", "transfer", {"variant": "liger"})   # {'lr': 0.01, ...}

Adding a method is one module declaring its `Method` (plus its layer, if it needs a new one) and one entry in
`_ENTRIES`; `register` adds one at run time (e.g. a test's own method).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from liger.errors import LigerError
from liger.methods.spec import OPTIONS_VERSION, RECIPE_FIELDS, VERSION_KEY, Method, MethodOptions, load_object

__all__ = ["OPTIONS_VERSION", "RECIPE_FIELDS", "Method", "MethodOptions", "added_parameters", "build_options", "get",
           "names", "options_from_dict", "register", "stage_recipe", "stages", "unregister"]

_ENTRIES: dict[str, str | Method] = {
    "liger_gla": "liger.methods.liger:GLA",
    "liger_hgrn2": "liger.methods.liger:HGRN2",
    "liger_gsa": "liger.methods.liger:GSA",
    "lolcats": "liger.methods.lolcats:LOLCATS",
}
_BUILTIN = tuple(_ENTRIES)


def names(family: str | None = None) -> list[str]:
    """The registered methods, in registration order (only those of `family` when given)."""
    if family is None:
        return list(_ENTRIES)
    return [name for name in _ENTRIES if get(name).family == family]


def get(name: str) -> Method:
    """The description of method `name` (its module is imported on first use)."""
    entry = _ENTRIES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise LigerError(f"unknown Liger method {name!r}; choose one of {', '.join(_ENTRIES)}")
    if isinstance(entry, str):
        method = load_object(entry)
        if not isinstance(method, Method) or method.name != name:
            raise LigerError(f"{entry} is not the description of method {name}")
        _ENTRIES[name] = entry = method
    return entry


def register(method: Method, *, replace: bool = False) -> Method:
    """Add `method` to the registry (`replace`: also over a method of that name)."""
    if method.name in _ENTRIES and not replace:
        raise LigerError(f"method {method.name} is already registered")
    if not issubclass(method.options, MethodOptions):
        raise LigerError(f"method {method.name}: its options must subclass liger.methods.MethodOptions")
    _ENTRIES[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method registered with `register` (a built-in's entry stays)."""
    if isinstance(_ENTRIES.get(name), Method) and name not in _BUILTIN:
        del _ENTRIES[name]


def stages(name: str) -> tuple[str, ...]:
    """The training stages of method `name`, in order."""
    return get(name).stages


def stage_recipe(name: str, stage: str, options: Mapping[str, Any] | MethodOptions | None = None) -> dict[str, Any]:
    """The TrainConfig fields (RECIPE_FIELDS) that `stage` of method `name` sets for `options` (e.g. a LoLCATs
    variant): its options object, or a dict of option settings ("method" allowed, pipeline keys not)."""
    if not isinstance(options, MethodOptions):
        settings = {k: v for k, v in (options or {}).items() if k != "method"}
        options = build_options(name, **settings)
    return get(name).recipe(stage, options)


def build_options(method: str | None = None, **options: Any) -> MethodOptions:
    """The options of one conversion, from settings of the current convention (or of the one their
    "options_version" names)."""
    if method is None:
        raise LigerError(f"options {options} name no method: add \"method\" (one of {', '.join(_ENTRIES)})")
    version = options.pop(VERSION_KEY, OPTIONS_VERSION)
    cls = get(method).options
    if not isinstance(version, int) or not 1 <= version <= OPTIONS_VERSION:
        raise LigerError(f"{VERSION_KEY}={version!r}: this liger reads versions 1 to {OPTIONS_VERSION}")
    if version < OPTIONS_VERSION:
        options = cls.upgrade(options, version)
    return cls.build(method, **options)


def options_from_dict(d: Mapping[str, Any]) -> MethodOptions:
    """The options a saved entry records (a converted model's `liger` config entry, an adapter's
    liger_options.json); an entry without "options_version" was written under version 1."""
    d = dict(d)
    method = d.pop("method", None)
    if method is not None:
        d.setdefault(VERSION_KEY, 1)
    return build_options(method, **d)


def added_parameters(config: Any, options: MethodOptions) -> int:
    """The parameters that converting a model of `config` with `options` adds."""
    return get(options.method).added_parameters(config, options)
