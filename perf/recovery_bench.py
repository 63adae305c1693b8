#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""recovery_bench: the downtime of a rank's failure, recovered by a spawned replacement vs a cold restart.

  recovery_bench.py --build DIR [--ranks 2,4] [--init-ms 1800] [--comm-init-ms 1090] [--step-ms 5] [--at 30]
                    [--steps 600] [--json FILE]

Each rank count is one `tm-harness failure` (tools/harness/tm-harness, docs/demo.md): the uninterrupted reference
run; the cold restart after a failure (checkpoint at step K to disk, SIGKILL of rank 1 past K, the job fails, all
ranks start again with --resume); and the recovery (SIGKILL of rank 1 past K, the coordinator spawns a replacement
and rolls every rank back to the newest snapshot; docs/recovery.md). Both pay the same emulated costs, labelled
in the output: framework start-up (tm-train --init-ms) and communicator setup (HOSTNCCL_INIT_DELAY_MS). Downtime =
from the kill to the first step completed after it on every rank (the ranks' timelines, CLOCK_REALTIME).
Asserts no speed: exit 0 when every run ended bit-identical to the reference, 1 otherwise.
"""
import argparse
import json
import os
import subprocess
import sys


def main(argv):
    ap = argparse.ArgumentParser(prog="recovery_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--init-ms", type=int, default=1800)
    ap.add_argument("--comm-init-ms", type=int, default=1090)
    ap.add_argument("--step-ms", type=int, default=5)
    ap.add_argument("--at", type=int, default=30)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    harness = os.path.join(a.build, "tools/harness/tm-harness")
    print(f"emulated costs (sleeps, not measured work), paid by the restart and by the replacement alike: framework "
          f"start-up {a.init_ms} ms (tm-train --init-ms), communicator setup {a.comm_init_ms} ms "
          f"(HOSTNCCL_INIT_DELAY_MS); checkpoint save/load is real I/O", flush=True)
    rows, rc = [], 0
    for n in [int(x) for x in a.ranks.split(",") if x]:
        r = subprocess.run([sys.executable, harness, "failure", "--build", a.build, "--ranks", str(n), "--steps",
                            str(a.steps), "--params", "20000", "--at", str(a.at), "--kill-rank", "1", "--init-ms",
                            str(a.init_ms), "--comm-init-ms", str(a.comm_init_ms), "--step-ms", str(a.step_ms),
                            "--json"], stdout=subprocess.PIPE, text=True)
        out = json.loads(r.stdout)
        if r.returncode != 0 or out.get("bit_identical") is not True:
            print(f"{n} ranks: failed ({out.get('error', 'digests differ')})")
            rc = 1
            continue
        rows.append({"ranks": n, "crash_restart": out["crash_restart"], "recovery": out["recovery"],
                     "ratio": out["recovery_ratio"]})
    print(f"{'ranks':>5} {'cold restart ms':>16} {'lost':>5} {'replacement ms':>15} {'lost':>5} {'ratio':>7}  "
          "bit-identical")
    for x in rows:
        c, v = x["crash_restart"], x["recovery"]
        print(f"{x['ranks']:>5} {c['failure_to_step_ms']:>16.1f} {c['lost_steps']:>5} {v['failure_to_step_ms']:>15.1f} "
              f"{v['lost_steps']:>5} {x['ratio']:>6.2f}x  yes")
    print("downtime: SIGKILL of rank 1 -> the first step completed after it on every rank; ratio = cold restart / "
          "spawned replacement")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"emulated": {"init_ms": a.init_ms, "comm_init_ms": a.comm_init_ms}, "rows": rows}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
