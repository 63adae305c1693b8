# SPDX-License-Identifier: Apache-2.0
# Sourced by the harness_*.sh tests: their arguments (tm-harness, the build folder, the NCCL backend), the skips
# (77) when tm-train is not linked against hostnccl or there is no python3, tm-harness's --timeout-s, and a
# temporary folder $tmp removed at exit.
set -u
HARNESS=$1 BUILD=$2 BACKEND=$3
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
command -v python3 > /dev/null || { echo "SKIP: no python3"; exit 77; }
# tm-harness's wait for each of its runs, times TM_TEST_TIMEOUT_SCALE (`./run test --sanitize` sets 3, as it
# triples meson's limits: sanitized ranks run several times slower).
HARNESS_TIMEOUT_S=$((100 * ${TM_TEST_TIMEOUT_SCALE:-1}))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
