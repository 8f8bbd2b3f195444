#!/usr/bin/env bash
# Set up a virtual environment (pinned torch/torchvision) and run a job in it.
#   bash tools/run.sh test   - the whole default test suite (what CI runs)
#   bash tools/run.sh demo   - the end-to-end demo (prune a digits CNN to 50% FLOPs)
#   bash tools/run.sh lint   - ruff + mypy
#   bash tools/run.sh setup  - only create/refresh the environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MODEOPT_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.modeopt-setup"
  local want
  want=$(cat requirements-pinned.txt requirements-dev.txt pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # The constraints file pins torch/torchvision so pip never resolves a bare (multi-GB, different) torch.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c requirements-pinned.txt -r requirements-pinned.txt -r requirements-dev.txt \
    -e . -e plugins/autonas -e plugins/fastnas -e plugins/distill
  echo "$want" > "$stamp"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  test) setup; exec "$VENV/bin/python" -m pytest -q -m "not slow" "$@" ;;
  test-all) setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  demo) setup; exec "$VENV/bin/modeopt" demo "$@" ;;
  lint) setup; "$VENV/bin/ruff" check . && "$VENV/bin/python" -m mypy ;;
  *) echo "usage: bash tools/run.sh {setup|test|test-all|demo|lint}" >&2; exit 2 ;;
esac
