"""`liger publish`: a run's rows copied under `results/published/`, every machine path in them replaced.

A row is a run's folder `results/RUN/MODEL/ROW`; it is published as `results/published/MODEL/ROW` (`--to`), where the
tables, reports and README read it. Text files (JSON, CSV, Markdown, logs) are copied with each absolute path
replaced: one inside the project by its path relative to the project, a benchmark mirror folder (a `data_dir`
value) by `<offline mirror>`, any other by `<machine path>`, so that nothing committed names the machine that ran
it. Other files are copied as they are; marker and temporary files are skipped. A published file is never
replaced by different content without `--replace`, and nothing is written unless every file can be. Say where the
rows came from in `results/README.md` (docs/pipeline.md#published-results).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from liger.errors import LigerError
from liger.fileio import OUTPUT_MARKER, atomic_target

PUBLISHED = Path("results/published")
MIRROR = "<offline mirror>"
MACHINE = "<machine path>"
SITE = "/site-packages/"
SYSTEM = ("/usr/bin/", "/bin/")  # the system's programs (a log's "Using shell: /usr/bin/bash"): no machine's own
TEXT_SUFFIXES = {".json", ".csv", ".tsv", ".md", ".log", ".txt", ".yaml"}
# An absolute POSIX path of two or more components inside a longer text (a lone "/x" is too often not a path; one
# after a word, "~", ":" or a placeholder's ">" is a relative path, a URL or a ratio); JSON values that are a path
# as a whole are recognised whatever their length.
_EMBEDDED = re.compile(r"(?<![\w.~:/>-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def replacement(path: str, root: Path, key: str | None = None) -> str:
    """What an absolute `path` becomes: relative to the project `root`, `MIRROR` for a `data_dir`, a package's file
    below `<site-packages>` (tracebacks), else `MACHINE`."""
    p = Path(path)
    if p == root or root in p.parents:
        return p.relative_to(root).as_posix()
    if key == "data_dir":
        return MIRROR
    return f"<site-packages>/{path.split(SITE, 1)[1]}" if SITE in path else MACHINE


def machine_paths(text: str) -> list[str]:
    """The absolute paths embedded in `text` that publishing replaces (all but the system's programs)."""
    return [m for m in _EMBEDDED.findall(text) if not m.startswith(SYSTEM)]


def scrub_text(text: str, root: Path) -> tuple[str, int]:
    """`text` with every embedded absolute path but the system's programs replaced, and how many were."""
    n = 0

    def swap(m: re.Match) -> str:
        nonlocal n
        if m.group(0).startswith(SYSTEM):
            return m.group(0)
        n += 1
        return replacement(m.group(0).rstrip("/"), root)

    return _EMBEDDED.sub(swap, text), n


def json_paths(doc: Any, root: Path, key: str | None = None, found: dict[str, str] | None = None) -> dict[str, str]:
    """{string value: what it becomes} for each string value of `doc` that holds an absolute path: one that is a
    path as a whole (`replacement`, by its key) or holds some (`scrub_text`)."""
    found = {} if found is None else found
    if isinstance(doc, dict):
        for k, v in doc.items():
            json_paths(v, root, k, found)
    elif isinstance(doc, list):
        for v in doc:
            json_paths(v, root, key, found)
    elif isinstance(doc, str):
        if doc.startswith("/") and not any(c.isspace() for c in doc):
            new = replacement(doc, root, key)
            found[doc] = MIRROR if MIRROR in (new, found.get(doc)) else new  # a mirror folder is one wherever named
        elif (new := scrub_text(doc, root)[0]) != doc:
            found[doc] = new
    return found


def _substitute(doc: Any, found: dict[str, str]) -> Any:
    """`doc` with the string values of `found` replaced."""
    if isinstance(doc, dict):
        return {k: _substitute(v, found) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_substitute(v, found) for v in doc]
    return found.get(doc, doc) if isinstance(doc, str) else doc


def published_bytes(path: Path, root: Path) -> tuple[bytes, int]:
    """The content `path` is published with, and how many paths were replaced in it. JSON keeps its layout: each
    string value that holds a path is replaced where it stands."""
    raw = path.read_bytes()
    if path.suffix not in TEXT_SUFFIXES:
        return raw, 0
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw, 0
    if path.suffix != ".json":
        out, n = scrub_text(text, root)
        return out.encode("utf-8"), n
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise LigerError(f"{path}: not readable JSON ({e}); fix or remove it before publishing") from e
    found = json_paths(doc, root)
    for old, new in found.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    expected = _substitute(doc, found)
    if json.loads(text) != expected:  # a value escaped otherwise than json.dumps writes it: liger's own layout
        text = json.dumps(expected, indent=2) + "\n"
    return text.encode("utf-8"), len(found)


def thin_redraws(text: str, keep: int = 40) -> str:
    """`text` with each line a progress bar redraws (`\\r`) cut to its first, its last and about `keep` evenly spaced
    redraws, each on a line of its own; lines without a redraw stay as they are."""
    lines = []
    for line in text.split("\n"):
        draws = [d for d in line.split("\r") if d.strip()] if "\r" in line else [line]
        if len(draws) > keep + 2:
            draws = [draws[i] for i in sorted({round(j * (len(draws) - 1) / keep) for j in range(keep + 1)})]
        lines.extend(draws)
    return "\n".join(lines)


def log_plan(sources: list[Path], to: Path, root: Path, keep: int) -> list[tuple[Path, Path, bytes, int]]:
    """(source, destination, content, paths replaced) for each log: a file keeps its name, a folder's `*.log` and
    `*.tsv` files are named by their path below it joined with `_`; one-line errors for what is neither."""
    jobs, seen = [], {}
    for source in sources:
        if source.is_file():
            files = {source: source.name}
        elif source.is_dir():
            files = {f: "_".join(f.relative_to(source).parts) for f in sorted(source.rglob("*"))
                     if f.is_file() and f.suffix in (".log", ".tsv") and not f.name.startswith(".")}
            if not files:
                raise LigerError(f"{source}: holds no .log or .tsv files; give a run's logs folder (logs/RUN)")
        else:
            raise LigerError(f"{source}: no such file or folder; give a run's logs folder (logs/RUN) or log files")
        for f, name in files.items():
            if (other := seen.setdefault(name, f)) != f:
                raise LigerError(f"{f} and {other}: both publish as {to / name}; publish one of them")
            content, n = published_bytes(f, root)
            if f.suffix == ".log":
                content = thin_redraws(content.decode("utf-8", errors="replace"), keep).encode("utf-8")
            jobs.append((f, to / name, content, n))
    return jobs


def _files(row: Path) -> list[Path]:
    """The row's files to publish: every regular file below it but markers and hidden (temporary) ones."""
    return sorted(p for p in row.rglob("*") if p.is_file() and p.name != OUTPUT_MARKER
                  and not any(part.startswith(".") for part in p.relative_to(row).parts))


def plan(rows: list[Path], to: Path, root: Path) -> list[tuple[Path, Path, bytes, int]]:
    """(source, destination, content, paths replaced) for every file of `rows`; one-line errors for a row that is
    not a folder of files or lies under `to`."""
    jobs, seen, top = [], {}, to.resolve()
    for row in rows:
        if not row.is_dir():
            raise LigerError(f"{row}: not a folder; give a run's row folder (results/RUN/MODEL/ROW)")
        where = row.resolve()
        if where == top or top in where.parents:
            raise LigerError(f"{row}: already under {to}; give a run's row folder (results/RUN/MODEL/ROW)")
        files = _files(row)
        if not files:
            raise LigerError(f"{row}: holds no files to publish")
        model, name = where.parent.name, where.name
        if (other := seen.setdefault((model, name), row)) != row:
            raise LigerError(f"{row} and {other}: both publish as {to / model / name}; publish one of them")
        for f in files:
            jobs.append((f, to / model / name / f.relative_to(row), *published_bytes(f, root)))
    return jobs


def publish(rows: list[Path], to: Path = PUBLISHED, *, replace: bool = False, root: Path | None = None) -> list[str]:
    """Publish `rows` under `to` (module docstring); returns one line per file saying what happened to it."""
    return write(plan(rows, to, (root or Path.cwd()).resolve()), replace)


def publish_logs(sources: list[Path], to: Path, *, keep: int = 40, replace: bool = False,
                 root: Path | None = None) -> list[str]:
    """Publish the logs `sources` (files or a run's logs folders) flat in `to` (module docstring)."""
    return write(log_plan(sources, to, (root or Path.cwd()).resolve(), keep), replace)


def write(jobs: list[tuple[Path, Path, bytes, int]], replace: bool) -> list[str]:
    """Write planned files, all or none: a file that would change needs `replace`; one line per file."""
    current = {dst: dst.read_bytes() for _, dst, _, _ in jobs if dst.is_file()}
    clashes = [dst for _, dst, content, _ in jobs if current.get(dst, content) != content]
    if clashes and not replace:
        shown = ", ".join(map(str, clashes[:3])) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise LigerError(f"{shown}: already published with other content; nothing was copied: give --replace to "
                         "overwrite them")
    lines = []
    for src, dst, content, n in jobs:
        if current.get(dst) == content:
            lines.append(f"{dst}: unchanged")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(dst) as tmp:
            tmp.write_bytes(content)
        lines.append(f"{src} -> {dst}" + (f" ({n} machine path{'s' * (n != 1)} replaced)" if n else ""))
    return lines


def _cli(args: argparse.Namespace) -> None:
    if args.logs:
        if args.keep < 1:
            raise LigerError(f"liger publish --keep {args.keep}: give 1 or more redraws to keep of each progress bar")
        if args.to == PUBLISHED:
            raise LigerError("liger publish --logs: give --to, the session's folder (results/published/gpu-runs/NAME)")
        lines = publish_logs(args.rows, args.to, keep=args.keep, replace=args.replace, root=args.root)
    else:
        lines = publish(args.rows, args.to, replace=args.replace, root=args.root)
    print("\n".join(lines))
    print("Now say where these came from (session, machine, commit) in results/README.md.")


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="copy a run's rows under results/published/, machine paths replaced",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", type=Path, help="row folders, results/RUN/MODEL/ROW (with --logs: a run's logs "
                   "folder logs/RUN, or log files)")
    p.add_argument("--to", type=Path, default=PUBLISHED, help=f"the published folder (default {PUBLISHED})")
    p.add_argument("--replace", action="store_true", help="overwrite published files that differ")
    p.add_argument("--logs", action="store_true", help="publish job logs flat in --to, progress bars thinned")
    p.add_argument("--keep", type=int, default=40, help="with --logs: redraws kept of each progress bar (default 40)")
    p.add_argument("--root", type=Path, default=None,
                   help="the project folder the files were written in (default: this one)")
    p.set_defaults(func=_cli)
