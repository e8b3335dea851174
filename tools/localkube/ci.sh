#!/usr/bin/env bash
# What .ci/run calls for the end-to-end tests on localkube (see README.md, "CI").
#
#   tools/localkube/ci.sh up            build (first time on the machine) and start the cluster
#   tools/localkube/ci.sh test [ARGS]   pytest tests/localkube (all but the down test), ARGS passed on
#   tools/localkube/ci.sh down-check    last step: the test that down leaves the machine as it was
#   tools/localkube/ci.sh down          stop everything (for a trap; harmless when already down)
#   tools/localkube/ci.sh all           up, test, down-check, with down in an EXIT trap
#
# PYTHON selects the interpreter that has pytest (default: python3). localkube.py
# itself needs only the standard library.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
localkube() { "$python" "$here/localkube.py" "$@"; }

command=${1:-all}
shift || true
case "$command" in
  up) localkube up ;;
  down) localkube down ;;
  test)
    cd "$repo"
    LOCALKUBE_NO_UP=1 "$python" -m pytest tests/localkube -m "not localkube_down and not localkube_leaks" "$@"
    LOCALKUBE_NO_UP=1 LOCALKUBE_RUN_LEAK_CHECK=1 "$python" -m pytest -q -s tests/localkube -m localkube_leaks ;;
  down-check)
    cd "$repo"
    LOCALKUBE_RUN_DOWN_TEST=1 "$python" -m pytest tests/localkube -m localkube_down "$@" ;;
  all)
    trap 'localkube down' EXIT
    localkube up
    "$0" test "$@"
    "$0" down-check ;;
  *) echo "usage: $0 up|test|down-check|down|all" >&2; exit 2 ;;
esac
