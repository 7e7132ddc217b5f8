#!/usr/bin/env bash
# Starts the development cluster (building what is missing first) and prints,
# as its last line, the `export KUBECONFIG=...` to use it. Reuses a cluster that
# is already up. Each component is its own process; PIDs go to ${KT_RUN}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ ${EUID} -eq 0 ]] || die "must run as root (it runs a kubelet and containerd)"
KUBECONFIG_OUT="${KT_PKI}/admin.kubeconfig"
kt_lock

"${KT_CLUSTER_SRC}/deps.sh"
"${KT_CLUSTER_SRC}/build.sh"
"${KT_ROOT}/hack/s3/build.sh"
export PATH="${KT_BIN}:${PATH}"

# How many nodes (`make cluster NODES=3`): each past the first is a kubelet with its own
# containerd in its own network namespace (node.sh). Unset: as many as the cluster that runs
# (or crashed) has, else one.
want="${KUBETRAIN_CLUSTER_NODES:-}"
[[ -z ${want} || ${want} =~ ^[1-${KT_NODES_MAX}]$ ]] ||
  die "NODES (KUBETRAIN_CLUSTER_NODES) must be 1 to ${KT_NODES_MAX}, not ${want}"
have="$(kt_node_count)"
if "${KT_CLUSTER_SRC}/status.sh" --quiet; then
  if [[ -z ${want} || ${want} == "${have}" ]]; then
    log "cluster already running (${have} node(s))"
    echo "export KUBECONFIG=${KUBECONFIG_OUT}"
    exit 0
  fi
  if ((want > have)); then
    # More nodes join the running cluster; fewer means a fresh one (below).
    echo "${want}" >"${KT_NODES_FILE}"
    # shellcheck disable=SC2046
    KT_LOCKED=1 "${KT_CLUSTER_SRC}/node.sh" add $(seq $((have + 1)) "${want}")
    log "cluster up with ${want} nodes"
    echo "export KUBECONFIG=${KUBECONFIG_OUT}"
    exit 0
  fi
  log "the running cluster has ${have} nodes: starting a fresh one with ${want}"
fi
nodes="${want:-${have}}"
# Leftovers of a crashed or half-started cluster (we hold the lock already).
KT_LOCKED=1 "${KT_CLUSTER_SRC}/down.sh" --quiet

"${KT_CLUSTER_SRC}/pki.sh" "${nodes}"
mkdir -p "${KT_RUN}" "${KT_LOGS}" "${KT_STATE}/local-path"
rm -f "${KT_LOGS}"/*.log
echo "${nodes}" >"${KT_NODES_FILE}"
# Every start is a fresh cluster; only images and volumes' data are kept.
rm -rf --one-file-system "${KT_STATE}/etcd" "${KT_STATE}/kubelet" "${KT_STATE}/cni" "${KT_STATE}/config"
mkdir -p "${KT_STATE}/config" "${KT_STATE}/cni/net.d"
cfg="${KT_STATE}/config"
pki="${KT_PKI}"

# --- network: a bridge with no uplink -----------------------------------------
if ! ip link show "${KT_BRIDGE}" >/dev/null 2>&1; then
  ip link add "${KT_BRIDGE}" type bridge
fi
ip addr replace "${KT_NODE_IP}/${KT_POD_CIDR#*/}" dev "${KT_BRIDGE}"
ip link set "${KT_BRIDGE}" up
# Service addresses are routed into the bridge, never out of the machine: until kube-proxy
# has a Service's rules, a connection to its address must fail here. Through the default
# route it reached whatever answers upstream (a 404 to the API server's check of the metrics
# APIService, on a keep-alive connection it kept reusing after kube-proxy's rules arrived).
ip route replace "${KT_SERVICE_CIDR}" dev "${KT_BRIDGE}"
# Pod-to-service traffic is DNATed on the bridge and routed back into it, so
# the node forwards; br_netfilter lets kube-proxy's rules see bridged packets.
modprobe -q br_netfilter 2>/dev/null || true # built in on some kernels
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
# Nothing forwarded between the bridges and any other interface (lib.sh).
kt_isolate

kt_cni_config "${KT_STATE}/cni/ipam" "${KT_POD_CIDR}" "${KT_NODE_IP}" \
  >"${KT_STATE}/cni/net.d/10-kubetrain.conflist"

# --- containerd -----------------------------------------------------------------
kt_containerd_config "${KT_STATE}/containerd" "${KT_RUN}/containerd" "${KT_CONTAINERD_SOCK}" \
  "${KT_STATE}/cni/net.d" >"${cfg}/containerd.toml"
# A pull would be the only way for the node to reach out: send any attempt to
# a closed local port so it fails at once and goes nowhere.
kt_start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
  containerd --config "${cfg}/containerd.toml"
kt_wait_for containerd 30 kt_ctr version
"${KT_ROOT}/hack/images/system-images.sh"

# --- control plane --------------------------------------------------------------
kt_start etcd etcd --name kubetrain-dev --data-dir "${KT_STATE}/etcd" \
  --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
  --listen-peer-urls https://127.0.0.1:2380 --initial-advertise-peer-urls https://127.0.0.1:2380 \
  --initial-cluster kubetrain-dev=https://127.0.0.1:2380 \
  --cert-file "${pki}/etcd.crt" --key-file "${pki}/etcd.key" --trusted-ca-file "${pki}/ca.crt" --client-cert-auth \
  --peer-cert-file "${pki}/etcd.crt" --peer-key-file "${pki}/etcd.key" --peer-trusted-ca-file "${pki}/ca.crt" --peer-client-cert-auth \
  --listen-metrics-urls http://127.0.0.1:2381 --unsafe-no-fsync --log-level warn
kt_wait_for etcd 30 curl -fsS --cacert "${pki}/ca.crt" --cert "${pki}/apiserver-etcd-client.crt" \
  --key "${pki}/apiserver-etcd-client.key" https://127.0.0.1:2379/health

kt_start kube-apiserver kube-apiserver \
  --bind-address "${KT_NODE_IP}" --advertise-address "${KT_NODE_IP}" --secure-port "${KT_API_PORT}" \
  --etcd-servers https://127.0.0.1:2379 --etcd-cafile "${pki}/ca.crt" \
  --etcd-certfile "${pki}/apiserver-etcd-client.crt" --etcd-keyfile "${pki}/apiserver-etcd-client.key" \
  --tls-cert-file "${pki}/apiserver.crt" --tls-private-key-file "${pki}/apiserver.key" \
  --client-ca-file "${pki}/ca.crt" \
  --requestheader-client-ca-file "${pki}/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "${pki}/front-proxy-client.crt" --proxy-client-key-file "${pki}/front-proxy-client.key" \
  --kubelet-client-certificate "${pki}/apiserver-kubelet-client.crt" \
  --kubelet-client-key "${pki}/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "${pki}/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "${pki}/sa.pub" --service-account-signing-key-file "${pki}/sa.key" \
  --service-cluster-ip-range "${KT_SERVICE_CIDR}" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged --profiling=false
export KUBECONFIG="${KUBECONFIG_OUT}"
kt_wait_for kube-apiserver 90 kubectl get --raw /readyz

# Controllers run with their own identities; the admin kubeconfig is for us.
kt_start kube-controller-manager kube-controller-manager \
  --kubeconfig "${pki}/controller-manager.kubeconfig" \
  --authentication-kubeconfig "${pki}/controller-manager.kubeconfig" \
  --authorization-kubeconfig "${pki}/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --root-ca-file "${pki}/ca.crt" --service-account-private-key-file "${pki}/sa.key" \
  --cluster-signing-cert-file "${pki}/ca.crt" --cluster-signing-key-file "${pki}/ca.key" \
  --service-cluster-ip-range "${KT_SERVICE_CIDR}" --profiling=false \
  --node-monitor-grace-period "${KT_NODE_MONITOR_GRACE}"
kt_start kube-scheduler kube-scheduler \
  --kubeconfig "${pki}/scheduler.kubeconfig" \
  --authentication-kubeconfig "${pki}/scheduler.kubeconfig" \
  --authorization-kubeconfig "${pki}/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

sed -e "s#@STATE@#${KT_STATE}#g" -e "s#@BUSYBOX_IMAGE@#${KT_BUSYBOX_IMAGE}#g" \
  -e "s#@NODE_IP@#${KT_NODE_IP}#g" -e "s#@METRICS_PORT@#${KT_METRICS_PORT}#g" \
  -e "s#@CA_BUNDLE@#$(base64 -w0 "${pki}/ca.crt")#g" \
  "${KT_CLUSTER_SRC}/manifests/addons.yaml" | kubectl apply -f - >/dev/null

# --- node -----------------------------------------------------------------------
# Pods get cluster DNS only, never the host's resolvers.
: >"${cfg}/resolv.conf"
cat >"${cfg}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${KT_NODE_IP}
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${pki}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${pki}/kubelet.crt
tlsPrivateKeyFile: ${pki}/kubelet.key
containerRuntimeEndpoint: unix://${KT_CONTAINERD_SOCK}
cgroupDriver: cgroupfs
failCgroupV1: false
clusterDNS: [${KT_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ${cfg}/resolv.conf
podCIDR: ${KT_POD_CIDR}
failSwapOn: false
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
YAML
kt_start kubelet kubelet --config "${cfg}/kubelet.yaml" --kubeconfig "${pki}/kubelet.kubeconfig" \
  --root-dir "${KT_STATE}/kubelet" --hostname-override "${KT_NODE_NAME}" --node-ip "${KT_NODE_IP}"

cat >"${cfg}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${pki}/kube-proxy.kubeconfig}
hostnameOverride: ${KT_NODE_NAME}
mode: iptables
oomScoreAdj: 0
clusterCIDR: ${KT_POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [${KT_POD_CIDR}]
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
YAML
kt_start_proxy kube-proxy "${cfg}/kube-proxy.yaml"

cat >"${cfg}/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${KT_DNS_IP}
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${pki}/coredns.kubeconfig
        pods insecure
        ttl 5
    }
    cache 5
}
COREFILE
kt_start coredns coredns -conf "${cfg}/Corefile"

# S3 (versitygw over a directory): the store jobs with `spec.storage.uri` use here. The root
# credentials are made once and kept with the data; the bucket is a directory under it.
mkdir -p "${KT_S3_STATE}/data/${KT_S3_BUCKET}"
if [[ ! -f ${KT_S3_CREDENTIALS} ]]; then
  (
    umask 077
    cat >"${KT_S3_CREDENTIALS}.tmp" <<CREDENTIALS
AWS_ENDPOINT_URL=${KT_S3_ENDPOINT}
AWS_ACCESS_KEY_ID=KT$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
AWS_SECRET_ACCESS_KEY=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
AWS_REGION=us-east-1
KUBETRAIN_S3_BUCKET=${KT_S3_BUCKET}
CREDENTIALS
  )
  mv "${KT_S3_CREDENTIALS}.tmp" "${KT_S3_CREDENTIALS}"
fi
# The keys reach it through the environment, never a command line (which anyone can read).
(
  # shellcheck disable=SC1090
  . "${KT_S3_CREDENTIALS}"
  export ROOT_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID}" ROOT_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY}"
  kt_start versitygw "${KT_BIN}/versitygw" --port "${KT_NODE_IP}:${KT_S3_PORT}" --quiet \
    --health /healthz posix "${KT_S3_STATE}/data"
)

# The resource metrics API, for `kubectl top` and HorizontalPodAutoscalers on CPU: every
# node's kubelet scraped each 15 s (the shortest resolution it allows).
kt_start metrics-server metrics-server --secure-port "${KT_METRICS_PORT}" --bind-address "${KT_NODE_IP}" \
  --kubeconfig "${pki}/metrics-server.kubeconfig" \
  --authentication-kubeconfig "${pki}/metrics-server.kubeconfig" \
  --authorization-kubeconfig "${pki}/metrics-server.kubeconfig" \
  --tls-cert-file "${pki}/metrics-server.crt" --tls-private-key-file "${pki}/metrics-server.key" \
  --kubelet-certificate-authority "${pki}/ca.crt" --kubelet-preferred-address-types InternalIP \
  --metric-resolution 15s --profiling=false

kt_start local-path-provisioner local-path-provisioner \
  start --kubeconfig "${pki}/local-path-provisioner.kubeconfig" --helper-image "${KT_BUSYBOX_IMAGE}"

kt_wait_for "node Ready" 120 kubectl wait --for=condition=Ready "node/${KT_NODE_NAME}" --timeout=5s

# NetworkPolicy enforcement: kube-router's firewall only (routes and services are the
# bridge's and kube-proxy's). It reads its node's address, so it starts once the node is
# registered, and the cluster is up only once its filter chains are in place.
kt_start kube-router kube-router --kubeconfig "${pki}/kube-router.kubeconfig" \
  --hostname-override "${KT_NODE_NAME}" --run-firewall=true --run-router=false \
  --run-service-proxy=false --enable-cni=false --enable-pod-egress=false \
  --service-cluster-ip-range "${KT_SERVICE_CIDR}" --health-port 0 --metrics-port 0
kt_wait_for "kube-router's network policy chains" 60 iptables -S KUBE-ROUTER-FORWARD
kt_wait_for "default service account" 60 kubectl get serviceaccount default
kt_wait_for "CoreDNS" 60 curl -fsS http://127.0.0.1:18181/ready
kt_wait_for "the S3 server" 30 curl -fsS "${KT_S3_ENDPOINT}/healthz"
kt_wait_for "metrics-server" 90 kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=5s
if ((nodes > 1)); then
  # shellcheck disable=SC2046
  KT_LOCKED=1 "${KT_CLUSTER_SRC}/node.sh" add $(seq 2 "${nodes}")
fi
log "cluster up (${nodes} node(s)): kubectl from ${KT_BIN}"
echo "export KUBECONFIG=${KUBECONFIG_OUT}"
