#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install, start what the tests
# need, lint, type-check, test. The README's test command; .ci/run calls it.
#
#   bash tools/test.sh            # everything
#   bash tools/test.sh -k local   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

stage_start=$SECONDS
stage() {  # print how long the previous stage took, then announce the next
    local now=$SECONDS
    [ -n "${stage_name:-}" ] && printf '== %s: %ds\n' "$stage_name" $((now - stage_start))
    stage_name=$1
    stage_start=$now
    printf '== %s\n' "$stage_name"
}

stage "python environment"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

stage "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

stage "mypy"
.venv/bin/mypy

stage "pytest"
status=0
.venv/bin/pytest "$@" || status=$?
stage "done"
exit $status
