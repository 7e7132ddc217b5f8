#!/usr/bin/env bash
# Creates the cluster CA, serving and client certificates, the service-account
# signing key and the kubeconfigs, once; later starts reuse them so a saved
# KUBECONFIG stays valid. `pki.sh N` adds the kubelet identities of nodes 2 to N.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "${KT_PKI}"
chmod 700 "${KT_PKI}"
cd "${KT_PKI}"

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout ca.key -out ca.crt -days 3650 -subj "/CN=kubetrain-dev-ca" 2>/dev/null
fi

# cert NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA,
# valid for both serving and client use.
cert() {
  local name=$1 subject=$2 san=${3:-}
  [[ -f "${name}.crt" ]] && return
  local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
  [[ -n "${san}" ]] && ext+=$'\n'"subjectAltName=${san}"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "${name}.key" -subj "${subject}" 2>/dev/null |
    openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile <(printf '%s\n' "${ext}") -out "${name}.crt" 2>/dev/null
}

cert etcd "/CN=etcd" "IP:127.0.0.1,DNS:localhost"
cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client"
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:${KT_NODE_IP},IP:${KT_KUBERNETES_SVC_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert kubelet "/O=system:nodes/CN=system:node:${KT_NODE_NAME}" "IP:${KT_NODE_IP},DNS:${KT_NODE_NAME}"
# Each further node's kubelet its own identity: NodeRestriction lets a kubelet change only
# its own Node and the pods bound to it.
nodes=()
for ((k = 2; k <= ${1:-1}; k++)); do
  name="$(kt_node_name "${k}")"
  cert "kubelet-${name}" "/O=system:nodes/CN=system:node:${name}" "IP:$(kt_node_ip "${k}"),DNS:${name}"
  nodes+=("kubelet-${name}")
done
cert admin "/O=system:masters/CN=kubetrain-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
cert coredns "/CN=kubetrain:coredns"
cert local-path-provisioner "/CN=kubetrain:local-path-provisioner"
cert kube-router "/CN=kubetrain:kube-router"
# metrics-server: a client of the API server and the kubelets, and the server of the
# metrics.k8s.io API the API server proxies to (at its Service's name, or this node's address).
cert metrics-server "/CN=kubetrain:metrics-server" \
  "DNS:metrics-server.kube-system.svc,IP:${KT_NODE_IP}"

# The aggregation layer's own CA: the API server proxies to extension API
# servers (metrics-server, say) as front-proxy-client.
if [[ ! -f front-proxy-ca.crt ]]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 -subj "/CN=kubetrain-dev-front-proxy-ca" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout front-proxy-client.key -subj "/CN=front-proxy-client" 2>/dev/null |
    openssl x509 -req -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -days 3650 \
      -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out front-proxy-client.crt 2>/dev/null
fi

if [[ ! -f sa.key ]]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi

for user in admin controller-manager scheduler kubelet kube-proxy coredns local-path-provisioner kube-router metrics-server "${nodes[@]}"; do
  "${KT_CLUSTER_SRC}/kubeconfig.sh" --cert "${user}" > "${user}.kubeconfig"
done
