#!/bin/sh
# Install the Debian packages taskstream needs, only those missing.
# Usage: scripts/deps.sh build|test|bench
# As root it calls apt-get; otherwise sudo apt-get.
set -eu

build="cmake ninja-build gcc clang pkg-config libmicrohttpd-dev libjansson-dev uthash-dev libsystemd-dev"
test="$build libcmocka-dev python3 python3-pytest curl prometheus libclang-rt-14-dev"
bench="$build nginx libnginx-mod-nchan"

case "${1:-build}" in
build) want=$build ;;
test) want=$test ;;
bench) want=$bench ;;
*) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -qq
# prometheus is wanted only for promtool: do not let its postinst start a server.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
