"""Small file helpers shared by the pipeline stages: checksums and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ordinary_mode(path: Path, directory: bool) -> None:
    """Give a mkdtemp/mkstemp result (0700/0600) the permissions the umask gives new files and folders."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed over `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        ordinary_mode(Path(tmp), directory=False)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary sibling, then rename it over `path`."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` as indented JSON to a temporary sibling, then rename it over `path`."""
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
