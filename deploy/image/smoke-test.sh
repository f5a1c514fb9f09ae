#!/usr/bin/env bash
# Smoke test of a built image: runs as its non-root user, `parquant --help`, and the demo pipeline
# (import -> quantize -> validate -> benchmark -> report on the embedded model) inside it.
#   deploy/image/smoke-test.sh [IMAGE]      (default parquant:cpu)
set -euo pipefail
IMAGE=${1:-parquant:cpu}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  run() { docker run --rm "$IMAGE" "$@"; }
  shell() { docker run --rm --entrypoint /bin/sh "$IMAGE" -c "$1"; }
else
  ctr=$(buildah from "localhost/$IMAGE" 2>/dev/null || buildah from "$IMAGE")
  trap 'buildah rm "$ctr" >/dev/null' EXIT
  user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$ctr")
  run() { buildah run --user "$user" "$ctr" -- parquant "$@"; }
  shell() { buildah run --user "$user" "$ctr" -- /bin/sh -c "$1"; }
fi

fail() { echo "smoke test FAILED: $*" >&2; exit 1; }
[ "$(shell 'id -u')" != "0" ] || fail "the image runs as root"
run --help | grep -q "stages:" || fail "parquant --help printed no stages"
run quantize --help | grep -q -- "--method" || fail "parquant quantize --help is incomplete"
shell 'test ! -w /opt/parquant' || fail "the runtime user can write the installed package"
shell 'parquant pipeline examples/pipelines/demo.yaml --log-format text --quiet && cat out/pipeline-demo/report/report.md \
       && test -s out/pipeline-demo/report/report.html' || fail "the demo pipeline failed inside the image"
echo "smoke test passed: $IMAGE"
