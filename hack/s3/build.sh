#!/usr/bin/env bash
# Builds versitygw, the S3-compatible server the object-storage tests run against, from
# the Go module proxy into the cache and links it as ${KT_BIN}/versitygw. With an
# unchanged go.mod and go.sum it builds nothing.
set -euo pipefail
# Only lib.sh's cache layout, log and kt_hash are used here; sourcing it starts nothing.
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

src="${KT_ROOT}/hack/s3"
# go.mod is the one place the version is written.
version="$(awk '$1 == "github.com/versity/versitygw" { print $2 }' "${src}/go.mod")"
[[ -n ${version} ]] || die "github.com/versity/versitygw is not required in ${src}/go.mod"

out="${KT_CACHE}/bin/versitygw-${version}-$(kt_hash "${src}/go.mod" "${src}/go.sum")"
if [[ ! -x "${out}/versitygw" ]]; then
  log "building versitygw ${version} (cold: 2 to 5 min on 2 cores)"
  rm -rf "${out}.tmp"
  mkdir -p "${out}.tmp"
  # The machine is shared: stay polite with CPU.
  (cd "${src}" && nice -n 10 go build -p 2 -trimpath \
    -ldflags "-s -w -X main.Version=${version}" \
    -o "${out}.tmp/" github.com/versity/versitygw/cmd/versitygw)
  rm -rf "${out}"
  mv "${out}.tmp" "${out}"
fi

mkdir -p "${KT_BIN}"
ln -sfn "${out}/versitygw" "${KT_BIN}/versitygw"
