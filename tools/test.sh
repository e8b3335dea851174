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

# The image suite needs only Docker and qemu, and is mostly CPU: it runs in the
# background from here on, beside the local Kubernetes' build and the tests
# that need little CPU; the e2e tests (mostly waiting on Kubernetes) follow it,
# several at a time.
mkdir -p out
stage "services: the Docker engine, qemu-user"
# Before the local Kubernetes: both install Debian packages, one at a time.
bash tools/ci/docker-up.sh

stage "image tests (background, log: out/pytest-image.log)"
(
    rc=0
    .venv/bin/pytest tests/image --durations=15 -p no:cacheprovider "$@" || rc=$?
    [ "$rc" = 5 ] && rc=0
    exit $rc
) >out/pytest-image.log 2>&1 &
image_pid=$!

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

status=0
# pytest, where "no test selected" (5, e.g. with -k) is not a failure
run_pytest() {
    local rc=0
    .venv/bin/pytest "$@" || rc=$?
    [ "$rc" = 5 ] && rc=0
    [ "$rc" = 0 ] || status=$rc
}

stage "pytest: unit"
run_pytest tests/unit -n 2 -q "$@"

stage "pytest: integration and the local Kubernetes itself"
LOCALKUBE_NO_UP=1 run_pytest tests/integration tests/localkube --durations=15 \
    -m "not localkube_down and not localkube_leaks" "$@"

stage "waiting for the image tests"
wait "$image_pid" || status=$?
cat out/pytest-image.log

# Each e2e test has a namespace and a cluster of its own; those that change the
# node that all share (a taint) run alone afterwards.
stage "pytest: e2e, ${E2E_WORKERS:=4} at a time"
LOCALKUBE_NO_UP=1 run_pytest tests/e2e -n "$E2E_WORKERS" --durations=20 -m "not exclusive" "$@"

stage "pytest: e2e that change the shared node, alone"
LOCALKUBE_NO_UP=1 run_pytest tests/e2e --durations=5 -m exclusive "$@"

stage "localkube: nothing for the cluster's CIDRs left the machine during the run"
LOCALKUBE_NO_UP=1 LOCALKUBE_RUN_LEAK_CHECK=1 .venv/bin/pytest -q -s tests/localkube -m localkube_leaks || status=$?

stage "localkube down leaves the machine as it was"
if [ "${SKIP_DOWN_CHECK:-0}" != 1 ]; then
    LOCALKUBE_RUN_DOWN_TEST=1 .venv/bin/pytest -q tests/localkube -m localkube_down || status=$?
fi
stage "done"
exit $status
