#!/usr/bin/env bash
# Installs the KV store's system references when missing: Debian's memcached (the native
# reference server of benchmarks/kvstore.py) and libmemcached-tools (memcaslap, the paper's
# memaslap load generator). Called by `make test` and `make bench`; safe to run again.
# It never fails the build: when it cannot install, it says so loudly and the dependent
# tests skip (or fail under CI=true, where they must run).
set -u

have() { command -v "$1" >/dev/null 2>&1; }

missing=()
have memcached || missing+=(memcached)
have memcaslap || have memaslap || missing+=(libmemcached-tools)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    SUDO=(none)
fi

shout() {
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! install-system-deps: $*" >&2
    echo "!!! memcached / memcaslap tests will SKIP (and FAIL under CI=true)." >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

if [ "${SUDO[*]}" = none ]; then
    shout "need root or password-less sudo to apt-get install ${missing[*]}"
    exit 0
fi
if ! have apt-get; then
    shout "no apt-get on this machine; install ${missing[*]} by hand"
    exit 0
fi

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get update -qq >&2; then
    shout "apt-get update failed"
    exit 0
fi
if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    shout "apt-get install ${missing[*]} failed"
    exit 0
fi
# Debian's package starts a memcached service on 11211 where an init system runs; the tests
# and benchmark start their own on ephemeral ports, so the service is left as the package set it.
for tool in memcached memcaslap; do
    have "$tool" || shout "$tool still missing after apt-get install"
done
exit 0
