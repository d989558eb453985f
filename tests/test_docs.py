"""The documentation in docs/: files cite it rather than notes outside the repository or issue numbers, and every
section they cite exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A citation of the specification files that lived outside the repository, or of an issue by number.
OUTSIDE = re.compile(r"\b(?:LIGER|LOLCATS)\.md\b|\b[Ii]ssues? #?\d+|\(#\d+\)")
# Files that may keep such a citation: this test, and a report as `liger report` wrote it (its note is part of
# the published record).
EXEMPT = ("tests/test_docs.py", "results/published/smollm2-135m/report.md")
DOC_REF = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _tracked_texts() -> dict[str, str]:
    """Every tracked file that reads as UTF-8 text, by repository-relative path."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = {}
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)  # no headings inside code
    return {slug(m) for m in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE)}


def test_slug_follows_github():
    assert slug("Liger Attention: the window branch") == "liger-attention-the-window-branch"
    assert slug("qwen2.5-coder-1.5b: first rows (2026-12-01)") == "qwen25-coder-15b-first-rows-2026-12-01"
    assert slug("Stage 1: attention transfer") == "stage-1-attention-transfer"


def test_files_cite_docs_not_outside_notes_or_issues():
    cited = {name: sorted({m.group(0) for m in OUTSIDE.finditer(text)}) for name, text in _tracked_texts().items()}
    offenders = {name: found for name, found in cited.items() if found and name not in EXEMPT}
    assert not offenders, f"cite the sections of docs/ instead: {offenders}"


def test_cited_doc_sections_exist():
    texts = _tracked_texts()
    docs = {name.removeprefix("docs/"): anchors(text) for name, text in texts.items() if name.startswith("docs/")}
    refs = [(name, m.group(1), m.group(2)) for name, text in texts.items() for m in DOC_REF.finditer(text)]
    assert len(refs) > 20
    broken = [(name, page, anchor) for name, page, anchor in refs
              if page not in docs or (anchor and anchor not in docs[page])]  # fmt: skip
    assert not broken, f"citations of docs/ sections that do not exist: {broken}"


def test_markdown_links_resolve():
    """Relative links of the tracked Markdown files reach a tracked file and, for a page, one of its sections."""
    texts = _tracked_texts()
    broken = []
    for name, text in texts.items():
        if not name.endswith(".md"):
            continue
        for link in MD_LINK.findall(re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)):
            if re.match(r"[a-z]+:", link):
                continue  # a URL
            page, _, anchor = link.partition("#")
            target = (ROOT / name).parent / page if page else ROOT / name
            rel = target.resolve().relative_to(ROOT).as_posix() if target.resolve().is_relative_to(ROOT) else None
            if rel is None or not (ROOT / rel).exists():
                broken.append((name, link))
            elif anchor and rel.endswith(".md") and anchor not in anchors(texts.get(rel, "")):
                broken.append((name, link))
    assert not broken, f"links that lead nowhere: {broken}"
