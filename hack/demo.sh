#!/usr/bin/env bash
# From nothing to a served prediction on the local cluster, in one command (`make demo`):
# the images, the cluster, the chart, examples/mnist.yaml trained and promoted, and a
# prediction of examples/digit-7.json through the serving Service. Safe to run again: what
# exists is reused, and a job that was already promoted is only asked for its prediction.
# STORAGE=s3 keeps the job's checkpoints and models in the cluster's S3 store instead of the
# chart's claim (examples/mnist-s3.yaml, with the Secret it names), in its own namespace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STORAGE="${STORAGE:-claim}"
case "${STORAGE}" in
  claim) EXAMPLE=examples/mnist.yaml; JOB_NAMESPACE="${NAMESPACE:-kubetrain}" ;;
  s3) EXAMPLE=examples/mnist-s3.yaml; JOB_NAMESPACE="${NAMESPACE:-kubetrain-s3}" ;;
  *) echo "STORAGE must be claim or s3, not ${STORAGE}" >&2; exit 2 ;;
esac
# Written by `make cluster`: the S3 server's endpoint, region, bucket and keys.
S3_CREDENTIALS="${KUBETRAIN_STATE:-/var/lib/kubetrain}/s3/credentials.env"
JOB=mnist
# The operator (one release: two would act on the same jobs); the job may run elsewhere.
RELEASE_NAMESPACE=kubetrain
SERVING=mnist-serving
TIMEOUT="${TIMEOUT:-1800}"

step() { printf '\n==> %s\n' "$*"; }

# The images before the cluster, so that it starts with the fresh ones (a running cluster
# gets them from `make images` itself).
step "images"
make --no-print-directory images
step "cluster"
# An assignment, not `eval "$(...)"`: a failed start must stop the demo here (pipefail).
cluster_env="$(make --no-print-directory cluster | tail -n 1)"
eval "${cluster_env}"   # export KUBECONFIG=...
step "tools (helm, kubectl)"
eval "$(hack/tools/install.sh | grep '^KUBETRAIN_TOOLS_BIN=')"
export PATH="${KUBETRAIN_TOOLS_BIN}:${PATH}"

step "helm upgrade --install kubetrain charts/kubetrain -n ${RELEASE_NAMESPACE}"
helm upgrade --install kubetrain charts/kubetrain -n "${RELEASE_NAMESPACE}" --create-namespace
kubectl -n "${RELEASE_NAMESPACE}" rollout status deployment/kubetrain --timeout=300s

kubectl create namespace "${JOB_NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f -
if [[ "${STORAGE}" == s3 ]]; then
  step "the Secret s3-credentials that ${EXAMPLE} names, from ${S3_CREDENTIALS}"
  kubectl -n "${JOB_NAMESPACE}" create secret generic s3-credentials \
    --from-env-file="${S3_CREDENTIALS}" --dry-run=client -o yaml | kubectl apply -f -
fi

step "kubectl apply -f ${EXAMPLE}"
kubectl -n "${JOB_NAMESPACE}" apply -f "${EXAMPLE}"
deadline=$((SECONDS + TIMEOUT))
phase=""
while :; do
  phase="$(kubectl -n "${JOB_NAMESPACE}" get trainingjob "${JOB}" -o 'jsonpath={.status.phase}')"
  kubectl -n "${JOB_NAMESPACE}" get trainingjob "${JOB}" --no-headers
  case "${phase}" in
    Promoted) break ;;
    Failed)
      kubectl -n "${JOB_NAMESPACE}" get trainingjob "${JOB}" -o 'jsonpath={.status.conditions}'; echo
      echo "the job failed: kubectl -n ${JOB_NAMESPACE} describe trainingjob ${JOB}" >&2
      exit 1 ;;
  esac
  if ((SECONDS > deadline)); then
    echo "the job is still ${phase:-Pending} after ${TIMEOUT}s:" \
      "kubectl -n ${JOB_NAMESPACE} describe trainingjob ${JOB}" >&2
    exit 1
  fi
  sleep 10
done
kubectl -n "${JOB_NAMESPACE}" rollout status "deployment/${SERVING}" --timeout=300s

step "predict examples/digit-7.json through the ${SERVING} Service"
ip="$(kubectl -n "${JOB_NAMESPACE}" get service "${SERVING}" -o 'jsonpath={.spec.clusterIP}')"
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
