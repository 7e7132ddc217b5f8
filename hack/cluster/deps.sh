#!/usr/bin/env bash
# Installs the Debian packages the cluster and image build need, if missing.
set -euo pipefail

pkgs=(
  containerd runc containernetworking-plugins iptables conntrack iproute2 # node
  ipset                                                                  # NetworkPolicy
  openssl ca-certificates                                                # PKI
  podman buildah netavark aardvark-dns debootstrap busybox-static        # images
  gcc libc6-dev make curl                                                # pause, scripts
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${p}")
done
if (( ${#missing[@]} )); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "go is required (1.25 or newer)" >&2; exit 1; }
