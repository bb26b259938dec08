"""Result files that keep one entry per label ("before" / "after"), so that runs of two code
versions land side by side in one JSON: used by bench/host_overhead.py and bench/launch_count.py."""
import datetime
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def provenance(argv) -> dict:
    """git commit, UTC timestamp and the command line of this run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    script = pathlib.Path(sys.argv[0]).name
    return {"git_commit": commit,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])}


def write_entry(path, label: str, method: str, entry: dict) -> None:
    """Store `entry` under `label` in the JSON file at `path` (other labels are kept)."""
    out = pathlib.Path(path)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc["method"] = method
    doc[label] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
