#!/usr/bin/env bash
# Prints a kubeconfig for the development cluster.
#   kubeconfig.sh USER [GROUP...]   mint a client certificate for USER in the
#                                   given groups (RBAC decides what it may do)
#   kubeconfig.sh --cert NAME       use the existing pki/NAME.{crt,key}
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 USER [GROUP...] | --cert NAME" >&2; exit 2; }
(( $# )) || usage
[[ -f "${KT_PKI}/ca.key" ]] || die "no cluster PKI in ${KT_PKI}; run make cluster first"

if [[ $1 == --cert ]]; then
  (( $# == 2 )) || usage
  crt="${KT_PKI}/$2.crt" key="${KT_PKI}/$2.key" user="$2"
else
  user=$1; shift
  subject=""
  for g in "$@"; do subject+="/O=${g}"; done
  subject+="/CN=${user}"
  tmp="$(mktemp -d)"; trap 'rm -rf "${tmp}"' EXIT
  crt="${tmp}/user.crt" key="${tmp}/user.key"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "${key}" -subj "${subject}" 2>/dev/null |
    openssl x509 -req -CA "${KT_PKI}/ca.crt" -CAkey "${KT_PKI}/ca.key" -CAcreateserial \
      -days 365 -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "${crt}" 2>/dev/null
fi

b64() { base64 -w0 < "$1"; }
cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kubetrain-dev
  cluster:
    server: https://${KT_NODE_IP}:${KT_API_PORT}
    certificate-authority-data: $(b64 "${KT_PKI}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(b64 "${crt}")
    client-key-data: $(b64 "${key}")
contexts:
- name: ${user}@kubetrain-dev
  context:
    cluster: kubetrain-dev
    user: ${user}
current-context: ${user}@kubetrain-dev
KUBECONFIG
