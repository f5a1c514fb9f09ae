#!/usr/bin/env bash
# Build the parquant image without a registry.
#
#   deploy/image/build.sh cpu|gpu [TAG] [extra build options, e.g. --build-arg GPU_TORCH_BUILD=cpu]
#
# With a Docker daemon it is a plain `docker build`. Without one (CI here) it uses Debian's buildah,
# and the base image is a Debian bookworm made locally by mmdebstrap (python3 + venv + CA
# certificates), cached under $PARQUANT_IMAGE_CACHE, so no registry is needed at all. Python
# packages come from PyPI, and from this machine's local wheel folders when they exist (the CPU
# torch wheel lives there), mounted read-only into the build.
set -euo pipefail

TARGET=${1:?usage: build.sh cpu|gpu [TAG] [extra build options...]}
TAG=${2:-parquant:$TARGET}
shift $(( $# >= 2 ? 2 : 1 ))
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PARQUANT_IMAGE_CACHE:-/var/cache/parquant-image}
BASE_TAG=localhost/parquant-base:bookworm

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  exec docker build --build-arg "FLAVOR=$TARGET" -t "$TAG" "$@" "$ROOT"
fi

# shellcheck source=../apt.sh
source "$ROOT/deploy/apt.sh"
apt_install buildah runc mmdebstrap fuse-overlayfs

if ! buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  if [ ! -s "$CACHE/base.tar" ]; then
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
      --aptopt='APT::Install-Recommends "false"' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm "$CACHE/base.tar.part" && mv "$CACHE/base.tar.part" "$CACHE/base.tar"
  fi
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$CACHE/base.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  buildah commit --quiet "$ctr" "$BASE_TAG" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

args=(--layers --network host --build-arg "BASE=$BASE_TAG" --build-arg "FLAVOR=$TARGET")
# This machine's pip configuration (find-links to local wheels, file:// indexes, CA bundle):
# mount each folder it names at the same path and pass the settings through as build arguments.
for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
  [ -d "$dir" ] && args+=(--volume "$dir:$dir:ro")
done
[ -d /opt/wheels ] && args+=(--build-arg PIP_FIND_LINKS=/opt/wheels)
# The CPU torch wheel on local disk: do not ask PyTorch's index (unreachable offline) for it.
ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1 && args+=(--build-arg TORCH_INDEX_URL=)
# A TLS-intercepting proxy's CA lives in the host bundle: let pip in the build trust the same.
if [ -n "${PIP_CERT:-}" ] || [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  args+=(--volume "$cert:/run/parquant-build/ca.crt:ro" --build-arg PIP_CERT=/run/parquant-build/ca.crt)
fi
extra=""
for dir in /opt/pypi/simple /opt/pypi-more/simple; do [ -d "$dir" ] && extra="$extra file://$dir"; done
[ -n "$extra" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra# }")
# The build stage is kept as a tagged image, so its torch and dependency layers (most of the image,
# rarely changed) survive pruning the untagged leftovers of earlier builds as build cache.
buildah bud "${args[@]}" --target build -t "localhost/parquant-cache:build-$TARGET" "$@" "$ROOT"
buildah bud "${args[@]}" -t "$TAG" "$@" "$ROOT"
buildah rmi --prune >/dev/null 2>&1 || true
