#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install, start what the tests
# need, lint, type-check, test. The README's test command; .ci/run calls it.
#
#   bash tools/test.sh            # everything
#   bash tools/test.sh -k local   # extra arguments go to pytest
#   SKIP_DOWN_CHECK=1 bash tools/test.sh   # keep the local Kubernetes up afterwards
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

stage "services: the local Kubernetes (builds on first use, then cached)"
# The e2e tests need it; it needs root. Left running for the next run unless
# the down check below (or .ci/run) takes it down.
# The audit log is on (benchmarks count API requests with it; tests/localkube/test_audit.py).
export LOCALKUBE_AUDIT=1
python3 tools/localkube/localkube.py up

stage "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

stage "mypy"
.venv/bin/mypy

stage "pytest"
status=0
LOCALKUBE_NO_UP=1 .venv/bin/pytest -m "not localkube_down and not localkube_leaks" "$@" || status=$?

stage "localkube: nothing for the cluster's CIDRs left the machine during the run"
LOCALKUBE_NO_UP=1 LOCALKUBE_RUN_LEAK_CHECK=1 .venv/bin/pytest -q -s tests/localkube -m localkube_leaks || status=$?

stage "localkube down leaves the machine as it was"
if [ "${SKIP_DOWN_CHECK:-0}" != 1 ]; then
    LOCALKUBE_RUN_DOWN_TEST=1 .venv/bin/pytest -q tests/localkube -m localkube_down || status=$?
fi
stage "done"
exit $status
