#!/usr/bin/env bash
# Builds the cluster's binaries from the Go module proxy into the cache and
# links them into ${KT_BIN}. With unchanged inputs it builds nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The machine is shared: stay polite with CPU.
gobuild() { nice -n 10 go build -p 2 -trimpath "$@"; }

src="${KT_CLUSTER_SRC}"

k8s="${KT_CACHE}/bin/kubernetes-${KUBE_VERSION}-$(kt_hash "${src}/go.mod" "${src}/go.sum" "${src}"/cmd/kubetrain-k8s/*.go)"
if [[ ! -x "${k8s}/kubetrain-k8s" ]]; then
  log "building Kubernetes ${KUBE_VERSION} (cold: 10 to 20 min on 2 cores)"
  mkdir -p "${k8s}"
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "${src}" && gobuild -ldflags "${ldflags}" -o "${k8s}/kubetrain-k8s.tmp" ./cmd/kubetrain-k8s)
  mv "${k8s}/kubetrain-k8s.tmp" "${k8s}/kubetrain-k8s"
fi

dns="${KT_CACHE}/bin/coredns-$(kt_hash "${src}"/coredns/*)"
if [[ ! -x "${dns}/coredns" ]]; then
  log "building CoreDNS"
  mkdir -p "${dns}"
  (cd "${src}/coredns" && gobuild -ldflags "-s -w" -o "${dns}/coredns.tmp" .)
  mv "${dns}/coredns.tmp" "${dns}/coredns"
fi

lpp="${KT_CACHE}/bin/local-path-provisioner-$(kt_hash "${src}"/localpath/*)"
if [[ ! -x "${lpp}/local-path-provisioner" ]]; then
  log "building local-path-provisioner"
  mkdir -p "${lpp}"
  (cd "${src}/localpath" && gobuild -ldflags "-s -w" -o "${lpp}/local-path-provisioner.tmp" github.com/rancher/local-path-provisioner)
  mv "${lpp}/local-path-provisioner.tmp" "${lpp}/local-path-provisioner"
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
  ln -sfn "${k8s}/kubetrain-k8s" "${KT_BIN}/${c}"
done
ln -sfn "${dns}/coredns" "${KT_BIN}/coredns"
ln -sfn "${lpp}/local-path-provisioner" "${KT_BIN}/local-path-provisioner"
ln -sfn "${pause}/pause" "${KT_BIN}/pause"
