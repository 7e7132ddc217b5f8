#!/usr/bin/env bash
# The cluster's further nodes (`make cluster NODES=3`): kubetrain-dev-K for K >= 2, each in
# its own network namespace kt-node-K, with its own containerd, kubelet, kube-proxy and
# kube-router (the network is described in lib.sh and the README).
#   node.sh stop NODE   the machine loses power: its kubelet, containerd, kube-proxy,
#                       kube-router, shims and pods are killed at once (SIGKILL)
#   node.sh start NODE  it boots again: what lived in its /run is gone, its disk is not
#   node.sh cut NODE    a partition: its link goes down, every process keeps running
#   node.sh isolate NODE  a partition from the control plane only: the API server is out of
#                         reach, storage and the other nodes are not (its pods work on)
#   node.sh heal NODE   the link comes back, the API server is reachable again
# NODE is a name (kubetrain-dev-2) or a number (2). The first node, kubetrain-dev, is this
# machine's own network and carries the control plane: these do not apply to it.
# up.sh and down.sh use two more, with their lock held:
#   node.sh add K...     make node K (network, fresh state), start it, wait until it is Ready
#   node.sh remove K...  kill node K and remove all of it but its images
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ ${EUID} -eq 0 ]] || die "must run as root (it runs a kubelet and containerd)"
export PATH="${KT_BIN}:${PATH}"
export KUBECONFIG="${KT_PKI}/admin.kubeconfig"

usage() {
  echo "usage: $0 stop|start|cut|isolate|heal NODE   (NODE: ${KT_NODE_NAME}-2 or 2, ...)" >&2
  exit 2
}

# node_vars K: where node K's things are. Paths carry its name: that is what logs and ps show.
node_vars() {
  k=$1
  name="$(kt_node_name "${k}")"
  netns="$(kt_node_netns "${k}")"
  veth="$(kt_node_veth "${k}")"
  ip="$(kt_node_ip "${k}")"
  cidr="$(kt_node_pod_cidr "${k}")"
  gateway="${cidr%.0/*}.1"
  state="$(kt_node_state "${k}")" # its disk: images are kept, the rest made afresh by add
  cfg="${KT_STATE}/config/${name}"
  run="${KT_RUN}/${name}"
  sock="$(kt_node_sock "${k}")"
  # Only the network namespace: the node's processes share this machine's mounts, so
  # that containerd and runc see the volumes the kubelet mounts.
  in_node=(nsenter "--net=/run/netns/${netns}")
}

# --- network ------------------------------------------------------------------------------
node_network() {
  # This machine's side of the node network: one bridge every node's veth is a port of.
  if ! ip link show "${KT_NODES_BRIDGE}" >/dev/null 2>&1; then
    ip link add "${KT_NODES_BRIDGE}" type bridge
  fi
  ip addr replace "${KT_NODES_GATEWAY}/${KT_NODES_PREFIX}" dev "${KT_NODES_BRIDGE}"
  ip link set "${KT_NODES_BRIDGE}" up
  # A cluster started before this script knew of nodes fences kt-nodes off too.
  kt_isolate

  [[ -e /run/netns/${netns} ]] || ip netns add "${netns}"
  if ! ip link show "${veth}" >/dev/null 2>&1; then
    ip link add "${veth}" type veth peer name eth0 netns "${netns}"
  fi
  ip link set "${veth}" master "${KT_NODES_BRIDGE}" up
  ip -n "${netns}" link set lo up
  ip -n "${netns}" addr replace "${ip}/${KT_NODES_PREFIX}" dev eth0
  ip -n "${netns}" link set eth0 up
  # Everything else (the first node's pods, the API server, DNS, S3, other nodes) is
  # through this machine, whose KUBETRAIN-ISOLATE chain (kt_isolate) stops it there.
  ip -n "${netns}" route replace default via "${KT_NODES_GATEWAY}"
  # The node's own bridge for its pods, as kt0 is the first node's.
  ip -n "${netns}" link show "${KT_BRIDGE}" >/dev/null 2>&1 || ip -n "${netns}" link add "${KT_BRIDGE}" type bridge
  ip -n "${netns}" addr replace "${gateway}/${cidr#*/}" dev "${KT_BRIDGE}"
  ip -n "${netns}" link set "${KT_BRIDGE}" up
  # Both are per network namespace: the node routes its pods' traffic, and kube-proxy's
  # rules see the packets its bridge forwards (a pod calling a Service on the same node).
  ip netns exec "${netns}" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  ip route replace "${cidr}" via "${ip}" dev "${KT_NODES_BRIDGE}"
}

# The kubelet's cgroup root, in each cgroup v1 hierarchy, so that its pods are under
# /kt-node-K/kubepods and never in the first node's /kubepods.
node_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [[ -f ${d}cgroup.procs && ${d} != */unified/ ]] && mkdir -p "${d}${netns}"
  done
  # A new cpuset has no CPUs or memory nodes until it is given its parent's.
  local cpuset=/sys/fs/cgroup/cpuset
  if [[ -d ${cpuset}/${netns} ]]; then
    cat "${cpuset}/cpuset.cpus" >"${cpuset}/${netns}/cpuset.cpus"
    cat "${cpuset}/cpuset.mems" >"${cpuset}/${netns}/cpuset.mems"
  fi
}

# --- configuration: the first node's (up.sh), with the node's own paths and addresses ---------
node_config() {
  rm -rf --one-file-system "${cfg}" "${state}/kubelet" "${state}/cni" "${state}/pod-logs" "${run}"
  rm -f "${KT_LOGS}/${name}"/*.log
  mkdir -p "${cfg}/net.d" "${state}/pod-logs" "${run}"
  : >"${cfg}/resolv.conf"
  kt_cni_config "${state}/cni/ipam" "${cidr}" "${gateway}" >"${cfg}/net.d/10-kubetrain.conflist"
  # Its own root, state, socket and runc root: two containerds never share state.
  kt_containerd_config "${state}/containerd" "${run}/containerd" "${sock}" "${cfg}/net.d" \
    "${run}/runc" >"${cfg}/containerd.toml"
  # cgroupRoot keeps its pods apart from the other kubelets' (each kubelet owns and cleans
  # up the kubepods cgroup under its root); podLogsDir likewise, as a kubelet removes log
  # directories of pods it does not know.
  cat >"${cfg}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${ip}
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${KT_PKI}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${KT_PKI}/kubelet-${name}.crt
tlsPrivateKeyFile: ${KT_PKI}/kubelet-${name}.key
containerRuntimeEndpoint: unix://${sock}
cgroupDriver: cgroupfs
cgroupRoot: /${netns}
failCgroupV1: false
clusterDNS: [${KT_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ${cfg}/resolv.conf
podCIDR: ${cidr}
podLogsDir: ${state}/pod-logs
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
YAML
  # Its own iptables rules, for its own pods (clusterCIDR: the node's range, whose pods are
  # the only ones that reach a Service through this node's rules).
  cat >"${cfg}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${KT_PKI}/kube-proxy.kubeconfig}
hostnameOverride: ${name}
mode: iptables
oomScoreAdj: 0
clusterCIDR: ${cidr}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [${cidr}, ${ip}/32]
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
YAML
}

# --- processes ----------------------------------------------------------------------------
# node_boot: containerd with the images, the kubelet and kube-proxy, in the node's netns.
node_boot() {
  kt_start "${name}/containerd" "${in_node[@]}" \
    env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "${cfg}/containerd.toml"
  kt_wait_for "containerd of ${name}" 30 kt_containerd_up "${k}"
  "${KT_ROOT}/hack/images/system-images.sh" "${k}"
  kt_start "${name}/kubelet" "${in_node[@]}" kubelet --config "${cfg}/kubelet.yaml" \
    --kubeconfig "${KT_PKI}/kubelet-${name}.kubeconfig" --root-dir "${state}/kubelet" \
    --hostname-override "${name}" --node-ip "${ip}"
  kt_start_proxy "${name}/kube-proxy" "${cfg}/kube-proxy.yaml" "${in_node[@]}"
}

# node_enforce: once the node is Ready (kube-router reads its address from the Node), its
# NetworkPolicy enforcer; the node is up once its chains are in place.
node_enforce() {
  kt_wait_for "node ${name} Ready" 120 kubectl wait --for=condition=Ready "node/${name}" --timeout=5s
  kt_start "${name}/kube-router" "${in_node[@]}" kube-router \
    --kubeconfig "${KT_PKI}/kube-router.kubeconfig" \
    --hostname-override "${name}" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --enable-pod-egress=false \
    --service-cluster-ip-range "${KT_SERVICE_CIDR}" --health-port 0 --metrics-port 0
  kt_wait_for "kube-router's chains on ${name}" 60 ip netns exec "${netns}" iptables -S KUBE-ROUTER-FORWARD
}

# node_pids: every process in the node's cgroups: its pods'.
node_pids() {
  find /sys/fs/cgroup/*/"${netns}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true
}

# node_kill [now]: the node's processes, the kubelet first so that it restarts nothing;
# with `now`, all at once by SIGKILL, as a power cut does.
node_kill() {
  local now=${1:-} c pids proc cmd
  for c in kubelet kube-router kube-proxy; do kt_stop "${name}/${c}" ${now:+"${now}"}; done
  for _ in $(seq 50); do
    pids="$(node_pids)"
    [[ -z ${pids} ]] && break
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null || true
    sleep 0.2
  done
  if [[ -z ${now} ]] && kt_containerd_up "${k}"; then
    for c in $(kt_node_ctr "${k}" tasks ls -q 2>/dev/null); do kt_node_ctr "${k}" tasks rm -f "${c}" >/dev/null 2>&1 || true; done
    for c in $(kt_node_ctr "${k}" containers ls -q 2>/dev/null); do kt_node_ctr "${k}" containers rm "${c}" >/dev/null 2>&1 || true; done
  fi
  # Its shims, known by its containerd's socket on their command lines.
  for proc in /proc/[0-9]*; do
    cmd="$({ tr '\0' ' ' <"${proc}/cmdline"; } 2>/dev/null)" || continue
    if [[ ${cmd} == *containerd-shim*" -address ${sock} "* ]]; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  kt_stop "${name}/containerd" ${now:+"${now}"}
}

# node_unmount DIR...: what the kubelet and containerd mounted under DIRs (volumes, rootfs,
# netns), deepest first.
node_unmount() {
  local dir m
  for dir in "$@"; do
    { findmnt -rn -o TARGET | grep -F "${dir}/" || true; } | sort -r | while read -r m; do
      [[ ${m} == "${dir}"/* ]] || continue
      umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
    done
  done
}

# node_remove: everything of the node but the images in its containerd's root.
node_remove() {
  node_kill
  node_unmount "${state}" "${run}"
  local d
  for d in /sys/fs/cgroup/*/"${netns}"; do
    [[ -d ${d} ]] && find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # With the namespace go its interfaces: eth0 (and so the veth pair), its bridge, the
  # pods' veths left by killed sandboxes, its iptables rules and ipsets.
  [[ -e /run/netns/${netns} ]] && ip netns delete "${netns}"
  ip link show "${veth}" >/dev/null 2>&1 && ip link delete "${veth}"
  ip route del "${cidr}" 2>/dev/null || true
  # Its kubelet's links to its pods' logs, in the /var/log/containers every kubelet shares.
  find /var/log/containers -maxdepth 1 -type l -lname "${state}/pod-logs/*" -delete 2>/dev/null || true
  rm -rf --one-file-system "${run}" "${cfg}" "${state}/kubelet" "${state}/cni" "${state}/pod-logs"
}

# node_arg NODE: K for a further node of the running cluster, else die.
node_arg() {
  local k
  k="$(kt_node_index "$1" 2>/dev/null || echo "$1")"
  [[ ${k} =~ ^[0-9]+$ ]] || die "no node $1"
  ((k >= 2)) || die "$(kt_node_name 1) is this machine itself, with the control plane; stop, start, cut, isolate and heal are for the nodes NODES=2 or more adds"
  ((k <= $(kt_node_count))) || die "the cluster has $(kt_node_count) node(s); no $(kt_node_name "${k}")"
  echo "${k}"
}

# What `isolate` drops: traffic to and from the API server, and nothing else. Both ways: a
# watch already open would otherwise still bring the API server's news in (a pod's deletion,
# say), which a partition does not.
to_api=(-d "${KT_NODE_IP}" -p tcp --dport "${KT_API_PORT}" -m comment --comment kubetrain-isolate -j DROP)
from_api=(-s "${KT_NODE_IP}" -p tcp --sport "${KT_API_PORT}" -m comment --comment kubetrain-isolate -j DROP)

(($# >= 1)) || usage
cmd=$1
shift
case ${cmd} in
  add | remove)
    [[ -n ${KT_LOCKED:-} ]] || die "${cmd} is up.sh's and down.sh's (make cluster NODES=N, make cluster-down)"
    ;;
  stop | start | cut | isolate | heal)
    (($# == 1)) || usage
    kt_lock
    k="$(node_arg "$1")" # an assignment, so that its die stops this script too
    set -- "${k}"
    ;;
  *) usage ;;
esac

case ${cmd} in
  add)
    "${KT_CLUSTER_SRC}/pki.sh" "${@: -1}" # its last node: up.sh adds them in order
    # Every node first booted, then each waited for: they start side by side.
    for k in "$@"; do
      node_vars "${k}"
      log "adding node ${name} (${ip}, pods ${cidr})"
      node_network
      node_cgroups
      node_config
      node_boot
    done
    for k in "$@"; do
      node_vars "${k}"
      node_enforce
    done
    ;;
  remove)
    for k in "$@"; do
      node_vars "${k}"
      ${KT_QUIET:-false} || log "removing node ${name}"
      node_remove
    done
    ;;
  stop)
    node_vars "$1"
    log "stopping ${name} as a power cut would"
    node_kill now
    log "${name} is off; the control plane marks it NotReady within about 50 s"
    ;;
  start)
    node_vars "$1"
    if [[ -n "$(node_pids)" ]] || kt_running "$(cat "${run}/kubelet.pid" 2>/dev/null || echo 0)"; then
      die "${name} is running; node.sh stop ${name} first"
    fi
    log "starting ${name} again"
    # A reboot: whatever was in its /run and tmpfs mounts is gone; its disk (images,
    # containers' records, the kubelet's directory) is not.
    node_unmount "${state}/kubelet" "${run}"
    rm -rf --one-file-system "${run}"
    mkdir -p "${run}"
    node_cgroups
    node_boot
    node_enforce
    log "${name} is Ready"
    ;;
  cut)
    node_vars "$1"
    ip link set "${veth}" down
    log "${name} cut off (${veth} down); its processes keep running"
    ;;
  isolate)
    node_vars "$1"
    # Its kubelet, kube-proxy and kube-router (OUTPUT, INPUT); its pods, through Services too.
    for rule in "OUTPUT to_api" "INPUT from_api" "FORWARD to_api" "FORWARD from_api"; do
      # shellcheck disable=SC2086 # a chain and the name of its match
      set -- ${rule}
      declare -n match=$2
      ip netns exec "${netns}" iptables -I "$1" "${match[@]}"
    done
    log "${name} cut off from the API server; its pods still reach storage and the other nodes"
    ;;
  heal)
    node_vars "$1"
    for rule in "OUTPUT to_api" "INPUT from_api" "FORWARD to_api" "FORWARD from_api"; do
      # shellcheck disable=SC2086 # a chain and the name of its match
      set -- ${rule}
      declare -n match=$2
      while ip netns exec "${netns}" iptables -D "$1" "${match[@]}" 2>/dev/null; do :; done
    done
    ip link set "${veth}" up
    log "${name} reconnected (${veth} up, the API server reachable)"
    ;;
esac
