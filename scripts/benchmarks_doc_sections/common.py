"""What every section of docs/benchmarks.md uses: where the results live, number formatting,
Markdown tables, the Doc being built (which also tracks the files a section claimed) and loading
the recorded JSON/CSV files."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
LINK_PREFIX = "../bench/results/"  # from docs/ to bench/results/


def num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def fmt(v, digits: int = 3) -> str:
    """A number with about `digits` significant digits and no exponent unless it is tiny."""
    f = num(v)
    if f is None:
        return "-" if v is None or v == "" else str(v)
    if isinstance(v, bool):
        return str(v)
    if f == int(f) and abs(f) < 1e6:
        return str(int(f))
    if f != 0 and abs(f) < 1e-3:
        return f"{f:.2g}"
    for limit, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if abs(f) >= limit:
            return format(f, spec)
    return format(f, f".{digits}f")


def wer(v) -> str:
    """A WER in percent as recorded (two decimals)."""
    f = num(v)
    return "-" if f is None else f"{f:.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Sequence[bool] = ()) -> str:
    align = ["---:" if (i < len(right) and right[i]) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command(text: str) -> str:
    """A recorded command, relative to the repository root."""
    return re.sub(r"/work/[\w.-]+/", "", str(text)).strip()


def quote(text: str) -> str:
    return "> " + " ".join(str(text).split()) + "\n"


class Doc:
    def __init__(self):
        self.parts: List[str] = []
        self.claimed: set = set()

    def add(self, text: str = "") -> None:
        self.parts.append(text if text.endswith("\n") else text + "\n")

    def claim(self, path: Path) -> Path:
        self.claimed.add(path)
        return path

    def link(self, path: Path) -> str:
        rel = path.relative_to(RESULTS).as_posix()
        return f"[`{rel}`]({LINK_PREFIX}{rel})"

    def files(self, paths: Iterable[Path]) -> None:
        paths = [self.claim(p) for p in paths]
        if paths:
            self.add("Files: " + ", ".join(self.link(p) for p in paths) + ".\n")

    def commands(self, cmds: Iterable[str]) -> None:
        cmds = sorted({command(c) for c in cmds if c})
        if cmds:
            self.add("Command" + ("s" if len(cmds) > 1 else "") + ":\n\n```\n" + "\n".join(cmds) + "\n```\n")

    def caveats(self, record: dict, keys: Sequence[str] = ("note", "caveat", "method")) -> None:
        for key in keys:
            if isinstance(record, dict) and record.get(key):
                self.add(f"Recorded {key}:\n\n" + quote(record[key]))


def load_json(path: Path):
    return json.loads(path.read_text())


def load_csv(path: Path) -> List[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def recorded(rel: str) -> Tuple[Path, Optional[dict]]:
    """bench/results/<rel> and its parsed JSON, or None where it was not recorded."""
    path = RESULTS / rel
    return path, (load_json(path) if path.exists() else None)


def device_dirs() -> List[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir())


def twins(path: Path) -> List[Path]:
    """A JSON file and its CSV twin (same stem), those that exist."""
    return [p for p in (path.with_suffix(".json"), path.with_suffix(".csv")) if p.exists()]
