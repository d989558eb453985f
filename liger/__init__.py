"""Liger: linearize Llama-family language models into gated recurrent models (Lan et al., ICML 2025).

`import liger` is light (no torch): each name below imports its module when first used. Importing
`liger.convert` (which `liger.linearize` and `liger.load` do) registers the converted model types with
transformers' Auto classes; the methods and their options are in the torch-free registry `liger.methods`.
"""

from __future__ import annotations

import importlib
from typing import Any

from liger.errors import LigerError

_LAZY = {
    "LigerCache": "liger.decode",
    "LigerOptions": "liger.methods.liger",
    "SUPPORTED": "liger.convert",
    "count_parameters": "liger.convert",
    "linearize": "liger.convert",
    "load": "liger.convert",
    "options_of": "liger.convert",
}

__all__ = ["LigerCache", "LigerError", "LigerOptions", "METHODS", "SUPPORTED", "count_parameters", "linearize",
           "load", "options_of"]


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # every registered method (liger.methods.names())
        return tuple(importlib.import_module("liger.methods").names())
    if name not in _LAZY:
        raise AttributeError(f"module 'liger' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
