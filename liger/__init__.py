"""Liger: linearize Llama-family language models into gated recurrent models (Lan et al., ICML 2025)."""

from liger.cache import LigerCache
from liger.convert import SUPPORTED, count_parameters, linearize, load, options_of
from liger.errors import LigerError
from liger.options import METHODS, LigerOptions

__all__ = [
    "LigerCache",
    "LigerError",
    "LigerOptions",
    "METHODS",
    "SUPPORTED",
    "count_parameters",
    "linearize",
    "load",
    "options_of",
]
