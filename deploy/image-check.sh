#!/usr/bin/env bash
# Build abx's CPU image with no registry and check it serves, on a machine where containers
# cannot run (no cgroup management for crun) but podman can build:
#   1. a Debian 12 base from Debian's packages (debootstrap into a folder, `podman import`);
#   2. `podman build --isolation chroot` of deploy/Containerfile on that base;
#   3. `podman image mount`, then the image's entrypoint run under chroot in a new mount
#      namespace, against this machine's PostgreSQL: /healthz, /readyz and one /v1/predict.
# Needs root, podman and debootstrap (apt-get install podman debootstrap), and network access
# to Debian's mirror and PyPI. Work files go to ${ABX_IMAGE_WORK:-/var/tmp/abx-image}.
#   deploy/image-check.sh [DATABASE_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${ABX_IMAGE_WORK:-/var/tmp/abx-image}
database=${1:-postgresql://postgres@127.0.0.1:5432/abx_image_check}
mkdir -p "$work"
say() { printf '%s  %s\n' "$(date +%T)" "$*"; }

if ! podman image exists localhost/debian-base:bookworm; then
  say "debootstrap: a minimal Debian 12 into $work/rootfs"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
  tar -C "$work/rootfs" -c . | podman import - localhost/debian-base:bookworm >/dev/null
fi

say "podman build (chroot isolation) of deploy/Containerfile with the demo models baked in"
# The host's CA bundle goes in as a build secret (pip behind a TLS-inspecting proxy).
podman build --isolation chroot -f deploy/Containerfile -t localhost/abx:cpu \
  --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt \
  --build-arg BASE=localhost/debian-base:bookworm --build-arg DEMO_MODELS=true . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
podman image inspect localhost/abx:cpu --format '{{.Size}}' | awk '{printf "image size: %.0f MB\n", $1/1e6}'

say "mount the image and run its entrypoint under chroot"
root=$(podman image mount localhost/abx:cpu)
trap 'podman image unmount localhost/abx:cpu >/dev/null 2>&1 || true' EXIT
psql "${database%/*}/postgres" -qc "DROP DATABASE IF EXISTS ${database##*/}" -c "CREATE DATABASE ${database##*/}" >/dev/null
port=18765
# The image's own environment (ENV in the Containerfile), as a container runtime would set it.
mapfile -t image_env < <(podman image inspect localhost/abx:cpu --format '{{range .Config.Env}}{{println .}}{{end}}' | grep .)
run_in_image() {
  # A private mount namespace: /proc, /dev and a writable /tmp for the chroot only.
  unshare --mount --fork sh -c '
    root=$1; shift
    mount --make-rprivate /
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/tmp"
    mount -t tmpfs tmpfs "$root/var/lib/abx/data"
    exec chroot --userspec=10001:10001 "$root" "$@"
  ' sh "$root" env -i "${image_env[@]}" HOME=/var/lib/abx ABX_DATABASE_URL="$database" "$@"
}
run_in_image abx migrate
token=$(run_in_image abx keys create --name image-check --scopes predict | awk '/abx_live_/ {print $1}')
run_in_image abx serve --no-migrate --bind 127.0.0.1:$port --workers 1 >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; sleep 1; podman image unmount localhost/abx:cpu >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 1; done
say "GET /healthz: $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/healthz)"
say "GET /readyz:  $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)"
features=$(python3 -c 'print([[float(i % 7 - 2) for i in range(20)]])')
answer=$(curl -s -X POST "http://127.0.0.1:$port/v1/predict" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' \
  -d "{\"experiment\": \"checkout_ranker\", \"unit\": \"user-1\", \"attributes\": {\"country\": \"US\", \"app_version\": \"2.1.0\"}, \"inputs\": {\"features\": $features}}")
say "POST /v1/predict: $answer"
echo "$answer" | grep -q '"outputs"'
say "the image serves"
