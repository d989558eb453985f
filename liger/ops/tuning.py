"""Triton configurations chosen ahead for fla's autotuned kernels: a new machine compiles one per kernel and key.

fla's kernels are Triton autotuners. At each new key (the kernel's key arguments and its tensors' dtypes) the first
call compiles and times every candidate configuration, then keeps the fastest in the autotuner's `cache`; Triton's
disk cache keeps the compiled kernels for later processes on the same machine, not for a new one. A table
(`record`) names the configuration each kernel chose at each key; `preload` puts those choices into the autotuners'
caches, where Triton looks before it times anything, so only the chosen configuration is compiled. Keys not in the
table are autotuned as before; a table recorded with another GPU model, Triton or fla is not used. (fla 0.6.0 reads
such tables itself, `FLA_CACHE_MODE` and `FLA_CONFIG_DIR`, but only for kernels declared with its own decorator,
not e.g. `chunk_h`'s or `fused_recurrent`'s, and writes none; filling Triton's cache covers every kernel.)

`LIGER_TRITON_CONFIGS=FILE` preloads FILE and, at the process's exit, merges the process's choices back into it
(so a run on one machine writes the table the next machine starts from); without it, the table shipped for this
GPU model (`triton_configs/`, none yet) is preloaded when there is one.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ENV = "LIGER_TRITON_CONFIGS"
SHIPPED = Path(__file__).with_name("triton_configs")


def autotuners(kind: type | None = None) -> Iterator[tuple[str, Any]]:
    """(name, autotuner) for every Triton autotuner in fla's loaded modules, each once, named by its kernel's
    module and function; the heuristics wrappers around one are looked through. `kind`: the autotuner class
    (Triton's by default)."""
    if kind is None:
        from triton.runtime.autotuner import Autotuner as kind
    seen = set()
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "fla" or module_name.startswith("fla.")):
            continue
        for obj in list(vars(module).values()):
            for _ in range(4):  # heuristics and other wrappers keep what they wrap in `fn`
                if isinstance(obj, kind) or isinstance(obj, type) or not hasattr(obj, "fn"):
                    break
                obj = obj.fn
            if isinstance(obj, kind) and id(obj) not in seen:
                seen.add(id(obj))
                yield f"{obj.base_fn.__module__}.{obj.base_fn.__qualname__}", obj


def environment() -> dict[str, str]:
    """What a table is only valid for: the GPU model and the Triton and fla versions."""
    import torch

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"gpu": torch.cuda.get_device_name(0), "triton": version("triton"),
            "fla": version("flash-linear-attention")}


def _entry(key: tuple, config: Any) -> dict[str, Any] | None:
    """One choice as JSON: the key and the config's constructor arguments; None when either is not plain data
    (a config's pre-hook is code)."""
    fields = dict(vars(config))
    if fields.pop("pre_hook", None) is not None:
        return None
    entry = {"key": list(key), "config": fields}
    try:
        json.dumps(entry)
    except (TypeError, ValueError):
        return None
    return entry


def choices(kind: type | None = None) -> dict[str, list[dict[str, Any]]]:
    """kernel name -> [{"key": [...], "config": {...}}, ...]: what each autotuner has chosen so far."""
    out = {}
    for name, tuner in autotuners(kind):
        entries = [entry for key, config in tuner.cache.items() if (entry := _entry(key, config)) is not None]
        if entries:
            out[name] = entries
    return out


def merged(table: dict[str, Any], new: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The table's kernels with `new`'s entries added; an entry already there keeps the table's configuration."""
    kernels = {name: list(entries) for name, entries in table.get("kernels", {}).items()}
    for name, entries in new.items():
        have = {json.dumps(e["key"]) for e in kernels.get(name, [])}
        kernels.setdefault(name, []).extend(e for e in entries if json.dumps(e["key"]) not in have)
    return {name: sorted(entries, key=lambda e: json.dumps(e["key"])) for name, entries in sorted(kernels.items())}


def read(path: Path) -> dict[str, Any]:
    """A table file, or an empty table when there is none or it cannot be read (it is a cache, never required)."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def record(path: Path, env: dict[str, str], kind: type | None = None) -> int:
    """Merge this process's choices into the table at `path` (a table of another environment is replaced);
    written whole through a temporary file, so a reader never sees half of it (two processes ending together may
    each miss the other's additions: it is a cache). Returns the number of entries."""
    path = Path(path)
    table = read(path)
    kernels = merged(table if table.get("environment") == env else {}, choices(kind))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"environment": env, "kernels": kernels}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return sum(len(entries) for entries in kernels.values())


def preload(table: dict[str, Any], env: dict[str, str], kind: type | None = None,
            config_class: type | None = None) -> int:
    """Put the table's choices into the autotuners' caches (a key already chosen in this process is kept);
    nothing when the table was recorded in another environment. Returns the number of entries put."""
    if table.get("environment") != env:
        return 0
    if config_class is None:
        from triton import Config as config_class
    count, kernels = 0, table.get("kernels", {})
    for name, tuner in autotuners(kind):
        for entry in kernels.get(name, []):
            key = tuple(entry["key"])
            if key not in tuner.cache:
                tuner.cache[key] = config_class(**entry["config"])
                count += 1
    return count


def shipped(env: dict[str, str]) -> Path:
    """Where the table shipped for this GPU model lives (it may not exist)."""
    return SHIPPED / f"{re.sub(r'[^0-9A-Za-z]+', '_', env['gpu']).strip('_')}.json"


def start(kind: type | None = None, config_class: type | None = None) -> int:
    """Called once fla's kernels are imported, on CUDA: preload `LIGER_TRITON_CONFIGS` (and record into it at
    exit) or the shipped table for this GPU model. Returns the number of entries preloaded."""
    env = environment()
    given = os.environ.get(ENV)
    path = Path(given) if given else shipped(env)
    if given:
        atexit.register(record, path, env)
    try:
        return preload(read(path), env, kind, config_class)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        warnings.warn(f"{path}: not a table of Triton configurations ({err}); fla's kernels autotune instead",
                      stacklevel=2)
        return 0
