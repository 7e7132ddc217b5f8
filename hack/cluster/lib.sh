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
# A node whose kubelet has not renewed its lease for this long is NotReady: two missed
# renewals (every 10 s). Kubernetes' default is 50 s; a lost node is noticed sooner here.
KT_NODE_MONITOR_GRACE="20s"

# The cluster's S3 server (versitygw, hack/s3): on the node's bridge address, so pods reach
# it and nothing outside this machine can. Its data survives `cluster-down`, like volumes'.
KT_S3_PORT=7070
# metrics-server (the resource metrics API) listens on the node's bridge address too.
KT_METRICS_PORT=4443
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

# --- more nodes (`make cluster NODES=3`) ---------------------------------------------
# Node 1 is this machine's own network: the bridge kt0, the addresses above and the
# processes up.sh starts. Node K >= 2 (hack/cluster/node.sh) is kubetrain-dev-K: a network
# namespace kt-node-K with its own bridge kt0 for its pods (10.244.K.0/24), joined to this
# machine by a veth pair (kt-vK here, eth0 there) on the bridge kt-nodes (10.245.0.0/24,
# the node at 10.245.0.(10+K)), with its own containerd, kubelet, kube-proxy and kube-router.
KT_NODES_MAX=9
KT_NODES_BRIDGE="kt-nodes"
KT_NODES_GATEWAY="10.245.0.1"
KT_NODES_PREFIX=24
# How many nodes the running cluster has: written by up.sh, gone with the cluster.
KT_NODES_FILE="${KT_RUN}/nodes"

kt_node_count() { cat "${KT_NODES_FILE}" 2>/dev/null || echo 1; }
kt_node_name() { if (($1 == 1)); then echo "${KT_NODE_NAME}"; else echo "${KT_NODE_NAME}-$1"; fi; }
kt_node_ip() { if (($1 == 1)); then echo "${KT_NODE_IP}"; else echo "10.245.0.$((10 + $1))"; fi; }
kt_node_pod_cidr() { if (($1 == 1)); then echo "${KT_POD_CIDR}"; else echo "10.244.$1.0/24"; fi; }
kt_node_netns() { echo "kt-node-$1"; }
kt_node_veth() { echo "kt-v$1"; }
# Where node K keeps what survives `cluster-down` (its images), and its containerd's socket.
kt_node_state() { if (($1 == 1)); then echo "${KT_STATE}"; else echo "${KT_STATE}/nodes/$(kt_node_name "$1")"; fi; }
kt_node_sock() {
  if (($1 == 1)); then echo "${KT_CONTAINERD_SOCK}"; else echo "${KT_RUN}/$(kt_node_name "$1")/containerd/containerd.sock"; fi
}
# kt_node_index NAME: K for a node name (kubetrain-dev is 1); fails for any other name.
kt_node_index() {
  case $1 in
    "${KT_NODE_NAME}") echo 1 ;;
    "${KT_NODE_NAME}"-[2-9]) echo "${1##*-}" ;;
    *) return 1 ;;
  esac
}

# kt_node_ctr K ARGS...: ctr on node K's containerd, in the namespace the kubelet uses.
kt_node_ctr() { local k=$1; shift; ctr --address "$(kt_node_sock "${k}")" --namespace k8s.io "$@"; }
# kt_ctr ARGS...: ctr on the first node's containerd.
kt_ctr() { kt_node_ctr 1 "$@"; }

# kt_containerd_up [K]: node K's containerd (default: the first's) answers. A socket file
# alone says nothing: one killed without cleanup (a reboot, an OOM kill) leaves it behind.
kt_containerd_up() {
  local k=${1:-1}
  [[ -S "$(kt_node_sock "${k}")" ]] && kt_node_ctr "${k}" version >/dev/null 2>&1
}

# kt_nodes_up: the nodes (K, one a line) whose containerd answers, for imports.
kt_nodes_up() {
  local k
  for ((k = 1; k <= $(kt_node_count); k++)); do
    if kt_containerd_up "${k}"; then echo "${k}"; fi
  done
}

# kt_import IMAGE [K...]: copy an image from podman into the containerd (namespace k8s.io) of
# each node K (default: the first) that does not have that very image ID yet. Saved once
# however many nodes take it.
kt_import() {
  local image=$1 id k mark archive
  shift
  (($#)) || set -- 1
  id="$(podman image inspect --format '{{.Id}}' "${image}")"
  local todo=()
  for k in "$@"; do
    mark="$(kt_node_state "${k}")/containerd-imported/${image//[\/:]/_}"
    if [[ -f ${mark} && "$(<"${mark}")" == "${id}" ]] &&
      kt_node_ctr "${k}" images ls -q | grep -qxF "${image}"; then
      continue
    fi
    todo+=("${k}")
  done
  ((${#todo[@]})) || return 0
  if ((${#todo[@]} == 1)); then
    podman save --quiet --format docker-archive "${image}" |
      kt_node_ctr "${todo[0]}" images import - >/dev/null
  else
    archive="$(mktemp -p "${KT_STATE}" .import.XXXXXX)"
    podman save --quiet --format docker-archive -o "${archive}" "${image}"
    for k in "${todo[@]}"; do
      kt_node_ctr "${k}" images import - <"${archive}" >/dev/null || { rm -f "${archive}"; return 1; }
    done
    rm -f "${archive}"
  fi
  for k in "${todo[@]}"; do
    mark="$(kt_node_state "${k}")/containerd-imported/${image//[\/:]/_}"
    mkdir -p "$(dirname "${mark}")"
    echo "${id}" >"${mark}"
    log "imported ${image} into node $(kt_node_name "${k}")"
  done
}

# kt_isolate: nothing is forwarded between the bridge and any other interface: pods reach
# the node and each other, never the outside. The mangle table sees a packet before
# kube-proxy's ACCEPT rules in filter can, even for a Service whose endpoints someone pointed
# outside. The node network's bridge (behind it the further nodes' namespaces and their
# pods) is inside the fence too. One iptables-restore empties and refills the chain at once,
# so that adding nodes to a running cluster leaves no moment unfenced.
kt_isolate() {
  local from to rules=""
  for from in "${KT_BRIDGE}" "${KT_NODES_BRIDGE}"; do
    for to in "${KT_BRIDGE}" "${KT_NODES_BRIDGE}"; do
      rules+="-A KUBETRAIN-ISOLATE -i ${from} -o ${to} -j RETURN"$'\n'
    done
  done
  for from in "${KT_BRIDGE}" "${KT_NODES_BRIDGE}"; do
    rules+="-A KUBETRAIN-ISOLATE -i ${from} -j DROP"$'\n'"-A KUBETRAIN-ISOLATE -o ${from} -j DROP"$'\n'
  done
  printf '*mangle\n:KUBETRAIN-ISOLATE - [0:0]\n%sCOMMIT\n' "${rules}" | iptables-restore --noflush
  iptables -t mangle -C FORWARD -j KUBETRAIN-ISOLATE 2>/dev/null ||
    iptables -t mangle -I FORWARD 1 -j KUBETRAIN-ISOLATE
}

# kt_start NAME CMD...: run CMD detached in its own session, its output in
# ${KT_LOGS}/NAME.log and its PID in ${KT_RUN}/NAME.pid (NAME may be NODE/COMPONENT).
kt_start() {
  local name=$1
  shift
  mkdir -p "$(dirname "${KT_LOGS}/${name}")" "$(dirname "${KT_RUN}/${name}")"
  setsid "$@" >"${KT_LOGS}/${name}.log" 2>&1 </dev/null 9>&- &
  echo $! >"${KT_RUN}/${name}.pid"
}

# kt_start_proxy NAME CONFIG [PREFIX...]: kube-proxy (PREFIX runs it in a node's netns), and
# wait until its first sync translates the API server's own Service. That sync fails if
# another writer rewrites the filter table at the same moment ("Chain 'KUBE-SERVICES' does not
# exist"), and kube-proxy was seen never to retry it, leaving every Service address
# unreachable; so kube-router starts only after this, and a proxy with no rules is restarted.
kt_proxy_synced() { "$@" iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https cluster IP'; }
kt_start_proxy() {
  local name=$1 config=$2 attempt deadline
  shift 2
  for attempt in 1 2 3; do
    kt_start "${name}" "$@" kube-proxy --config "${config}"
    deadline=$((SECONDS + 30))
    until kt_proxy_synced "$@"; do
      ((SECONDS < deadline)) || break
      sleep 0.5
    done
    kt_proxy_synced "$@" && return 0
    log "${name} wrote no Service rules in 30 s (attempt ${attempt}); restarting it"
    tail -n 5 "${KT_LOGS}/${name}.log" >&2 || true
    kt_stop "${name}"
  done
  die "${name} never wrote its Service rules; logs in ${KT_LOGS}/${name}.log"
}

# kt_wait_for WHAT SECONDS CMD...: poll until CMD succeeds; on timeout show the logs and exit.
kt_wait_for() {
  local what=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out waiting for ${what}; logs in ${KT_LOGS}"
      tail -n 20 "${KT_LOGS}"/*.log "${KT_LOGS}"/*/*.log >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}

# kt_running PID: alive and not a zombie waiting for init to reap it.
kt_running() { [[ -r /proc/$1/stat ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# kt_stop NAME [KILL]: TERM the PID recorded in ${KT_RUN}/NAME.pid if it is still that
# program (the last part of NAME), then KILL; with KILL, KILL at once (a power cut).
kt_stop() {
  local name=$1 now=${2:-} pidfile="${KT_RUN}/$1.pid" pid
  [[ -f ${pidfile} ]] || return 0
  pid="$(<"${pidfile}")"
  # A PID from an earlier boot may be gone or reused: the braces keep the shell's own
  # "No such file" for the redirection quiet too.
  if [[ "$({ tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null)" == *"${name##*/}"* ]]; then
    ${KT_QUIET:-false} || log "stopping ${name} (${pid})"
    if [[ -z ${now} ]]; then
      kill -TERM "${pid}" 2>/dev/null || true
      # State is thrown away at the next start: a short grace is enough.
      for _ in $(seq 50); do kt_running "${pid}" || break; sleep 0.1; done
    fi
    kill -KILL "${pid}" 2>/dev/null || true
    while kt_running "${pid}"; do sleep 0.1; done
  fi
  rm -f "${pidfile}"
}

# kt_lock: serialize up/down of this cluster between concurrent callers (two
# test sessions, say). The lock is on fd 9, which started daemons must not keep.
kt_lock() {
  mkdir -p "${KT_STATE}"
  exec 9>"${KT_STATE}/.lock"
  flock 9
}

# kt_cni_config IPAM_DIR SUBNET GATEWAY: a node's CNI network, its pods on its own bridge.
kt_cni_config() {
  cat <<CNI
{
  "cniVersion": "0.4.0",
  "name": "kubetrain",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${KT_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$1",
        "ranges": [[{"subnet": "$2", "gateway": "$3"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
}

# kt_containerd_config ROOT STATE SOCKET CNI_CONF_DIR [RUNC_ROOT]: a node's containerd. The
# further nodes give runc a root of their own too, so two containerds never share state.
kt_containerd_config() {
  local runc_root=""
  [[ -n ${5:-} ]] && runc_root=$'\n'"        Root = \"$5\""
  cat <<TOML
version = 2
root = "$1"
state = "$2"
[grpc]
  address = "$3"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${KT_PAUSE_IMAGE}"
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE (as on these VMs) runc cannot lower a process's
  # oom_score_adj and fails to start it; clamp to containerd's own value.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false${runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$4"
TOML
}
