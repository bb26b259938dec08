"""The documentation holds together: links resolve, generated pages are current, and the text
carries no tracker numbers, work-log markers or references to material outside the repository.

- Every relative link and image in the repository's Markdown files points at a file or folder that
  exists, and a `#fragment` at a heading of the target page (GitHub's heading anchors); every
  repository path the prose names in a code span exists (and a `file.py::test_name`, that test).
- docs/benchmarks.md equals what scripts/benchmarks_doc.py renders from bench/results/ now.
- Each row of the README's support matrix backs its "validated on CPU" and "measured on a GPU"
  cells with a link to a test or a recorded result that exists.
- Code, tests and docs (Python, Markdown, shell, C++/CUDA, Makefile, TOML, cfg) contain none of:
  tracker references (an issue number, a bare hash-number), citations of the design spec that is
  not part of the repository (its section numbers, its file names, the shared folder beside the
  checkout), and work-log markers (numbered sessions). Cite icefall's file and function instead.
  Recorded measurements (bench/results/) are data, not prose, and are not scanned.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "exp", "data", "__pycache__", "node_modules"}
SCANNED_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".cpp", ".cu", ".cuh", ".h", ".c"}
SCANNED_NAMES = {"Makefile", "run"}  # run: .ci/run

# Written so that this file does not match its own patterns.
FORBIDDEN = {
    "tracker reference": re.compile(r"\bissues?\s*(?:#\s*)?\d+|(?<![\w&#/])#\d+\b", re.IGNORECASE),
    "citation of the out-of-repo spec": re.compile(
        r"\bspec(?:ification)?\s*(?:sections?\b|§|\d)|zipformer[_]spec|kernel[_]notes|shared[/]docs|"
        r"\.\.[/]shared|shared[/]reference|/work[/]shared", re.IGNORECASE),
    "work-log marker": re.compile(r"\bsessions?\s+\d+", re.IGNORECASE),
}


def repo_files() -> List[Path]:
    """Tracked and untracked-but-not-ignored files (a plain walk outside a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if p.is_file()]
    return sorted(p for p in paths if p.is_file()
                  and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts[:-1]))


def markdown_files() -> List[Path]:
    return [p for p in repo_files() if p.suffix == ".md"]


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")


def links(path: Path) -> Iterator[Tuple[int, str]]:
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for m in LINK.finditer(line):
            yield n, m.group(1)
        m = REF_LINK.match(line)
        if m:
            yield n, m.group(1)


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    seen: Dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        k = seen.get(base, 0)
        out.add(base if k == 0 else f"{base}-{k}")
        seen[base] = k + 1
    return out


def test_github_anchor_follows_githubs_rules():
    assert github_anchor("Memory saved for backward (CPU, counted offline)") == \
        "memory-saved-for-backward-cpu-counted-offline"
    assert github_anchor("One-shot run: `bench/gpu_check.sh` on H100_80GB") == "one-shot-run-benchgpu_checksh-on-h100_80gb"
    assert github_anchor("Train -> export -> sherpa-onnx") == "train---export---sherpa-onnx"


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(md):
    broken = []
    for n, target in links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        where, _, fragment = target.partition("#")
        dest = (md.parent / where).resolve() if where else md
        if not dest.exists():
            broken.append(f"{md.relative_to(ROOT)}:{n}: {target} (no such file)")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{md.relative_to(ROOT)}:{n}: {target} (no heading #{fragment} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


REPO_PATH = re.compile(r"^((?:zipformer_fast|tests|bench|recipes|scripts|csrc|kernels|docs)/[\w./-]*)(?:::(\w+))?$")


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_in_prose_exists(md):
    """`tests/test_x.py::test_name`, `bench/results/cpu/x.json` and the like, written in code spans
    outside code blocks, name files (and test functions) the repository has. Spans holding a
    placeholder (<device>, *) are patterns, not paths."""
    missing = []
    for n, line in prose_lines(md.read_text(encoding="utf-8")):
        for span in re.findall(r"`([^`]+)`", line):
            m = REPO_PATH.match(span.strip())
            if not m:
                continue
            path = ROOT / m.group(1)
            if not path.exists():
                missing.append(f"{md.relative_to(ROOT)}:{n}: {span} (no such file)")
            elif m.group(2) and not re.search(rf"^\s*def {m.group(2)}\(", path.read_text(encoding="utf-8"), re.M):
                missing.append(f"{md.relative_to(ROOT)}:{n}: {span} (no such function)")
    assert not missing, "\n".join(missing)


def test_markdown_files_found():
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "docs/design.md", "docs/benchmarks.md", "docs/known_issues.md",
            "recipes/synthetic/README.md"} <= names


def test_benchmarks_page_is_up_to_date():
    spec = importlib.util.spec_from_file_location("benchmarks_doc", ROOT / "scripts" / "benchmarks_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert rendered == module.render(), "the rendering is not deterministic"
    current = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert current == rendered, ("docs/benchmarks.md differs from bench/results/: run "
                                 "python scripts/benchmarks_doc.py")


def test_readme_support_matrix_names_its_evidence():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| capability |"))
    header = [c.strip() for c in lines[head].strip("|").split("|")]
    evidence_cols = [i for i, c in enumerate(header) if c.startswith(("validated", "measured"))]
    assert len(evidence_cols) == 2, header
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert len(rows) >= 8
    missing = []
    for row in rows:
        for i in evidence_cols:
            cell = row[i]
            if not cell:
                continue
            targets = [t for t in LINK.findall(cell) if t.startswith(("tests/", "bench/results/"))]
            if not targets or not all((ROOT / t.partition("#")[0]).exists() for t in targets):
                missing.append(f"{row[0]} / {header[i]}: {cell}")
    assert not missing, "cells without an existing test or result file:\n" + "\n".join(missing)


def scanned_files() -> List[Path]:
    return [p for p in repo_files()
            if (p.suffix in SCANNED_SUFFIXES or p.name in SCANNED_NAMES)
            and not p.relative_to(ROOT).as_posix().startswith("bench/results/")]


def test_forbidden_patterns_match_what_they_should():
    # "~" breaks each example in this source (so this file passes its own scan); removed before use.
    hits = {
        "tracker reference": ["see issue #~4", "issue ~12", "Issue #~4's", "(#~3)", "**#~6: done"],
        "citation of the out-of-repo spec": ["spec sec~tion 9.3", "spec ~§10.1", "(spec ~9.4)",
                                             "zipformer~_spec.md", "kernel~_notes.md",
                                             "/wo~rk/sha~red/reference", "..~/sha~red/docs"],
        "work-log marker": ["after session ~2", "Session ~1 closing note"],
    }
    for kind, examples in hits.items():
        for example in examples:
            assert FORBIDDEN[kind].search(example.replace("~", "")), (kind, example)
    for harmless in ("#include <x>", "# 3 frames", "sm_80", "color #fff", "tests/test_x.py::test_1",
                     "InferenceSession", "specification of decoding", "a[#] b", "x = 1  # noqa: E402"):
        assert not any(p.search(harmless) for p in FORBIDDEN.values()), harmless


def test_no_tracker_numbers_spec_citations_or_work_log_markers():
    offenders = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for kind, pattern in FORBIDDEN.items():
                m = pattern.search(line)
                if m:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {kind}: {m.group(0)!r}")
    assert not offenders, f"{len(offenders)} lines:\n" + "\n".join(offenders)
