#!/usr/bin/env bash
# Make a local Debian image with Python and pip, for the Dockerfile's build
# stage (tests) and for the conventional image of the benchmark: no base
# image can be pulled here, so it is made with debootstrap and `docker import`.
#
#   tools/image/debian-base.sh [SUITE] [IMAGE]
#
# The Debian archive is $MINIMALDASK_DEBIAN_MIRROR or the one in this
# machine's apt sources. The host's CA bundle is copied in, so that pip works
# behind a TLS-inspecting proxy. Idempotent: an existing image is kept.
set -euo pipefail
suite=${1:-bookworm}
image=${2:-minimaldask-debian-base:$suite}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "debian-base: $image exists"
    exit 0
fi
here=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
mirror=${MINIMALDASK_DEBIAN_MIRROR:-$("$python" -c \
    'from minimaldask.image.debian import apt_archive_url; print(apt_archive_url() or "")')}
if [ -z "$mirror" ]; then
    echo "debian-base: no Debian archive: set MINIMALDASK_DEBIAN_MIRROR" >&2
    exit 1
fi
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
root=$(mktemp -d /tmp/minimaldask-debian-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$SECONDS
echo "debian-base: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] && cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "debian-base: $image made in $((SECONDS - start)) s"
