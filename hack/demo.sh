#!/usr/bin/env bash
# From nothing to a served prediction on the local cluster, in one command (`make demo`):
# the images, the cluster, the chart, examples/mnist.yaml trained and promoted, and a
# prediction of examples/digit-7.json through the serving Service. Safe to run again: what
# exists is reused, and a job that was already promoted is only asked for its prediction.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAMESPACE="${NAMESPACE:-kubetrain}"
JOB=mnist
SERVING=mnist-serving
TIMEOUT="${TIMEOUT:-1800}"

step() { printf '\n==> %s\n' "$*"; }

# The images before the cluster, so that it starts with the fresh ones (a running cluster
# gets them from `make images` itself).
step "images"
make --no-print-directory images
step "cluster"
eval "$(make --no-print-directory cluster | tail -n 1)"   # export KUBECONFIG=...
step "tools (helm, kubectl)"
eval "$(hack/tools/install.sh | grep '^KUBETRAIN_TOOLS_BIN=')"
export PATH="${KUBETRAIN_TOOLS_BIN}:${PATH}"

step "helm upgrade --install kubetrain charts/kubetrain -n ${NAMESPACE}"
helm upgrade --install kubetrain charts/kubetrain -n "${NAMESPACE}" --create-namespace
kubectl -n "${NAMESPACE}" rollout status deployment/kubetrain --timeout=300s

step "kubectl apply -f examples/mnist.yaml"
kubectl -n "${NAMESPACE}" apply -f examples/mnist.yaml
deadline=$((SECONDS + TIMEOUT))
phase=""
while :; do
  phase="$(kubectl -n "${NAMESPACE}" get trainingjob "${JOB}" -o 'jsonpath={.status.phase}')"
  kubectl -n "${NAMESPACE}" get trainingjob "${JOB}" --no-headers
  case "${phase}" in
    Promoted) break ;;
    Failed)
      kubectl -n "${NAMESPACE}" get trainingjob "${JOB}" -o 'jsonpath={.status.conditions}'; echo
      echo "the job failed: kubectl -n ${NAMESPACE} describe trainingjob ${JOB}" >&2
      exit 1 ;;
  esac
  if ((SECONDS > deadline)); then
    echo "the job is still ${phase:-Pending} after ${TIMEOUT}s:" \
      "kubectl -n ${NAMESPACE} describe trainingjob ${JOB}" >&2
    exit 1
  fi
  sleep 10
done
kubectl -n "${NAMESPACE}" rollout status "deployment/${SERVING}" --timeout=300s

step "predict examples/digit-7.json through the ${SERVING} Service"
ip="$(kubectl -n "${NAMESPACE}" get service "${SERVING}" -o 'jsonpath={.spec.clusterIP}')"
url="http://${ip}:8501/v1/models/${JOB}:predict"
echo "curl -s -X POST ${url} -d @examples/digit-7.json"
answer="$(curl -sS --max-time 30 -X POST "${url}" -d @examples/digit-7.json)"
python3 - "${answer}" <<'PY'
import json, sys
(probabilities,) = json.loads(sys.argv[1])["predictions"]
digit = max(range(10), key=probabilities.__getitem__)
print(f"the served model reads a {digit} (p={probabilities[digit]:.3f})")
PY
echo
echo "export KUBECONFIG=${KUBECONFIG}"
echo "export PATH=${KUBETRAIN_TOOLS_BIN}:\$PATH"
