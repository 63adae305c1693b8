#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A tm-train rank that fails (bad flag; then killed mid-training) makes tmrun stop the job and exit non-zero.
# Without the shim: with it, a killed rank is recovered (tests/migration/recovery_test.py).
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
"$TMRUN" -n 3 --no-shim --grace-ms 2000 -- bash -c \
  "if [ \$RANK = 1 ]; then exec $TMTRAIN --bogus; fi; exec $TMTRAIN --steps 1000000 --step-ms 1" > "$tmp/a" 2>&1
rc=$?
[ $rc = 1 ] || { echo "FAIL: status $rc, expected 1"; cat "$tmp/a"; fail=1; }
grep -q "unknown flag" "$tmp/a" || { echo "FAIL: no error message"; fail=1; }

"$TMRUN" -n 3 --no-shim --grace-ms 2000 -- bash -c \
  "if [ \$RANK = 2 ]; then (sleep 0.5; kill -KILL \$\$) & fi; exec $TMTRAIN --steps 1000000 --step-ms 1 --log-every 0" \
  > "$tmp/b" 2>&1
rc=$?
[ $rc = 137 ] || { echo "FAIL: status $rc, expected 137"; cat "$tmp/b"; fail=1; }
[ $fail = 0 ] && echo "PASS"
exit $fail
