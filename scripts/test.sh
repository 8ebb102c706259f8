#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice:
# a normal build, then an AddressSanitizer + UndefinedBehaviorSanitizer build.
# MW_SKIP_SANITIZE=1 skips the second pass (for a quick local run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

echo "== npm ci (tests/js: ws, eventsource, playwright-core, react)"
(cd tests/js && npm ci --no-audit --no-fund)

echo "== format (the committed .clang-format)"
git ls-files -z '*.c' '*.h' | xargs -0 clang-format --dry-run -Werror

echo "== build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
echo "== tests"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== benchmark smoke run (not a test: proves the harness still works)"
bench/run.sh --smoke

if [ "${MW_SKIP_SANITIZE:-0}" != "1" ]; then
  echo "== build (ASan + UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMW_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  echo "== tests (ASan + UBSan)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j"$jobs"
fi
