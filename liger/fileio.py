"""Small file helpers shared by the pipeline stages: checksums, atomic writes and output folders.

The rule for output folders: a command writes only into a folder that does not exist yet, is empty, or is its own
earlier output, which it recognizes by the marker file (`OUTPUT_MARKER`) naming the command that `atomic_dir`
and `claim_dir` leave in it. Anything else is refused, never deleted, and so is an output folder that is or holds
one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from liger.errors import LigerError

OUTPUT_MARKER = ".liger-output.json"  # {"command": the `liger` command that wrote the folder}
_TEMP_TAGS = (".tmp-", ".old-")  # in the names of the temporary siblings that atomic writes make


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path`; an existing folder at `path` is moved aside first and removed after."""
    old = None
    if path.is_dir() and not path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        old.rmdir()
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary sibling file of `path` to write to; renamed over `path` when the block ends without error."""
    path = Path(path)
    if path.is_dir():
        raise LigerError(f"{path}: is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        ordinary_mode(Path(tmp), directory=False)
        yield Path(tmp)
        _swap(Path(tmp), path)
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


def read_json(path: Path, rule: str) -> Any:
    """A JSON file a pipeline rule wrote; missing or broken, a one-line error naming `rule`, the rule that writes it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LigerError(f"{path}: missing; run the {rule} rule for it first") from e
    except (OSError, ValueError) as e:
        raise LigerError(f"{path}: not readable JSON ({e}); delete it and rerun the {rule} rule") from e


def output_owner(folder: Path) -> str | None:
    """The command that `folder`'s marker names; None without a readable marker."""
    try:
        doc = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("command") if isinstance(doc, dict) else None


def check_not_input(out: Path, inputs: Mapping[str, Any] | None) -> None:
    """Refuse an `out` (file or folder) that is or holds one of `inputs` ({flag: path or None}; paths that do not
    exist, such as hub ids, are skipped)."""
    where = Path(out).expanduser().resolve()
    for flag, value in (inputs or {}).items():
        if value is None or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser().resolve()
        if source == where or where in source.parents:
            how = "is" if source == where else "holds"
            raise LigerError(f"--out {out} {how} the input {flag} {value}: writing there would delete it; give "
                             "another --out")


def check_output(out: Path, command: str, *, accept: Collection[str] = (),
                 inputs: Mapping[str, Any] | None = None, adopt: Callable[[Path], bool] | None = None) -> None:
    """Refuse `out` as the output folder of `liger command` unless it is absent, empty, marked as written by
    `command` (or one of `accept`), or unmarked and recognized by `adopt` as the command's own; and when it is or
    holds one of `inputs` (`check_not_input`). Nothing is removed here."""
    out = Path(out).expanduser()
    check_not_input(out, inputs)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise LigerError(f"--out {out}: is a file, not a folder; give a new or empty folder")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    owner = output_owner(out)
    if not entries or owner in (command, *accept) or (owner is None and adopt is not None and adopt(out)):
        return
    if owner is None:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        what = f"is not an output of `liger {command}` (it has no {OUTPUT_MARKER} naming it; it holds {shown})"
    else:
        what = f"was written by `liger {owner}`, not `liger {command}`"
    raise LigerError(f"--out {out}: {what}; nothing was deleted: give a new or empty --out folder, or move this one "
                     "away")


def _mark(folder: Path, command: str) -> None:
    (folder / OUTPUT_MARKER).write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")


def claim_dir(out: Path, command: str, *, accept: Collection[str] = (),
              inputs: Mapping[str, Any] | None = None, adopt: Callable[[Path], bool] | None = None) -> Path:
    """`check_output`, then create `out` and mark it as `command`'s: for an output folder written in place (a
    training run, which resumes from its own checkpoints). Returns `out`."""
    out = Path(out).expanduser()
    check_output(out, command, accept=accept, inputs=inputs, adopt=adopt)
    out.mkdir(parents=True, exist_ok=True)
    if output_owner(out) != command:
        _mark(out, command)
    return out


@contextlib.contextmanager
def atomic_dir(final: Path, command: str | None = None, *, accept: Collection[str] = (),
               inputs: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """A temporary sibling folder to write to; when the block ends without error it replaces `final`.

    With `command`, `final` is that command's output folder: `check_output` first, and the new folder is marked.
    Without, `final` is a part (e.g. ``model/``) of an output folder the caller has claimed.
    """
    final = Path(final).expanduser()
    if command is not None:
        check_output(final, command, accept=accept, inputs=inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        ordinary_mode(tmp, directory=True)
        yield tmp
        if command is not None:
            _mark(tmp, command)
        _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temps(folder: Path) -> None:
    """Remove the temporary siblings that interrupted atomic writes left in `folder` (a folder the caller owns)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and any(tag in p.name for tag in _TEMP_TAGS):
                _remove(p)
