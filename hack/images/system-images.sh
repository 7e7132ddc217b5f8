#!/usr/bin/env bash
# Builds the two images the node itself needs, from local files only, and
# imports them into the cluster's containerd (namespace k8s.io):
#   pause   - the pod sandbox, our own static program (hack/images/pause)
#   busybox - Debian's busybox-static, for local-path-provisioner's helper pods
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

have() { kt_ctr images ls -q | grep -qxF "$1"; }

# import_rootfs IMAGE DIR CHANGE...: turn a directory into a one-layer image.
import_rootfs() {
  local image=$1 dir=$2; shift 2
  local changes=()
  for c in "$@"; do changes+=(--change "${c}"); done
  tar -C "${dir}" --owner=0 --group=0 -c . |
    podman import --quiet "${changes[@]}" - "${image}" >/dev/null
  kt_import "${image}"
}

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

if ! have "${KT_PAUSE_IMAGE}"; then
  mkdir -p "${tmp}/pause"
  install -m 0755 "${KT_BIN}/pause" "${tmp}/pause/pause"
  import_rootfs "${KT_PAUSE_IMAGE}" "${tmp}/pause" 'ENTRYPOINT ["/pause"]' 'USER 65535:65535'
fi

if ! have "${KT_BUSYBOX_IMAGE}"; then
  mkdir -p "${tmp}/busybox/bin" "${tmp}/busybox/tmp"
  chmod 1777 "${tmp}/busybox/tmp"
  install -m 0755 /bin/busybox "${tmp}/busybox/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ ${applet} == busybox ]] || ln -s busybox "${tmp}/busybox/bin/${applet}"
  done
  import_rootfs "${KT_BUSYBOX_IMAGE}" "${tmp}/busybox" 'CMD ["/bin/sh"]' 'ENV PATH=/bin'
fi

# Project images that `make images` built while the cluster was down.
for image in localhost/kubetrain-operator:dev localhost/kubetrain-trainer:dev; do
  if podman image exists "${image}"; then
    kt_import "${image}"
  fi
done
