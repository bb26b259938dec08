#!/usr/bin/env bash
# Creates .venv on first use and installs the package with its dev extras; fast when nothing changed.
# Where the system python already has a CUDA torch (a GPU machine), the venv reuses it; otherwise
# it gets the CPU wheel torch==2.13.0 (an unpinned torch would pull a ~3 GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp="$VENV/.zipformer_fast_installed"
want=$(cat setup.py | sha1sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
if [ ! -x "$VENV/bin/python" ]; then
  if python3 -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install -q torch==2.13.0
fi
$PIP install -q setuptools wheel
$PIP install -q --no-build-isolation -e ".[dev]"
echo "$want" > "$stamp"
