#!/usr/bin/env bash
# The image workflow's build step (.github/workflows/image.yml), runnable anywhere:
# build one Python's image for PLATFORMS and push it (or write an OCI layout).
#
#   PYTHON=3.13 PLATFORMS=linux/amd64,linux/arm64 PUSH="REPO:TAG ..." bash tools/ci/build-image.sh
#
# PYTHON      X.Y; a Python of STANDALONE (tools/ci/cpython.json) is built with
#             --python-from around the pinned standalone CPython archives,
#             fetched and checked by tools/ci/cpython.py (CPYTHON_PINS moves the pins)
# PLATFORMS   comma-separated OCI platforms
# PUSH        space-separated references to push to (optional)
# OUTPUT      write an OCI image layout there (optional)
# CPYTHON_DIR where the archives are kept (default ~/.cache/minimaldask/cpython)
# EXTRA_ARGS  more arguments for the builder (e.g. --ignore-valid-until)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PYTHON:?set PYTHON to X.Y}" "${PLATFORMS:?set PLATFORMS}"
py=${BUILDER_PYTHON:-python3}
args=(--platform "$PLATFORMS")
standalone=$("$py" -c 'import sys, minimaldask.image.recipe as r; print(sys.argv[1] in r.STANDALONE_PYTHONS)' "$PYTHON")
if [ "$standalone" = True ]; then
    dir=${CPYTHON_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minimaldask/cpython}
    IFS=, read -ra platforms <<<"$PLATFORMS"
    for platform in "${platforms[@]}"; do
        archive=$("$py" tools/ci/cpython.py --python "$PYTHON" --platform "$platform" --dest "$dir")
        args+=(--python-from "$archive")
    done
else
    args+=(--python "$PYTHON")
fi
for ref in ${PUSH:-}; do args+=(--push "$ref"); done
if [ -n "${OUTPUT:-}" ]; then args+=(--output "$OUTPUT"); fi
if [ -n "${GITHUB_REPOSITORY:-}" ]; then args+=(--source "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY"); fi
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of words
exec "$py" -m minimaldask.image build "${args[@]}" ${EXTRA_ARGS:-}
