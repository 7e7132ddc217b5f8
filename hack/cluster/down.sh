#!/usr/bin/env bash
# Stops everything up.sh started, by the PIDs it recorded, then the pods'
# processes and containerd shims, and undoes mounts, cgroups, iptables rules
# and the bridges; further nodes (NODES=3) go first, with their network
# namespaces. Images and local-path volume data stay for the next start.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quiet=false
[[ ${1:-} == --quiet ]] && quiet=true
say() { $quiet || log "$@"; }
export PATH="${KT_BIN}:${PATH}"
[[ -n ${KT_LOCKED:-} ]] || kt_lock

export KT_QUIET=${quiet}
stop() { kt_stop "$1"; }

# The further nodes (node.sh) first: whatever of them there is, even of a cluster that
# crashed or of one that was started with more nodes.
nodes="$({
  ls -d "${KT_RUN}/${KT_NODE_NAME}"-* /run/netns/kt-node-* /sys/fs/cgroup/*/kt-node-* 2>/dev/null
  ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^kt-v[0-9]+$'
} | grep -oE '[0-9]+$' | sort -un || true)"
if [[ -n ${nodes} ]]; then
  # shellcheck disable=SC2086
  KT_LOCKED=1 "${KT_CLUSTER_SRC}/node.sh" remove ${nodes}
  # `ip netns add` made /run/netns a mount point; once no namespace is left in it (podman
  # keeps its own there too), it goes. A namespace still mounted in it makes umount fail.
  if [[ -z "$(ls -A /run/netns 2>/dev/null)" ]] && findmnt -rn /run/netns >/dev/null; then
    umount /run/netns 2>/dev/null || true
  fi
fi

# The kubelet first, so nothing restarts the pods we are about to kill.
for c in kubelet kube-router local-path-provisioner coredns versitygw metrics-server kube-proxy \
  kube-scheduler kube-controller-manager; do
  stop "${c}"
done

# Every pod process lives in the kubelet's kubepods cgroups: kill them by PID.
pod_pids() { cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
  /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs 2>/dev/null | sort -u || true; }
for _ in $(seq 50); do
  pids="$(pod_pids)"
  [[ -z ${pids} ]] && break
  # shellcheck disable=SC2086
  kill -KILL ${pids} 2>/dev/null || true
  sleep 0.2
done

if kt_containerd_up; then
  for t in $(kt_ctr tasks ls -q 2>/dev/null); do kt_ctr tasks rm -f "${t}" >/dev/null 2>&1 || true; done
  for c in $(kt_ctr containers ls -q 2>/dev/null); do kt_ctr containers rm "${c}" >/dev/null 2>&1 || true; done
fi
# Shims outlive containerd by design (and survive its crash); each names our
# containerd's socket on its command line, which tells them from anyone else's.
for proc in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' <"${proc}/cmdline" 2>/dev/null)" || continue
  # tr turned every NUL into a space, the one after the last argument too.
  if [[ ${cmd} == *containerd-shim*" -address ${KT_CONTAINERD_SOCK} "* ]]; then
    say "stopping containerd shim ${proc#/proc/}"
    kill -KILL "${proc#/proc/}" 2>/dev/null || true
  fi
done
stop containerd

for c in kube-apiserver etcd; do
  stop "${c}"
done
# Anything else up.sh recorded (a component added to up.sh and not to the lists above): a
# process left behind would hold its port against the next start.
for pidfile in "${KT_RUN}"/*.pid; do
  [[ -f ${pidfile} ]] || continue
  name="${pidfile##*/}"
  stop "${name%.pid}"
done

# The KUBE-* chains kube-proxy and the kubelet made, in every table.
remove_kube_chains() {
  local ipt=$1 table rule chain
  command -v "${ipt}" >/dev/null || return 0
  for table in filter nat mangle; do
    { "${ipt}-save" -t "${table}" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } |
      sed 's/^-A /-D /' | while read -r rule; do eval "${ipt} -t ${table} ${rule}" 2>/dev/null || true; done
    for chain in $("${ipt}-save" -t "${table}" 2>/dev/null | grep -oE '^:KUBE-[A-Za-z0-9-]+' | tr -d : || true); do
      "${ipt}" -t "${table}" -F "${chain}" 2>/dev/null || true
    done
    for chain in $("${ipt}-save" -t "${table}" 2>/dev/null | grep -oE '^:KUBE-[A-Za-z0-9-]+' | tr -d : || true); do
      "${ipt}" -t "${table}" -X "${chain}" 2>/dev/null || true
    done
  done
}
remove_kube_chains iptables
remove_kube_chains ip6tables
# kube-router's ipsets, once no rule refers to them.
if command -v ipset >/dev/null; then
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router-)' || true); do
    ipset destroy "${set}" 2>/dev/null || true
  done
fi
if iptables -t mangle -C FORWARD -j KUBETRAIN-ISOLATE 2>/dev/null; then
  iptables -t mangle -D FORWARD -j KUBETRAIN-ISOLATE
fi
iptables -t mangle -F KUBETRAIN-ISOLATE 2>/dev/null && iptables -t mangle -X KUBETRAIN-ISOLATE 2>/dev/null || true

# Mounts left by the kubelet (volumes) and containerd (rootfs, shm, netns).
{ findmnt -rn -o TARGET | grep -E "^(${KT_STATE}|${KT_RUN})/" || true; } | sort -r | while read -r m; do
  umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
done

for d in /sys/fs/cgroup/*/kubepods; do
  [[ -d ${d} ]] && find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

for bridge in "${KT_BRIDGE}" "${KT_NODES_BRIDGE}"; do
  if ip link show "${bridge}" >/dev/null 2>&1; then
    ip link delete "${bridge}"
  fi
done
if ! findmnt -rn -o TARGET | grep -q "^${KT_RUN}/"; then
  rm -rf --one-file-system "${KT_RUN}"
fi
say "cluster stopped"
