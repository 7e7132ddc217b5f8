#!/usr/bin/env bash
# `make images`: builds localhost/kubetrain-operator:dev and
# localhost/kubetrain-trainer:dev with podman from the repo's Dockerfiles, on a
# Debian bookworm base made here with debootstrap (no registry needed), and
# imports them into the containerd of every node of the cluster if it is running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

BASE_IMAGE="localhost/kubetrain-base:bookworm"
"${KT_CLUSTER_SRC}/deps.sh"
# Build logs and the base tarball live here; a new machine has none of it yet.
images_cache="${KT_CACHE}/images"
mkdir -p "${images_cache}"

# --- base image: debootstrap, cached as a tarball ---------------------------------
base_tar="${images_cache}/base-bookworm.tar"
if ! podman image exists "${BASE_IMAGE}"; then
  if [[ ! -f ${base_tar} ]]; then
    # The same Debian mirror apt uses on this machine.
    mirror="$(grep -hoE '^URIs: *\S+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')"
    mirror="${mirror:-$(grep -hoE '^deb +\S+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "debootstrap bookworm from ${mirror} (cold: a few minutes)"
    rootfs="$(mktemp -d)"
    trap 'rm -rf "${rootfs}"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "${rootfs}" "${mirror}" >"${images_cache}/debootstrap.log" 2>&1 ||
      die "debootstrap failed, see ${images_cache}/debootstrap.log"
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
    tar -C "${rootfs}" --numeric-owner -cf "${base_tar}.tmp" .
    mv "${base_tar}.tmp" "${base_tar}"
    rm -rf "${rootfs}"
    trap - EXIT
  fi
  podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    "${base_tar}" "${BASE_IMAGE}" >/dev/null
fi

# --- project images ---------------------------------------------------------------
# The repo is the context, as for `docker build`; its .dockerignore keeps it small.
ctx="${KT_ROOT}"
pipconf="$(mktemp)"
trap 'rm -f "${pipconf}"' EXIT

# pip inside the build trusts what pip on this machine trusts (a site may put a
# TLS proxy in front of the package index) and uses the same index. Both are
# mounted for RUN steps only and never end up in the image.
build_mounts=()
host_bundle="$(pip config get global.cert 2>/dev/null || true)"
host_bundle="${PIP_CERT:-${host_bundle:-/etc/ssl/certs/ca-certificates.crt}}"
if [[ -f ${host_bundle} ]]; then
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"${pipconf}"
  index="$(pip config get global.index-url 2>/dev/null || true)"
  index="${PIP_INDEX_URL:-${index}}"
  [[ -n ${index} ]] && printf 'index-url = %s\n' "${index}" >>"${pipconf}"
  build_mounts+=(--volume "${host_bundle}:/etc/ssl/certs/ca-certificates.crt:ro"
    --volume "${pipconf}:/etc/pip.conf:ro")
fi

for name in operator trainer; do
  image="localhost/kubetrain-${name}:dev"
  log "building ${image}"
  podman build --quiet --pull=never --build-arg "BASE=${BASE_IMAGE}" "${build_mounts[@]}" \
    -f "${KT_ROOT}/Dockerfile.${name}" -t "${image}" "${ctx}" >"${images_cache}/${name}.log" 2>&1 ||
    die "podman build of ${image} failed, see ${images_cache}/${name}.log"
done

# --- into the cluster -------------------------------------------------------------
# Every running node's containerd: a pod may be scheduled on any of them.
mapfile -t nodes < <(kt_nodes_up)
if ((${#nodes[@]})); then
  kt_import localhost/kubetrain-operator:dev "${nodes[@]}"
  kt_import localhost/kubetrain-trainer:dev "${nodes[@]}"
else
  log "cluster not running: make cluster imports the images when it starts"
fi
