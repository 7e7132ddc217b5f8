#!/usr/bin/env bash
# Reports which cluster processes run and whether the API server is ready.
# With --quiet, prints nothing and exits 0 only if all of it is up, on every node.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quiet=false
[[ ${1:-} == --quiet ]] && quiet=true
export PATH="${KT_BIN}:${PATH}"

# Each further node's own processes (node.sh), NODE/COMPONENT, after the first node's.
components=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns local-path-provisioner kube-router versitygw metrics-server)
nodes="$(kt_node_count)"
for ((k = 2; k <= nodes; k++)); do
  for c in containerd kubelet kube-proxy kube-router; do components+=("$(kt_node_name "${k}")/${c}"); done
done

ok=true
$quiet || echo "nodes: ${nodes}"
for c in "${components[@]}"; do
  pid="$(cat "${KT_RUN}/${c}.pid" 2>/dev/null || true)"
  if [[ -n ${pid} ]] && kill -0 "${pid}" 2>/dev/null; then
    $quiet || printf '%-30s running (pid %s)\n' "${c}" "${pid}"
  else
    $quiet || printf '%-30s stopped\n' "${c}"
    ok=false
  fi
done
if $ok && KUBECONFIG="${KT_PKI}/admin.kubeconfig" kubectl get --raw /readyz >/dev/null 2>&1; then
  if ! $quiet; then
    echo "api server ready: export KUBECONFIG=${KT_PKI}/admin.kubeconfig"
    KUBECONFIG="${KT_PKI}/admin.kubeconfig" kubectl get nodes -o wide
  fi
else
  ok=false
fi
$ok
