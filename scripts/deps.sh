#!/bin/sh
# Install the Debian packages taskstream needs, only those missing.
# Usage: scripts/deps.sh build|test|bench
# As root it calls apt-get; otherwise sudo apt-get.
set -eu

# xxd embeds the dashboard (web/) into the binary at build time; hiredis is
# the Redis client of cluster mode; libjwt (with OpenSSL's libcrypto) checks
# the signatures of JWTs; libcurl is the HTTP client of the CLI (cli/).
build="cmake ninja-build gcc clang pkg-config libjansson-dev uthash-dev libsystemd-dev xxd libhiredis-dev libjwt-dev libssl-dev libcurl4-openssl-dev"
# chromium, nginx, node: the real clients and proxy of tests/e2e (the npm
# packages they use are installed by the tests from their lockfile);
# redis-server: the store of the cluster tests, started by the tests;
# python3-jwt mints the tests' tokens independently of our code;
# python3-jsonschema checks answers against docs/openapi.yaml; debhelper,
# dpkg-dev, fakeroot and lintian build and check the Debian packages
# (debian/), man-db checks the man pages; buildah and debootstrap build
# the image of the Dockerfile from Debian alone (tests/e2e/test_image.py).
test="$build libcmocka-dev python3 python3-pytest python3-yaml python3-h11 python3-jwt python3-cryptography python3-jsonschema curl prometheus libclang-rt-14-dev chromium fonts-liberation nginx redis-server debhelper dpkg-dev fakeroot lintian man-db buildah debootstrap"
bench="$build python3 nginx libnginx-mod-nchan redis-server"

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
# node and npm are looked for as commands: a NodeSource nodejs carries its
# own npm and conflicts with Debian's npm package.
if [ "$want" = "$test" ]; then
    command -v node >/dev/null 2>&1 || missing="$missing nodejs"
    command -v npm >/dev/null 2>&1 || missing="$missing npm"
fi
[ -z "$missing" ] && exit 0

echo "installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
# Wait for another apt/dpkg run (unattended upgrades, a parallel build) rather
# than fail on its lock.
lock="-o DPkg::Lock::Timeout=600"
$sudo apt-get $lock update -qq
# We want promtool, nginx, redis-server and chromium as programs the tests
# start themselves: their packages must not start system services (prometheus
# would take port 9090, nginx port 80, redis-server port 6379). policy-rc.d
# is Debian's switch for that; ours is removed again afterwards, and an
# existing one is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get $lock install -y -qq --no-install-recommends $missing >/dev/null
