#!/usr/bin/env bash
# Installs the Debian packages moonwire needs to build, run and test.
# `install-deps.sh build` installs only what building and running need;
# without an argument, also what the tests and benchmarks need.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
PACKAGES=(
  cmake gcc make pkg-config
  libuv1-dev libwslay-dev libluajit2-5.1-dev libmsgpack-dev libhiredis-dev
  libcmocka-dev node-llhttp libssl-dev libjansson-dev uthash-dev
)
if [ "${1:-all}" != "build" ]; then
  PACKAGES+=(
    redis-server python3 python3-websockets python3-msgpack
    nginx-light libnginx-mod-nchan
    python3-fastapi python3-uvicorn gnuplot-nox
    nodejs chromium clang-format
  )
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: NodeSource's nodejs ships it; Debian's nodejs needs the npm package.
if [ "${1:-all}" != "build" ] && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
