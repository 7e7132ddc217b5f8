#!/usr/bin/env bash
# Builds the two images a node itself needs, from local files only, and imports them into
# its containerd (namespace k8s.io), with the project images podman has:
#   pause   - the pod sandbox, our own static program (hack/images/pause)
#   busybox - Debian's busybox-static, for local-path-provisioner's helper pods
# Usage: system-images.sh [K...] for nodes K (see lib.sh; default: the first node).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

nodes=("$@")
((${#nodes[@]})) || nodes=(1)

# lacking IMAGE: the nodes (one a line) whose containerd does not have IMAGE.
lacking() {
  local k
  for k in "${nodes[@]}"; do
    kt_node_ctr "${k}" images ls -q | grep -qxF "$1" || echo "${k}"
  done
}

# import_rootfs IMAGE DIR CHANGE...: turn a directory into a one-layer image in podman.
import_rootfs() {
  local image=$1 dir=$2; shift 2
  local changes=()
  for c in "$@"; do changes+=(--change "${c}"); done
  tar -C "${dir}" --owner=0 --group=0 -c . |
    podman import --quiet "${changes[@]}" - "${image}" >/dev/null
}

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

mapfile -t todo < <(lacking "${KT_PAUSE_IMAGE}")
if ((${#todo[@]})); then
  # Made afresh when the first node lacks it (a new cluster, or a new pause.c); a node
  # added later takes the one the first node has.
  if [[ " ${todo[*]} " == *" 1 "* ]] || ! podman image exists "${KT_PAUSE_IMAGE}"; then
    mkdir -p "${tmp}/pause"
    install -m 0755 "${KT_BIN}/pause" "${tmp}/pause/pause"
    import_rootfs "${KT_PAUSE_IMAGE}" "${tmp}/pause" 'ENTRYPOINT ["/pause"]' 'USER 65535:65535'
  fi
  kt_import "${KT_PAUSE_IMAGE}" "${todo[@]}"
fi

mapfile -t todo < <(lacking "${KT_BUSYBOX_IMAGE}")
if ((${#todo[@]})); then
  if [[ " ${todo[*]} " == *" 1 "* ]] || ! podman image exists "${KT_BUSYBOX_IMAGE}"; then
    mkdir -p "${tmp}/busybox/bin" "${tmp}/busybox/tmp"
    chmod 1777 "${tmp}/busybox/tmp"
    install -m 0755 /bin/busybox "${tmp}/busybox/bin/busybox"
    for applet in $(/bin/busybox --list); do
      [[ ${applet} == busybox ]] || ln -s busybox "${tmp}/busybox/bin/${applet}"
    done
    import_rootfs "${KT_BUSYBOX_IMAGE}" "${tmp}/busybox" 'CMD ["/bin/sh"]' 'ENV PATH=/bin'
  fi
  kt_import "${KT_BUSYBOX_IMAGE}" "${todo[@]}"
fi

# Project images that `make images` built while the cluster (or this node) was down.
for image in localhost/kubetrain-operator:dev localhost/kubetrain-trainer:dev; do
  if podman image exists "${image}"; then
    kt_import "${image}" "${nodes[@]}"
  fi
done
