#!/usr/bin/env bash
# Makes sure the host has what olactors needs beyond PyPI: a C compiler and
# libc headers (the native layer is compiled at install time), the Python
# headers, and libseccomp; nftables and iproute2 for sandbox networks (egress
# NAT rules, namespaces); HAProxy and nginx for the multi-worker deployment
# (`olactors cluster ...`, tested with the real programs). Installs Debian
# packages only when something is missing.
set -euo pipefail

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# Sandbox networks: nft holds the egress NAT rules, ip and nsenter configure namespaces.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
python3 - <<'PY' || missing+=(python3-dev)
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY

if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
