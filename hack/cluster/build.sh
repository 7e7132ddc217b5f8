#!/usr/bin/env bash
# Builds the cluster's binaries from the Go module proxy into the cache and
# links them into ${KT_BIN}. With unchanged inputs it builds nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The machine is shared: stay polite with CPU.
gobuild() { nice -n 10 go build -p 2 -trimpath "$@"; }

src="${KT_CLUSTER_SRC}"

# One module, so that the three programs share one compiled copy of client-go and the
# rest of their common dependencies. local-path-provisioner is a second `go build`:
# it imports github.com/Sirupsen/logrus, which may not share a build with the
# lower-case github.com/sirupsen/logrus that the kubelet imports.
out="${KT_CACHE}/bin/cluster-${KUBE_VERSION}-$(kt_hash "${src}/go.mod" "${src}/go.sum" "${src}"/cmd/*/*.go)"
if [[ ! -x "${out}/local-path-provisioner" ]]; then
  log "building Kubernetes ${KUBE_VERSION}, CoreDNS and local-path-provisioner (cold: 15 to 30 min on 2 cores)"
  mkdir -p "${out}.tmp"
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "${src}" && gobuild -ldflags "${ldflags}" -o "${out}.tmp/" ./cmd/kubetrain-k8s ./cmd/coredns)
  (cd "${src}" && gobuild -ldflags "-s -w" -o "${out}.tmp/" github.com/rancher/local-path-provisioner)
  rm -rf "${out}"
  mv "${out}.tmp" "${out}"
fi

# kube-router's network policy controller enforces NetworkPolicy (iptables and ipset; the
# nftables-queue enforcers need a kernel feature these machines lack). Its own module: it
# builds against older Kubernetes libraries than the cluster's.
netpol_src="${src}/netpol"
netpol="${KT_CACHE}/bin/kube-router-${KUBE_ROUTER_VERSION}-$(kt_hash "${netpol_src}/go.mod" "${netpol_src}/go.sum")"
if [[ ! -x "${netpol}/kube-router" ]]; then
  log "building kube-router ${KUBE_ROUTER_VERSION} (cold: 5 to 10 min on 2 cores)"
  mkdir -p "${netpol}.tmp"
  (cd "${netpol_src}" && gobuild -ldflags "-s -w" -o "${netpol}.tmp/" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router)
  rm -rf "${netpol}"
  mv "${netpol}.tmp" "${netpol}"
fi

# metrics-server: the resource metrics API (kubectl top, HorizontalPodAutoscalers on CPU).
# Its own module, for the same reason as kube-router; go.mod is where its version is written.
metrics_src="${src}/metrics"
metrics_version="$(awk '$1 == "sigs.k8s.io/metrics-server" { print $2 }' "${metrics_src}/go.mod")"
metrics="${KT_CACHE}/bin/metrics-server-${metrics_version}-$(kt_hash "${metrics_src}/go.mod" "${metrics_src}/go.sum")"
if [[ ! -x "${metrics}/metrics-server" ]]; then
  log "building metrics-server ${metrics_version} (cold: 3 to 6 min on 2 cores)"
  mkdir -p "${metrics}.tmp"
  (cd "${metrics_src}" && gobuild -ldflags "-s -w" -o "${metrics}.tmp/" \
    sigs.k8s.io/metrics-server/cmd/metrics-server)
  rm -rf "${metrics}"
  mv "${metrics}.tmp" "${metrics}"
fi

pause_src="${KT_ROOT}/hack/images/pause/pause.c"
pause="${KT_CACHE}/bin/pause-$(kt_hash "${pause_src}")"
if [[ ! -x "${pause}/pause" ]]; then
  mkdir -p "${pause}"
  # Static, so its image holds nothing but this one file.
  cc -static -Os -s -o "${pause}/pause" "${pause_src}"
fi

mkdir -p "${KT_BIN}"
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubetrain-k8s; do
  ln -sfn "${out}/kubetrain-k8s" "${KT_BIN}/${c}"
done
ln -sfn "${out}/coredns" "${KT_BIN}/coredns"
ln -sfn "${out}/local-path-provisioner" "${KT_BIN}/local-path-provisioner"
ln -sfn "${netpol}/kube-router" "${KT_BIN}/kube-router"
ln -sfn "${metrics}/metrics-server" "${KT_BIN}/metrics-server"
ln -sfn "${pause}/pause" "${KT_BIN}/pause"
