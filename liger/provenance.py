"""What produced a result: package versions recorded beside every metrics and training summary."""

from __future__ import annotations

import importlib.metadata
import platform


def versions(*packages: str) -> dict[str, str]:
    """Python's version and each package's installed version ("not installed" when run from a source tree)."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed (source tree)"
    return out
