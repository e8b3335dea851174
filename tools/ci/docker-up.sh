#!/usr/bin/env bash
# Prepare this machine for the image tests: Debian's docker.io,
# qemu-user-static, debootstrap (the Dockerfile test's base image) and
# docker-registry (the push test), a running Docker engine, binfmt entries
# for arm64 and armv7. Idempotent; prints what it did. Run as root.
set -euo pipefail
log() { printf 'docker-up: %s\n' "$*"; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
else
    log "docker.io, qemu-user-static, binfmt-support, debootstrap, docker-registry already installed"
fi

if docker info >/dev/null 2>&1; then
    log "Docker engine already running"
else
    log "starting dockerd (log: /var/log/minimaldask-dockerd.log)"
    # iptables stays on: published ports and user networks need it.
    nohup dockerd >/var/log/minimaldask-dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/minimaldask-dockerd.log >&2; exit 1; }
    log "Docker engine up: $(docker info --format '{{.ServerVersion}}')"
fi

[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
for arch in aarch64 arm; do
    if [ -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ]; then
        log "binfmt qemu-$arch registered ($(grep flags "/proc/sys/fs/binfmt_misc/qemu-$arch"))"
    else
        update-binfmts --enable "qemu-$arch"
        log "binfmt qemu-$arch enabled"
    fi
done
