# Shared settings for the development cluster scripts. Sourced, not run.
# shellcheck shell=bash

KT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KT_CLUSTER_SRC="${KT_ROOT}/hack/cluster"

# The one Kubernetes release every component comes from; go.mod pins the same.
KUBE_VERSION="v1.34.12"
# The NetworkPolicy enforcer; hack/cluster/netpol/go.mod pins the same.
KUBE_ROUTER_VERSION="v2.1.0"

# Everything built or downloaded is cached here and survives `cluster-down`.
KT_CACHE="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubetrain}"
# Runtime state of the running cluster (certs, etcd data, logs, pids).
KT_STATE="${KUBETRAIN_STATE:-/var/lib/kubetrain}"
KT_RUN="${KT_STATE}/run"
KT_LOGS="${KT_STATE}/logs"
KT_PKI="${KT_STATE}/pki"

export GOMODCACHE="${KT_CACHE}/go/mod"
export GOCACHE="${KT_CACHE}/go/build"
export GOFLAGS="-mod=readonly -buildvcs=false"

# Addresses exist only on this machine: a bridge with no uplink, and a
# service range that only kube-proxy's rules know.
KT_BRIDGE="kt0"
KT_POD_CIDR="10.244.0.0/24"
KT_NODE_IP="10.244.0.1"
KT_SERVICE_CIDR="10.96.0.0/16"
KT_KUBERNETES_SVC_IP="10.96.0.1"
KT_DNS_IP="${KT_NODE_IP}"
KT_API_PORT=6443
KT_NODE_NAME="kubetrain-dev"

# The cluster's S3 server (versitygw, hack/s3): on the node's bridge address, so pods reach
# it and nothing outside this machine can. Its data survives `cluster-down`, like volumes'.
KT_S3_PORT=7070
KT_S3_ENDPOINT="http://${KT_NODE_IP}:${KT_S3_PORT}"
KT_S3_BUCKET="kubetrain"
KT_S3_STATE="${KT_STATE}/s3"
# AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and KUBETRAIN_S3_BUCKET:
# `set -a; source` it to point an S3 client (or a Secret) at the cluster's store.
KT_S3_CREDENTIALS="${KT_S3_STATE}/credentials.env"

KT_CONTAINERD_SOCK="${KT_RUN}/containerd/containerd.sock"
KT_PAUSE_IMAGE="localhost/kubetrain-pause:1"
KT_BUSYBOX_IMAGE="localhost/kubetrain-busybox:1"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Short hash of the given files: binaries are cached under their version and
# the hash of their build inputs, so a changed go.mod or source never reuses a
# stale binary.
kt_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Where build.sh links the binaries the cluster runs.
KT_BIN="${KT_CACHE}/bin/current"

# kt_ctr ARGS...: ctr on the cluster's containerd, in the namespace the kubelet uses.
kt_ctr() { ctr --address "${KT_CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

# kt_containerd_up: the cluster's containerd answers. A socket file alone says
# nothing: one killed without cleanup (a reboot, an OOM kill) leaves it behind.
kt_containerd_up() {
  [[ -S ${KT_CONTAINERD_SOCK} ]] && kt_ctr version >/dev/null 2>&1
}

# kt_import IMAGE: copy an image from podman into the cluster's containerd
# (namespace k8s.io) unless that very image ID is already there.
kt_import() {
  local image=$1 id mark
  id="$(podman image inspect --format '{{.Id}}' "${image}")"
  mark="${KT_STATE}/containerd-imported/${image//[\/:]/_}"
  if [[ -f ${mark} && "$(<"${mark}")" == "${id}" ]] &&
    kt_ctr images ls -q | grep -qxF "${image}"; then
    return 0
  fi
  podman save --quiet --format docker-archive "${image}" |
    kt_ctr images import - >/dev/null
  mkdir -p "$(dirname "${mark}")"
  echo "${id}" >"${mark}"
  log "imported ${image} into the cluster"
}

# kt_lock: serialize up/down of this cluster between concurrent callers (two
# test sessions, say). The lock is on fd 9, which started daemons must not keep.
kt_lock() {
  mkdir -p "${KT_STATE}"
  exec 9>"${KT_STATE}/.lock"
  flock 9
}
