#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""migration_bench: downtime of a live migration and of a cold restart, against ranks and state size.

  migration_bench.py --build DIR [--quick] [--out-dir D] [--ranks 2,4,8,16] [--ranks-state-mb 1]
                     [--sizes-mb 1,16,128,1024] [--costs zero,paper] [--cost-scale F] [--init-ms 1800]
                     [--comm-init-ms 1090] [--step-ms 2] [--at 30] [--iters 3] [--repeat N] [--no-perftest] [--keep]
                     [--recovery on,off] [--hostnccl-wait spin,block]

Each point is one `tm-harness all` (tools/harness/tm-harness, docs/demo.md): the uninterrupted reference run,
the cold restart (checkpoint at K, stop all, start all with --resume) and the live migration of rank 1
(tmctl migrate --spawn), both measured the same way from the ranks' timelines, both ending with the reference's
digest on every rank. Two sweeps: the number of ranks at a small state, and the state size (tm-train
--extra-state-mb) at 2 ranks; each point runs with zero emulated costs and with costs shaped like the paper's
restart breakdown (framework warm-up = tm-train --init-ms, NCCL init = HOSTNCCL_INIT_DELAY_MS; checkpoint load
is real I/O), side by side. The state-transfer throughput comes from perf/transfer_bench (StateClient::Fetch vs
ucx_perftest in the same invocation), run once at the sweep's state sizes.

--recovery on,off runs each point with failure recovery on (the default: snapshots shipped to a buddy every safe
point) and with TRAINMOVER_RECOVERY=off, alternately, so the price of recovery in a migration's downtime is
measured side by side; the goals are judged on the recovery-on rows (what a job gets by default).
--hostnccl-wait spin,block does the same with HOSTNCCL_WAIT (how a rank waiting in hostnccl idles: docs/hostnccl.md,
"Waiting"), for every point and for hostnccl_bench (one communicator per value); with both axes, every pair, in
turn. The goals are judged on the first value of each list.

Also runs perf/hostnccl_bench (AllReduce, 2 ranks, 4-64 MiB, next to ucx_perftest tag_bw) unless --no-hostnccl.
Writes <out>/migration_bench-<stamp>.{csv,json,svg} and prints a table with each point's downtime in parts (hold,
transfer inside it, comm swap, first operation, other) and every goal with its verdict (met, or not met and by
how much).
Asserts no speed: exit 0 when every run completed with bit-identical digests, 1 when one failed, 2 usage, 77
when live migration is unavailable in this build (the reason is printed).
"""
import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import migration_layouts  # noqa: E402  (perf/, next to this script)

EXIT_SKIP = 77
MIB = 1 << 20


def ilist(s):
    return [int(x) for x in s.split(",") if x]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="migration_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="meson build directory")
    ap.add_argument("--quick", action="store_true",
                    help="few points (2 ranks, 1 MiB; paper-shaped costs scaled by 1/4): a smoke run under a minute")
    ap.add_argument("--out-dir", help="where the CSV/JSON/SVG go (default: perf/results next to this script)")
    ap.add_argument("--stamp", help="file name stamp (default: UTC time)")
    ap.add_argument("--ranks", type=ilist, help="ranks sweep (default 2,4,8,16; quick 2)")
    ap.add_argument("--ranks-state-mb", type=int, default=1, help="extra state of the ranks sweep, MiB (default 1)")
    ap.add_argument("--sizes-mb", type=ilist, help="state sweep at 2 ranks, MiB (default 1,16,128,1024; quick 1)")
    ap.add_argument("--costs", default="zero,paper", help="cost profiles: zero, paper (default both)")
    ap.add_argument("--init-ms", type=int, default=1800, help="paper profile: framework warm-up (tm-train --init-ms)")
    ap.add_argument("--comm-init-ms", type=int, default=1090,
                    help="paper profile: communicator setup (HOSTNCCL_INIT_DELAY_MS)")
    ap.add_argument("--cost-scale", type=float, help="multiply the paper profile's costs (default 1; quick 0.25)")
    ap.add_argument("--step-ms", type=int, default=2, help="emulated compute per step (paces the job)")
    ap.add_argument("--at", type=int, default=30, help="step K of the checkpoint / of the migration request")
    ap.add_argument("--params", type=int, default=20000, help="tm-train --params")
    ap.add_argument("--iters", type=int, default=3, help="transfer_bench iterations per size")
    ap.add_argument("--no-perftest", action="store_true", help="transfer_bench without ucx_perftest")
    ap.add_argument("--no-hostnccl", action="store_true", help="skip hostnccl_bench (AllReduce vs ucx_perftest tag)")
    ap.add_argument("--timeout-s", type=int, default=180, help="limit of each harness run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; the one of median live downtime is kept")
    ap.add_argument("--recovery", default="on", help="failure recovery of the jobs: on, off, or on,off side by side "
                    "(TRAINMOVER_RECOVERY; default on)")
    ap.add_argument("--hostnccl-wait", default="", help="HOSTNCCL_WAIT of the jobs: spin, block, or spin,block side "
                    "by side (default: hostnccl's own)")
    ap.add_argument("--keep", action="store_true", help="keep every harness work directory")
    ap.add_argument("--layouts", help="program shapes compared side by side (migration_layouts.py: dp, tp2pp2, "
                    "tp2pp4; '' = none; default dp,tp2pp2, none with --quick)")
    ap.add_argument("--layout-ranks", type=int, default=8, help="ranks of the program-shape comparison")
    ap.add_argument("--layout-migrate", type=int, default=5, help="the rank migrated in the program-shape comparison")
    ap.add_argument("--layouts-only", action="store_true", help="only the program-shape comparison")
    a = ap.parse_args(argv)
    a.ranks = a.ranks or ([2] if a.quick else [2, 4, 8, 16])
    a.layouts = a.layouts if a.layouts is not None else ("" if a.quick else "dp,tp2pp2")
    a.sizes_mb = a.sizes_mb or ([1] if a.quick else [1, 16, 128, 1024])
    a.cost_scale = a.cost_scale if a.cost_scale is not None else (0.25 if a.quick else 1.0)
    a.costs = [c for c in a.costs.split(",") if c]
    a.recovery = [m for m in a.recovery.split(",") if m]
    if any(m not in ("on", "off") for m in a.recovery) or not a.recovery:
        ap.error("--recovery takes on and/or off")
    a.waits = [w for w in a.hostnccl_wait.split(",") if w]
    if any(w not in ("spin", "block") for w in a.waits):
        ap.error("--hostnccl-wait takes spin and/or block")
    # The settings compared side by side at every point: (recovery, HOSTNCCL_WAIT or "" for hostnccl's default).
    a.settings = [(r, w) for r in a.recovery for w in (a.waits or [""])]
    if any(c not in ("zero", "paper") for c in a.costs) or not a.costs:
        ap.error("--costs takes zero and/or paper")
    if min(a.ranks) < 2 or min(a.sizes_mb + [a.ranks_state_mb]) < 0:
        ap.error("need ranks >= 2 and sizes >= 0")
    return a


def log(msg):
    print(msg, flush=True)


def costs_of(a, profile):
    if profile == "zero":
        return 0, 0
    return round(a.init_ms * a.cost_scale), round(a.comm_init_ms * a.cost_scale)


def steps_for(a, ranks, mb, init_ms, comm_ms, factor=1.0):
    """Enough steps that the job still trains when the migration ends: the joiner's start-up (the emulated costs,
    allocating and filling its state), the background rebuild and the transfer all happen while the job runs. The
    step time is estimated (about 0.75 ms per rank on 2 shared cores and 18 ms per GiB of state, plus --step-ms);
    a run that ends too early is retried once with twice the steps."""
    tail_ms = 1500 + 1.3 * (init_ms + comm_ms) + 12 * mb + 150 * ranks
    step_est = a.step_ms + 0.75 * ranks + 0.018 * mb  # touching the extra state costs ~18 ms per GiB per step
    return a.at + 10 + int(factor * tail_ms / step_est)


def run_harness(a, work, ranks, mb, profile, rep, recovery="on", wait=""):
    init_ms, comm_ms = costs_of(a, profile)
    harness = os.path.join(a.build, "tools/harness/tm-harness")
    env = dict(os.environ, TRAINMOVER_RECOVERY=recovery)
    if wait:
        env["HOSTNCCL_WAIT"] = wait
    last = None
    for attempt, factor in enumerate((1.0, 2.0)):
        wd = os.path.join(work, f"{profile}-n{ranks}-{mb}M-rec{recovery}{'-' + wait if wait else ''}-{rep}.{attempt}")
        os.makedirs(wd, exist_ok=True)
        steps = steps_for(a, ranks, mb, init_ms, comm_ms, factor)
        cmd = [sys.executable, harness, "all", "--build", a.build, "--json", "--work-dir", wd, "--ranks", str(ranks),
               "--steps", str(steps), "--params", str(a.params), "--at", str(a.at), "--step-ms", str(a.step_ms),
               "--extra-state-mb", str(mb), "--init-ms", str(init_ms), "--comm-init-ms", str(comm_ms),
               "--migrate-rank", "1", "--timeout-s", str(a.timeout_s)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
            out = json.loads(r.stdout)
        except json.JSONDecodeError:
            out = {"error": f"tm-harness exited {r.returncode} without JSON: {r.stderr.strip()[-400:]}"}
        out["_rc"], out["_cmd"], out["_work"], out["_steps"] = r.returncode, cmd, wd, steps
        with open(os.path.join(wd, "harness.json"), "w") as f:
            json.dump(out, f, indent=1)
        last = out
        lv = out.get("live") or {}
        unavailable = lv.get("available") is False and not lv.get("reason", "").startswith("failed:")
        if r.returncode == 0 or unavailable:
            if not a.keep:
                shutil.rmtree(wd, ignore_errors=True)
            return out
        log(f"  run failed (attempt {attempt + 1}, {steps} steps): {out.get('error', '?').splitlines()[0][:200]}")
    return last


def phase_ms(phases, name, process=None):
    """The longest duration of phase `name` over the processes of a migration's record (ms), or None; only
    `process`'s when given."""
    d = [p["end_ms"] - p["start_ms"] for p in phases if p.get("phase") == name and p.get("end_ms") is not None
         and (process is None or p.get("process") == process)]
    return max(d) if d else None


def worst_stayer(phases):
    """The stayer whose stall S..S+1 ("switch step": entering safe point S to entering S+1) was the longest: the
    one the coordinator's downtime names, and the one whose parts the breakdown shows."""
    spans = [(p["end_ms"] - p["start_ms"], p.get("process")) for p in phases
             if p.get("phase") == "switch step" and p.get("end_ms") is not None]
    return max(spans)[1] if spans else None


def row_of(a, out, profile, ranks, mb, recovery="on", wait=""):
    init_ms, comm_ms = costs_of(a, profile)
    lv, cold = out.get("live") or {}, out.get("cold_restart") or {}
    mig = (lv.get("migrations") or [{}])[0]
    transfer_ms = phase_ms(mig.get("phases", []), "transfer")
    stayer = worst_stayer(mig.get("phases", []))
    state = mig.get("bytes")
    if state is None and cold.get("checkpoint_bytes"):
        state = cold["checkpoint_bytes"] // ranks  # the files hold a little framing besides the state
    row = {
        "costs": profile, "recovery": recovery, "hostnccl_wait": wait or "default", "init_ms": init_ms, "comm_init_ms": comm_ms, "ranks": ranks, "extra_state_mb": mb,
        "state_bytes": state, "steps": out.get("_steps"),
        "median_step_ms": mig.get("median_step_ms", cold.get("median_step_ms")),
        "live_downtime_ms": out.get("downtime_ms"), "live_window_ms": mig.get("window_ms"),
        "coordinator_downtime_ms": mig.get("coordinator_downtime_ms"), "migration_ms": mig.get("elapsed_ms"),
        "transfer_ms": transfer_ms, "seal_ms": phase_ms(mig.get("phases", []), "seal"),
        # The parts of the downtime, all of one process: the stayer with the longest stall S..S+1.
        "hold_ms": phase_ms(mig.get("phases", []), "hold at S", stayer),
        "switch_step_ms": phase_ms(mig.get("phases", []), "switch step", stayer),
        "prepare_ms": phase_ms(mig.get("phases", []), "prepare"),
        "swap_ms": phase_ms(mig.get("phases", []), "swap comms", stayer),
        "first_step_ms": phase_ms(mig.get("phases", []), "first step", stayer),
        "migration_transfer_gbps": (state / (transfer_ms * 1e6)) if state and transfer_ms else None,
        "cold_restart_ms": out.get("cold_restart_ms"),
        "cold_save_and_stop_ms": (cold.get("phases_ms") or {}).get("save_and_stop"),
        "cold_restart_to_k_ms": (cold.get("phases_ms") or {}).get("restart_to_step_k"),
        "ratio": out.get("ratio"), "bit_identical": out.get("bit_identical"),
        "live_available": lv.get("available"), "error": out.get("error") or (lv.get("reason") if lv else None),
    }
    breakdown(row)
    return row


def breakdown(row):
    """The live downtime in parts (ms), of the stayer that stalled longest between safe points S and S+1: hold (it
    waits inside safe point S: the others' arrival, READ, the bytes, verification, SWITCH and its wake-up; the
    transfer, the joiner's read, is inside it), swap (pointing the VComms at the replacements), first op (the first
    step after S over a median step: the replacements' first operations, waiting for the last rank to arrive in
    them, and whatever else ran meanwhile) and other (the harness's downtime, window K-1..K+2 on its worst rank,
    less that stayer's stall S..S+1: the steps next to S, and the difference between ranks)."""
    step = row.get("median_step_ms")
    if row.get("first_step_ms") is not None and step is not None:
        row["first_op_ms"] = max(0.0, row["first_step_ms"] - step)
    parts = [row.get(k) for k in ("hold_ms", "swap_ms", "first_op_ms")]
    if row.get("live_downtime_ms") is not None and all(p is not None for p in parts):
        row["other_ms"] = row["live_downtime_ms"] - sum(parts)


def point_row(samples, xfer):
    """The sample of median live downtime stands for the point; every sample's downtimes are kept."""
    done = sorted((r for r in samples if r["live_downtime_ms"] is not None), key=lambda r: r["live_downtime_ms"])
    row = dict(done[(len(done) - 1) // 2] if done else samples[-1])
    row["bit_identical"] = all(r["bit_identical"] for r in samples) if samples else None
    row["live_samples_ms"] = ";".join(fmt(r["live_downtime_ms"]) for r in samples)
    row["cold_samples_ms"] = ";".join(fmt(r["cold_restart_ms"]) for r in samples)
    ref = nearest(xfer, row["state_bytes"])
    if ref:
        row["fetch_gbps"] = ref["read_gbps_median"]
        row["perftest_get_gbps"] = gbps(ref.get("perftest_get_gbps"))
        if row["perftest_get_gbps"] and row["state_bytes"] and row["median_step_ms"] is not None:
            # The copy limit: the bytes at ucx_perftest's get bandwidth, one step, 5 ms.
            row["limit_ms"] = row["state_bytes"] / (row["perftest_get_gbps"] * 1e6) + row["median_step_ms"] + 5
    return row


def transfer_rows(a, sizes_bytes, work):
    """perf/transfer_bench at the given sizes: {size: row} (read GB/s of StateClient::Fetch, ucx_perftest get)."""
    exe = os.path.join(a.build, "perf/transfer_bench")
    if not os.access(exe, os.X_OK):
        log(f"transfer_bench not built ({exe}): no bandwidth reference")
        return {}
    jf = os.path.join(work, "transfer.json")
    cmd = [exe, "--sizes", ",".join(f"{s // MIB}M" for s in sizes_bytes), "--iters", str(a.iters), "--json", jf]
    if a.no_perftest:
        cmd.append("--no-perftest")
    log("== transfer: " + " ".join(cmd[1:-2]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0 or not os.path.exists(jf):
        log(f"transfer_bench exited {r.returncode}: {r.stderr.strip()[-300:]}")
    try:
        with open(jf) as f:
            return {x["size"]: x for x in json.load(f)["rows"] if x.get("ok")}
    except (OSError, json.JSONDecodeError, KeyError):
        return {}


def nearest(rows, size):
    if not rows or not size:
        return None
    return rows[min(rows, key=lambda s: abs(math.log(s) - math.log(size)))]


def gbps(x):
    return x if x and x > 0 else None


def fmt(v, spec=".1f", none="-"):
    if v is None:
        return none
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec)


# ---------------------------------------------------------------------------------------------------------------
# Goals


def verdict(met, how_far):
    """'met' or 'NOT met (by ...)'; None: not measured."""
    return None if met is None else ("met" if met else f"NOT met ({how_far})")


def goals(rows, xfer, sweep_ranks, sweep_state, hostnccl, judged_wait="-"):
    """The goals of docs/benchmarks.md ("Downtime at the copy limit"), each as (name, met, measured); met is None
    when the run did not measure it."""
    out = []
    zero = [r for r in rows if r["costs"] == "zero" and r["live_downtime_ms"] is not None]
    # The goals name 2, 4, 8 and 16 ranks and 1 MiB to 1 GiB of state: a verdict says what it did not see.
    missing_ranks = sorted({2, 4, 8, 16} - {r["ranks"] for r in zero})
    sizes = [r["extra_state_mb"] for r in zero if r["ranks"] == 2]
    unseen = (f"; not measured at {', '.join(map(str, missing_ranks))} ranks" if missing_ranks else "") + \
        ("; not measured at 1 GiB" if sizes and max(sizes) < 1024 else "")
    # 1. Downtime at the copy limit: bytes / ucx_perftest get + one median step + 5 ms, at every zero-cost point.
    name = "zero-cost live downtime <= state bytes / ucx_perftest get + one median step + 5 ms"
    pts = [r for r in zero if r.get("limit_ms") is not None]
    if pts:
        worst = max(pts, key=lambda r: r["live_downtime_ms"] - r["limit_ms"])
        over = worst["live_downtime_ms"] - worst["limit_ms"]
        out.append((name, over <= 0, "worst {} ranks {} MiB: {:.1f} ms vs limit {:.1f} ms ({:+.1f} ms); all: {}".format(
            worst["ranks"], worst["extra_state_mb"], worst["live_downtime_ms"], worst["limit_ms"], over,
            ", ".join(f"{r['ranks']}r/{r['extra_state_mb']}M {r['live_downtime_ms']:.0f}/{r['limit_ms']:.0f}"
                      for r in pts)) + unseen, f"by {over:.1f} ms at {worst['ranks']} ranks, {worst['extra_state_mb']} MiB"))
    else:
        out.append((name, None, "no zero-cost point with ucx_perftest measured", ""))
    # 2. Cold restart / live at 1 MiB, zero costs.
    name = "zero-cost cold restart / live downtime >= 20x at 1 MiB of state"
    pts = [r for r in zero if r["extra_state_mb"] == 1 and r["ratio"]]
    if pts:
        worst = min(pts, key=lambda r: r["ratio"])
        out.append((name, worst["ratio"] >= 20, "min {:.1f}x ({} ranks: cold {:.0f} ms / live {:.1f} ms); all: {}".format(
            worst["ratio"], worst["ranks"], worst["cold_restart_ms"], worst["live_downtime_ms"],
            ", ".join(f"{r['ranks']}r {r['ratio']:.1f}x" for r in pts)), f"{worst['ratio']:.1f}x of 20x"))
    else:
        out.append((name, None, "no zero-cost 1 MiB point", ""))
    # 3. The state transfer against ucx_perftest get.
    name = ("state transfer in a migration >= 90% of ucx_perftest get at >= 64 MiB, >= 50% at 1 MiB; "
            "transfer_bench >= 90% at >= 64 MiB")
    checks = []
    for r in sweep_state:
        if r.get("migration_transfer_gbps") and r.get("perftest_get_gbps") and r["state_bytes"]:
            need = 0.9 if r["state_bytes"] >= 64 * MIB else 0.5 if r["state_bytes"] <= 2 * MIB else None
            if need:
                checks.append((f"migration {r['state_bytes'] / MIB:.0f} MiB {r['costs']}",
                               r["migration_transfer_gbps"] / r["perftest_get_gbps"], need))
    for size, x in sorted(xfer.items()):
        if size >= 64 * MIB and gbps(x.get("perftest_get_gbps")):
            checks.append((f"transfer_bench {size // MIB} MiB", x["read_gbps_median"] / x["perftest_get_gbps"], 0.9))
    if checks:
        short = [c for c in checks if c[1] < c[2]]
        out.append((name, not short, "; ".join(f"{n} {v:.0%} (goal {g:.0%})" for n, v, g in checks),
                    ", ".join(f"{n} {v:.0%} of {g:.0%}" for n, v, g in short)))
    else:
        out.append((name, None, "no size with ucx_perftest measured", ""))
    # 4. Flat in ranks.
    name = "zero-cost live downtime flat in ranks (spread 2 -> 16 ranks <= 10%)"
    pts = sorted((r["ranks"], r["live_downtime_ms"]) for r in sweep_ranks if r["costs"] == "zero"
                 and r["live_downtime_ms"] is not None)
    if len(pts) >= 2:
        vals = [v for _, v in pts]
        spread = (max(vals) - min(vals)) / min(vals) if min(vals) > 0 else float("inf")
        out.append((name, spread <= 0.10, " ".join(f"{n}r {v:.1f} ms" for n, v in pts) + f" (spread {spread:.0%})" +
                    (f"; not measured at {', '.join(map(str, missing_ranks))} ranks" if missing_ranks else ""),
                    f"spread {spread:.0%} of 10%"))
    else:
        out.append((name, None, "fewer than 2 rank counts at zero costs", ""))
    # 5. hostnccl AllReduce against ucx_perftest tag bandwidth.
    name = "hostnccl AllReduce busbw >= 50% of ucx_perftest tag_bw at >= 4 MiB"
    pts = [(x["size"], x["ratio_busbw_to_tag_bw"]) for x in hostnccl if x.get("perftest_tag_bw_gbps")
           and x.get("algo", "-") in ("-", judged_wait)]
    if pts:
        worst = min(pts, key=lambda p: p[1])
        out.append((name, worst[1] >= 0.5, ", ".join(f"{sz // MIB} MiB {v:.2f}" for sz, v in pts),
                    f"{worst[1]:.2f} at {worst[0] // MIB} MiB"))
    else:
        out.append((name, None, "hostnccl_bench not run (or no ucx_perftest)", ""))
    # The earlier goal with paper-shaped costs.
    name = "cold restart / live downtime >= 16x (paper-shaped costs)"
    paper = [r for r in rows if r["costs"] == "paper" and r["ratio"]]
    if paper:
        worst = min(paper, key=lambda r: r["ratio"])
        out.append((name, worst["ratio"] >= 16, "min {:.1f}x ({} ranks, {} MiB); all: {}".format(
            worst["ratio"], worst["ranks"], worst["extra_state_mb"], ", ".join(f"{r['ratio']:.0f}x" for r in paper)),
            f"{worst['ratio']:.1f}x"))
    else:
        out.append((name, None, "no paper-cost point measured", ""))
    return out


def hostnccl_rows(a, work):
    """perf/hostnccl_bench AllReduce at 4..64 MiB on 2 ranks with ucx_perftest tag_bw in the same invocation."""
    exe = os.path.join(a.build, "perf/hostnccl_bench")
    if a.quick or a.no_hostnccl or a.no_perftest or not os.access(exe, os.X_OK):  # --quick: the smoke test
        return []
    jf = os.path.join(work, "hostnccl.json")
    cmd = [exe, "-n", "2", "-b", "4M", "-e", "64M", "--op", "allreduce", "--json", jf]
    if a.waits:
        cmd += ["--wait", ",".join(a.waits)]
    log("== hostnccl: " + " ".join(cmd[1:-2]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    try:
        with open(jf) as f:
            return [x for x in json.load(f)["rows"] if x.get("op") == "allreduce"]
    except (OSError, json.JSONDecodeError, KeyError):
        log(f"hostnccl_bench exited {r.returncode}: {r.stderr.strip()[-300:]}")
        return []


# ---------------------------------------------------------------------------------------------------------------
# Plot: an SVG written by hand (no dependency). Three panels, log axes.


class Panel:
    def __init__(self, x0, y0, w, h, title, xlabel, ylabel, xs, ys, xlog=True, ylog=True):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.title, self.xlabel, self.ylabel, self.xlog, self.ylog = title, xlabel, ylabel, xlog, ylog
        self.xmin, self.xmax = self._range(xs, xlog, decades=False)
        self.ymin, self.ymax = self._range(ys, ylog)

    @staticmethod
    def _range(vals, log_scale, decades=True):
        vals = [v for v in vals if v is not None and (v > 0 or not log_scale)]
        if not vals:
            return (1, 10)
        lo, hi = min(vals), max(vals)
        if log_scale and not decades:  # a margin of a factor 1.4 each side
            return (lo / 1.4, hi * 1.4)
        if log_scale:
            lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
            return (lo, hi if hi > lo else lo * 10)
        return (0, hi * 1.1 if hi > 0 else 1)

    def _t(self, v, lo, hi, log_scale):
        if log_scale:
            return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (v - lo) / (hi - lo)

    def px(self, x):
        return self.x0 + self.w * self._t(x, self.xmin, self.xmax, self.xlog)

    def py(self, y):
        return self.y0 + self.h * (1 - self._t(y, self.ymin, self.ymax, self.ylog))

    def frame(self, xticks):
        s = [f'<rect x="{self.x0}" y="{self.y0}" width="{self.w}" height="{self.h}" fill="none" stroke="#333"/>',
             f'<text x="{self.x0 + self.w / 2}" y="{self.y0 - 10}" text-anchor="middle" font-weight="bold">'
             f'{self.title}</text>',
             f'<text x="{self.x0 + self.w / 2}" y="{self.y0 + self.h + 36}" text-anchor="middle">{self.xlabel}</text>',
             f'<text transform="translate({self.x0 - 52},{self.y0 + self.h / 2}) rotate(-90)" text-anchor="middle">'
             f'{self.ylabel}</text>']
        for x, label in xticks:
            if self.xmin <= x <= self.xmax:
                X = self.px(x)
                s.append(f'<line x1="{X:.1f}" y1="{self.y0}" x2="{X:.1f}" y2="{self.y0 + self.h}" stroke="#ddd"/>')
                s.append(f'<text x="{X:.1f}" y="{self.y0 + self.h + 16}" text-anchor="middle">{label}</text>')
        if self.ylog:
            d = self.ymin
            while d <= self.ymax * 1.0001:
                Y = self.py(d)
                s.append(f'<line x1="{self.x0}" y1="{Y:.1f}" x2="{self.x0 + self.w}" y2="{Y:.1f}" stroke="#ddd"/>')
                s.append(f'<text x="{self.x0 - 6}" y="{Y + 4:.1f}" text-anchor="end">{d:g}</text>')
                d *= 10
        else:
            for i in range(6):
                v = self.ymin + (self.ymax - self.ymin) * i / 5
                Y = self.py(v)
                s.append(f'<line x1="{self.x0}" y1="{Y:.1f}" x2="{self.x0 + self.w}" y2="{Y:.1f}" stroke="#ddd"/>')
                s.append(f'<text x="{self.x0 - 6}" y="{Y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        return s

    def series(self, pts, color, dash=None, marker=True):
        pts = [(x, y) for x, y in pts if x and y is not None and (y > 0 or not self.ylog)]
        if not pts:
            return []
        style = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in sorted(pts))
        s = [f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{style}/>']
        if marker:
            s += [f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3.5" fill="{color}"/>' for x, y in pts]
        return s


def legend(x, y, items):
    s = []
    for i, (label, color, dash) in enumerate(items):
        Y = y + 16 * i
        style = f' stroke-dasharray="{dash}"' if dash else ""
        s.append(f'<line x1="{x}" y1="{Y}" x2="{x + 22}" y2="{Y}" stroke="{color}" stroke-width="2"{style}/>')
        s.append(f'<text x="{x + 28}" y="{Y + 4}">{label}</text>')
    return s


COLORS = {("live", "zero"): "#1f77b4", ("live", "paper"): "#2ca02c", ("cold", "zero"): "#ff7f0e",
          ("cold", "paper"): "#d62728"}


def svg(rows, sweep_ranks, sweep_state, xfer, title):
    W, H = 1320, 540
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>']
    ys = [r[k] for r in rows for k in ("live_downtime_ms", "cold_restart_ms")]
    profiles = sorted({r["costs"] for r in rows}, reverse=True)
    # Panel 1: downtime vs ranks.
    small = sweep_ranks[0]["extra_state_mb"] if sweep_ranks else "?"
    p1 = Panel(80, 60, 320, 330, "downtime vs ranks", f"ranks ({small} MiB extra state)", "downtime (ms)",
               [r["ranks"] for r in sweep_ranks], ys)
    s += p1.frame([(n, str(n)) for n in sorted({r["ranks"] for r in sweep_ranks})])
    # Panel 2: downtime vs state size, with size / bandwidth + 50 ms.
    p2 = Panel(500, 60, 320, 330, "downtime vs state size (2 ranks)", "state moved per rank (MiB)", "downtime (ms)",
               [r["state_bytes"] / MIB for r in sweep_state if r["state_bytes"]], ys)
    s += p2.frame([(m, f"{m:g}") for m in (0.1, 1, 10, 100, 1000, 10000)])
    items = []
    for prof in profiles:
        for kind, key in (("live", "live_downtime_ms"), ("cold", "cold_restart_ms")):
            c = COLORS[(kind, prof)]
            dash = None if kind == "live" else "6,3"
            s += p1.series([(r["ranks"], r[key]) for r in sweep_ranks if r["costs"] == prof], c, dash)
            s += p2.series([(r["state_bytes"] / MIB, r[key]) for r in sweep_state if r["costs"] == prof and
                            r["state_bytes"]], c, dash)
            items.append((f"{kind} ({prof} costs)", c, dash))
    pred = sorted({(r["state_bytes"] / MIB, r["limit_ms"]) for r in sweep_state if r.get("limit_ms")})
    s += p2.series(pred, "#777", "2,3", marker=False)
    items.append(("limit: bytes / perftest get + step + 5 ms", "#777", "2,3"))
    s += legend(90, 460, items[:3]) + legend(330, 460, items[3:])
    # Panel 3: transfer throughput vs size.
    tx = [(x["size"] / MIB, x["read_gbps_median"], gbps(x.get("perftest_get_gbps"))) for x in
          (xfer[k] for k in sorted(xfer))]
    mig = [(r["state_bytes"] / MIB, r["migration_transfer_gbps"]) for r in sweep_state
           if r.get("migration_transfer_gbps") and r["costs"] == profiles[0]]
    p3 = Panel(920, 60, 320, 330, "state transfer throughput", "size (MiB)", "GB/s",
               [t[0] for t in tx] + [m[0] for m in mig], [t[1] for t in tx] + [t[2] for t in tx] +
               [m[1] for m in mig], ylog=True)
    s += p3.frame([(m, f"{m:g}") for m in (0.1, 1, 10, 100, 1000, 10000)])
    s += p3.series([(t[0], t[2]) for t in tx], "#9467bd")
    s += p3.series([(t[0], t[2] * 0.9 if t[2] else None) for t in tx], "#9467bd", "2,3", marker=False)
    s += p3.series([(t[0], t[1]) for t in tx], "#1f77b4")
    s += p3.series(mig, "#2ca02c", "6,3")
    s += legend(930, 460, [("transfer_bench Fetch (read)", "#1f77b4", None), ("ucx_perftest ucp_get", "#9467bd", None),
                           ("90% of ucx_perftest", "#9467bd", "2,3"), ("in migration (bytes / transfer phase)",
                                                                      "#2ca02c", "6,3")])
    s.append("</svg>")
    return "\n".join(s) + "\n"


# ---------------------------------------------------------------------------------------------------------------


CSV_COLS = ["costs", "recovery", "hostnccl_wait", "init_ms", "comm_init_ms", "ranks", "extra_state_mb", "state_bytes", "steps", "median_step_ms",
            "live_downtime_ms", "live_window_ms", "coordinator_downtime_ms", "migration_ms", "transfer_ms", "seal_ms",
            "hold_ms", "switch_step_ms", "prepare_ms", "swap_ms", "first_step_ms", "first_op_ms", "other_ms", "limit_ms", "migration_transfer_gbps", "cold_restart_ms", "cold_save_and_stop_ms",
            "cold_restart_to_k_ms", "ratio", "fetch_gbps", "perftest_get_gbps",
            "bit_identical", "live_available", "live_samples_ms", "cold_samples_ms"]


def main(argv):
    a = parse_args(argv)
    a.build = os.path.abspath(a.build)
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.abspath(a.out_dir or os.path.join(here, "results"))
    os.makedirs(out_dir, exist_ok=True)
    stamp = a.stamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if not os.path.exists(os.path.join(a.build, "tools/harness/tm-harness")):
        print(f"migration_bench: {a.build}/tools/harness/tm-harness not found (not a configured build?)",
              file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="migration_bench.")
    # The sweep: the ranks at a small state, then the state sizes at 2 ranks (the shared point once).
    points = [(n, a.ranks_state_mb) for n in a.ranks]
    points += [(2, mb) for mb in a.sizes_mb if (2, mb) not in points]
    points = [] if a.layouts_only else points
    init_ms, comm_ms = costs_of(a, "paper")
    log(f"# migration_bench: {len(points)} points x costs {','.join(a.costs)} (paper-shaped: warm-up {init_ms} ms, "
        f"comm setup {comm_ms} ms{', scaled by %g' % a.cost_scale if a.cost_scale != 1 else ''}); step K={a.at}, "
        f"--step-ms {a.step_ms}, {a.params} params; {os.cpu_count()} cpus, load "
        f"{' '.join(open('/proc/loadavg').read().split()[:3])}")

    xfer = transfer_rows(a, sorted({mb * MIB for _, mb in points if mb > 0}), work) if points else {}
    hostnccl = hostnccl_rows(a, work) if points else []
    rows, rc, skip_reason = [], 0, None
    for ranks, mb in points:
        for prof in a.costs:
            log(f"== {ranks} ranks, {mb} MiB extra state, {prof} costs, recovery {','.join(a.recovery)}" +
                (f", HOSTNCCL_WAIT {','.join(a.waits)}" if a.waits else ""))
            samples = {m: [] for m in a.settings}
            for rep in range(a.repeat):
                for mode in a.settings:  # alternately, so that all see the same machine
                    out = run_harness(a, work, ranks, mb, prof, rep, *mode)
                    row = row_of(a, out, prof, ranks, mb, *mode)
                    lv = out.get("live") or {}
                    if lv.get("available") is False and not lv.get("reason", "").startswith("failed:"):
                        skip_reason = lv.get("reason")
                    elif out["_rc"] != 0:
                        rc = 1
                        log(f"  FAILED: {row['error']} (logs in {out['_work']})")
                    log(f"  recovery {mode[0]}{' wait ' + mode[1] if mode[1] else ''}: live {fmt(row['live_downtime_ms'])} ms, cold {fmt(row['cold_restart_ms'])} "
                        f"ms, ratio {fmt(row['ratio'])}x, state {row['state_bytes']} B, transfer "
                        f"{fmt(row['transfer_ms'])} ms, bit-identical {fmt(row['bit_identical'])}")
                    samples[mode].append(row)
            for mode in a.settings:
                rows.append(point_row(samples[mode], xfer))

    layouts, layouts_ok = migration_layouts.run(a, work, log, fmt)
    rc = rc if layouts_ok else 1
    # The goals: one setting (recovery on unless only off ran; the first HOSTNCCL_WAIT given).
    judged = [r for r in rows if (r["recovery"], r["hostnccl_wait"]) == (a.settings[0][0], a.settings[0][1] or "default")]
    sweep_ranks = [r for r in judged if r["extra_state_mb"] == a.ranks_state_mb]
    sweep_state = [r for r in judged if r["ranks"] == 2 and r["extra_state_mb"] in a.sizes_mb]
    base = os.path.join(out_dir, f"migration_bench-{stamp}")
    with open(base + ".csv", "w") as f:
        f.write(",".join(CSV_COLS) + "\n")
        for r in rows:
            f.write(",".join("" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                             for c in CSV_COLS) + "\n")
    g = goals(judged, xfer, sweep_ranks, sweep_state, hostnccl, a.waits[0] if a.waits else "-")
    with open(base + ".json", "w") as f:
        json.dump({"bench": "migration_bench", "stamp": stamp, "quick": a.quick, "cost_scale": a.cost_scale,
                   "paper_costs": {"init_ms": init_ms, "comm_init_ms": comm_ms}, "step_ms": a.step_ms, "at": a.at,
                   "params": a.params, "rows": rows, "transfer": list(xfer.values()), "hostnccl": hostnccl,
                   "layouts": layouts,
                   "goals": [{"goal": n, "met": m, "measured": v, "short_by": d} for n, m, v, d in g]}, f, indent=1)
    with open(base + ".svg", "w") as f:
        f.write(svg(judged, sweep_ranks, sweep_state, xfer,
                    f"TrainMover: live migration vs cold restart ({stamp}; paper-shaped costs {init_ms}+{comm_ms} ms)"))

    log("")
    log("# downtime = hold + swap + first op + other (ms); the transfer happens inside the hold; limit = bytes /")
    log("# ucx_perftest get + median step + 5 ms; prep = the joiner's Prepare, in the build phase (not downtime)")
    log(f"# {'costs':>5} {'rec':>3} {'wait':>5} {'ranks':>5} {'state MiB':>9} {'live ms':>8} {'limit':>6} {'hold':>6} {'xfer':>6} "
        f"{'swap':>5} {'1st op':>6} {'other':>6} {'prep':>5} {'cold ms':>8} {'ratio':>6} {'GB/s':>5} {'get':>5} "
        f"{'step':>5} {'bit-id':>6}")
    for r in rows:
        log(f"  {r['costs']:>5} {r['recovery']:>3} {r['hostnccl_wait'][:5]:>5} {r['ranks']:>5} {fmt(r['state_bytes'] / MIB if r['state_bytes'] else None, '.2f'):>9} "
            f"{fmt(r['live_downtime_ms']):>8} {fmt(r.get('limit_ms')):>6} {fmt(r['hold_ms']):>6} "
            f"{fmt(r['transfer_ms']):>6} {fmt(r['swap_ms']):>5} {fmt(r.get('first_op_ms')):>6} "
            f"{fmt(r.get('other_ms')):>6} {fmt(r['prepare_ms']):>5} {fmt(r['cold_restart_ms'], '.0f'):>8} "
            f"{fmt(r['ratio']):>6} {fmt(r['migration_transfer_gbps'], '.2f'):>5} "
            f"{fmt(r.get('perftest_get_gbps'), '.1f'):>5} {fmt(r['median_step_ms'], '.2f'):>5} "
            f"{fmt(r['bit_identical']):>6}")
    log("")
    log("goals (measured on this machine in this run; not asserted):")
    for name, met, val, short in g:
        log(f"  [{verdict(met, short) or 'not measured'}] {name}: {val}")
    log(f"results: {base}.csv .json .svg")
    if a.keep or rc != 0:
        log(f"work directories kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if rc == 0 and skip_reason:
        log(f"SKIP: live migration unavailable: {skip_reason}")
        return EXIT_SKIP
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
