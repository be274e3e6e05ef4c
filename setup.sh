#!/usr/bin/env bash
# Create .venv and install the harness with its pinned dependencies (pyproject.toml), once.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version}"'
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  echo "setup: installing pinned dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q -e '.[test]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Gymnasium 1.x no longer loads its plugin entry points (group gymnasium.envs) itself; this .pth line makes
# `import gymnasium` do it, so gymnasium.make("gsa/<task>-v0") works in any script (tasks/gym_plugins.py).
.venv/bin/python -c 'import pathlib, site, tasks.gym_plugins as g; pathlib.Path(site.getsitepackages()[0], g.PTH_FILE).write_text(g.PTH_LINE)'
