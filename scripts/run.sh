#!/usr/bin/env bash
# Installs what is missing, builds, and starts moonwire on its embedded
# default (127.0.0.1:8080, memory storage). Extra arguments go to moonwire.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
exec build/core/moonwire "$@"
