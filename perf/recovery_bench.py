#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""recovery_bench: the downtime of a rank's failure: a warm standby, a spawned replacement, a cold restart.

  recovery_bench.py --build DIR [--ranks 2,4] [--init-ms 1800] [--comm-init-ms 1090] [--step-ms 5] [--at 30]
                    [--steps 600] [--interval 100] [--json FILE] [--skip-failure | --skip-steady]

Each rank count is one `tm-harness failure` (tools/harness/tm-harness, docs/demo.md): the uninterrupted reference
run; the cold restart after a failure (checkpoint at step K to disk, SIGKILL of rank 1 past K, the job fails, all
ranks start again with --resume); the recovery by a spawned replacement (SIGKILL of rank 1 past K, the coordinator
spawns a replacement and rolls every rank back to the newest snapshot; docs/recovery.md); and the recovery by a warm
standby (tmrun --standby 1: a standby warmed up as rank 0, ready before the kill, takes rank 1's place through
tmRank). All pay the same emulated costs, labelled in the output: framework start-up (tm-train --init-ms) and
communicator setup (HOSTNCCL_INIT_DELAY_MS). Downtime = from the kill to the first step completed after it on every
rank (the ranks' timelines, CLOCK_REALTIME).

The goal (issue 13): with a warm standby, recovery at least 10x faster than a cold restart at a --interval-step
checkpoint interval, counting the work the cold restart loses. A failure falls on average half an interval after
the last checkpoint: the cold restart's cost is its measured downtime plus interval/2 steps trained again; the
standby's is its measured downtime plus the steps it lost (trained again after the rollback); a step is the
reference run's median step time. Asserts no speed: exit 0 when every run ended bit-identical to the reference.

Then the detection time per kind of failure (--detection-ranks ranks, zero emulated costs: they are paid after the
detection), one `tm-harness recover` each: kill (SIGKILL: the control connection closes), stop (SIGSTOP: silent,
the heartbeat timeout --heartbeat-timeout-ms detects it), nccl (SIGSTOP under a heartbeat timeout of 60 s: hostnccl
gives up on the frozen peer after --nccl-timeout-ms and reports the communicator failed, the coordinator probes its
members). Detection = from the signal to the coordinator's declaration of the failure (its recovery record); each
run's recovery is checked bit-identical too.

Then the steady-state cost of the snapshots: --pairs sets of jobs of --steady-ranks ranks run at the same time,
one with recovery on for each value of --every (TRAINMOVER_SNAPSHOT_EVERY: a snapshot at every N-th step, or
`auto`: the interval the coordinator picks to keep the cost under --budget, TRAINMOVER_SNAPSHOT_BUDGET) and one with
TRAINMOVER_RECOVERY=off (same shim, same coordinator, no snapshots); all see the same load, which is what makes
the ratios meaningful on a shared machine. steps/s = steps from --warmup to the end over their time (the latest
rank's safe-point marks); the ratio is on/off per set, and its median is the figure. Rows for each --sizes
parameter count and each --every (the registered state: weights and Adam's two moments, 4 bytes each, plus
--extra-state-mb, tm-train's extra region, to make snapshots expensive for the step).
Asserts no speed: exit 0 when every run ended bit-identical to the reference (and every steady job ended 0), 1
otherwise.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def median_step_ms(work, ranks):
    """The reference run's median step interval (its timeline), in ms."""
    marks = {}
    with open(os.path.join(work, "reference.timeline")) as f:
        for line in f:
            x = json.loads(line)
            marks.setdefault(x["rank"], []).append(x["t_ns"])
    gaps = sorted(b - a for ts in marks.values() for a, b in zip(sorted(ts), sorted(ts)[1:]))
    return gaps[len(gaps) // 2] / 1e6 if gaps else 0.0


def main(argv):
    ap = argparse.ArgumentParser(prog="recovery_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--ranks", default="2,4", help="rank counts, e.g. 2,4,8,16 (default 2,4: a loaded 2-core box)")
    ap.add_argument("--init-ms", type=int, default=1800)
    ap.add_argument("--comm-init-ms", type=int, default=1090)
    ap.add_argument("--step-ms", type=int, default=5)
    ap.add_argument("--at", type=int, default=30)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--interval", type=int, default=100, help="the cold restart's checkpoint interval, in steps")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--steady-ranks", type=int, default=4)
    ap.add_argument("--sizes", default="20000,200000", help="tm-train --params of the steady-state rows")
    ap.add_argument("--steady-steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--every", default="1", help="TRAINMOVER_SNAPSHOT_EVERY of the 'on' jobs, a comma list (1,auto: "
                    "one 'on' job of each per set)")
    ap.add_argument("--budget", default="0.02", help="TRAINMOVER_SNAPSHOT_BUDGET of the 'auto' job")
    ap.add_argument("--extra-state-mb", type=int, default=0, help="tm-train --extra-state-mb of the steady jobs")
    ap.add_argument("--detection-ranks", type=int, default=4)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=2000, help="the coordinator's, for the stop kind")
    ap.add_argument("--nccl-timeout-ms", type=int, default=3000, help="HOSTNCCL_TIMEOUT_MS, for the nccl kind")
    ap.add_argument("--skip-failure", action="store_true", help="no failure rows")
    ap.add_argument("--skip-detection", action="store_true", help="no detection rows")
    ap.add_argument("--skip-steady", action="store_true", help="no steady-state rows")
    a = ap.parse_args(argv)
    harness = os.path.join(a.build, "tools/harness/tm-harness")
    print(f"emulated costs (sleeps, not measured work), paid by the restart, the replacement and the standby alike: "
          f"framework start-up {a.init_ms} ms (tm-train --init-ms), communicator setup {a.comm_init_ms} ms "
          f"(HOSTNCCL_INIT_DELAY_MS); checkpoint save/load is real I/O; --step-ms {a.step_ms}", flush=True)
    rows, rc = [], 0
    for n in [] if a.skip_failure else [int(x) for x in a.ranks.split(",") if x]:
        work = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"recovery_bench-{os.getpid()}-{n}")
        r = subprocess.run([sys.executable, harness, "failure", "--build", a.build, "--ranks", str(n), "--steps",
                            str(a.steps), "--params", "20000", "--at", str(a.at), "--kill-rank", "1", "--init-ms",
                            str(a.init_ms), "--comm-init-ms", str(a.comm_init_ms), "--step-ms", str(a.step_ms),
                            "--work-dir", work, "--json"], stdout=subprocess.PIPE, text=True)
        out = json.loads(r.stdout)
        if r.returncode != 0 or out.get("bit_identical") is not True:
            print(f"{n} ranks: failed ({out.get('error', 'digests differ')}; logs in {work})")
            rc = 1
            continue
        step = median_step_ms(work, n)
        c, v, s = out["crash_restart"], out["recovery"], out["standby_recovery"]
        cold = c["failure_to_step_ms"] + a.interval / 2 * step
        warm = s["failure_to_step_ms"] + s["lost_steps"] * step
        rows.append({"ranks": n, "median_step_ms": round(step, 2), "crash_restart": c, "recovery": v, "standby": s,
                     "replacement_ratio": out["recovery_ratio"], "standby_ratio": out["standby_ratio"],
                     "cold_with_lost_work_ms": round(cold, 1), "standby_with_lost_work_ms": round(warm, 1),
                     "goal_ratio": round(cold / warm, 2)})
        subprocess.run(["rm", "-rf", work])
    print(f"{'ranks':>5} {'cold restart ms':>16} {'lost':>5} {'spawned ms':>11} {'lost':>5} {'standby ms':>11} "
          f"{'lost':>5} {'cold/spawned':>13} {'cold/standby':>13}  bit-identical")
    for x in rows:
        c, v, s = x["crash_restart"], x["recovery"], x["standby"]
        print(f"{x['ranks']:>5} {c['failure_to_step_ms']:>16.1f} {c['lost_steps']:>5} {v['failure_to_step_ms']:>11.1f} "
              f"{v['lost_steps']:>5} {s['failure_to_step_ms']:>11.1f} {s['lost_steps']:>5} "
              f"{x['replacement_ratio']:>12.2f}x {x['standby_ratio']:>12.2f}x  yes")
    print("downtime: SIGKILL of rank 1 -> the first step completed after it on every rank; lost: steps trained again")
    print(f"goal: warm standby >= 10x faster than a cold restart at a {a.interval}-step checkpoint interval, counting "
          f"the lost work (cold: downtime + {a.interval // 2} steps on average; standby: downtime + its lost steps; a "
          "step = the reference run's median step)")
    for x in rows:
        verdict = "met" if x["goal_ratio"] >= 10 else "NOT met"
        # The step time from which the same downtimes would meet the goal: (C + I/2 s) / (W + L s) >= 10.
        room = a.interval / 2 - 10 * x["standby"]["lost_steps"]
        need = (10 * x["standby"]["failure_to_step_ms"] - x["crash_restart"]["failure_to_step_ms"]) / room
        x["goal_step_ms"] = round(max(need, 0.0), 1) if room > 0 else None
        at = (f"with steps of {x['goal_step_ms']:.0f} ms or longer" if room > 0 else
              f"at no step time ({x['standby']['lost_steps']} steps lost >= {a.interval // 20})")
        print(f"  {x['ranks']} ranks: cold {x['cold_with_lost_work_ms']:.1f} ms vs standby "
              f"{x['standby_with_lost_work_ms']:.1f} ms (step {x['median_step_ms']:.2f} ms): {x['goal_ratio']:.2f}x, "
              f"goal {verdict}; the same downtimes meet it {at}")
    detection, ok = ([], True) if a.skip_detection else detection_times(a, harness)
    rc = rc if ok else 1
    steady, ok = ([], True) if a.skip_steady else steady_state(a)
    rc = rc if ok else 1
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"emulated": {"init_ms": a.init_ms, "comm_init_ms": a.comm_init_ms}, "interval": a.interval,
                       "rows": rows, "detection": detection, "steady": steady}, f)
    return rc


def detection_times(a, harness):
    """One recovery per kind of failure; returns (rows, every run recovered bit-identical)."""
    bound = {"kill": "at once (the connection closes)", "stop": f"heartbeat timeout {a.heartbeat_timeout_ms} ms",
             "nccl": f"HOSTNCCL_TIMEOUT_MS {a.nccl_timeout_ms} ms + the poll + the probe (heartbeat timeout 60 s)"}
    rows, ok = [], True
    print(f"detection, {a.detection_ranks} ranks, zero emulated costs, rank 1 struck after step {a.at}:", flush=True)
    for kind in ("kill", "stop", "nccl"):
        work = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"recovery_bench-{os.getpid()}-detect-{kind}")
        r = subprocess.run([sys.executable, harness, "recover", "--build", a.build, "--ranks", str(a.detection_ranks),
                            "--steps", str(a.steps), "--params", "20000", "--at", str(a.at), "--kill-rank", "1",
                            "--init-ms", "0", "--comm-init-ms", "0", "--step-ms", str(a.step_ms), "--fail-with", kind,
                            "--heartbeat-timeout-ms", str(a.heartbeat_timeout_ms), "--nccl-timeout-ms",
                            str(a.nccl_timeout_ms), "--work-dir", work, "--json"], stdout=subprocess.PIPE, text=True)
        out = json.loads(r.stdout)
        v = out.get("recovery", {})
        if r.returncode != 0 or out.get("bit_identical") is not True or v.get("detection_ms") is None:
            print(f"  {kind}: failed ({out.get('error', 'digests differ')}; logs in {work})")
            ok = False
            continue
        rows.append({"kind": kind, "bound": bound[kind], "detected_by": v["detected_by"],
                     "detection_ms": v["detection_ms"], "failure_to_step_ms": v["failure_to_step_ms"],
                     "lost_steps": v["lost_steps"]})
        subprocess.run(["rm", "-rf", work])
    print(f"  {'kind':<5} {'detection ms':>13} {'to training ms':>15} {'lost':>5}  bound; detected by")
    for x in rows:
        print(f"  {x['kind']:<5} {x['detection_ms']:>13.1f} {x['failure_to_step_ms']:>15.1f} {x['lost_steps']:>5}  "
              f"{x['bound']}; {x['detected_by']}")
    print("  detection: the signal -> the coordinator's declaration; to training: the signal -> the first step "
          "completed after it on every rank (a spawned replacement, every run bit-identical)", flush=True)
    return rows, ok


def steps_per_s(timeline, ranks, warmup):
    """Steps from `warmup` to the last step over their time; a step's time is the latest rank's mark of it."""
    marks = {}
    with open(timeline) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            marks.setdefault(r["step"], {})[r["rank"]] = r["t_ns"]
    full = sorted(s for s, m in marks.items() if len(m) == ranks and s >= warmup)
    if len(full) < 2:
        return None
    return (full[-1] - full[0]) / ((max(marks[full[-1]].values()) - max(marks[full[0]].values())) / 1e9)


def steady_state(a):
    """Recovery on and off side by side (two jobs at once), --pairs times per size; returns (rows, all ended 0)."""
    a.build = os.path.abspath(a.build)
    tmrun = os.path.join(a.build, "tools/tmrun/tmrun")
    train = [os.path.join(a.build, "tools/tm_train/tm-train"), "--steps", str(a.steady_steps), "--seed", "7",
             "--log-every", "0", "--step-ms", str(a.step_ms), "--extra-state-mb", str(a.extra_state_mb)]
    everys = [x for x in a.every.split(",") if x]
    shim = ["LD_PRELOAD=" + os.path.join(a.build, "lib/shim/libtrainmover.so"),
            "TRAINMOVER_NCCL_LIBRARY=" + os.path.join(a.build, "plugins/hostnccl/libnccl.so.2")]
    work = tempfile.mkdtemp(prefix="recovery-steady-")
    rows, ok = [], True
    print(f"steady state: {a.steady_ranks} ranks, {a.step_ms} ms emulated compute per step, {a.extra_state_mb} MiB extra "
          f"state, steps {a.warmup}-{a.steady_steps}; recovery on (TRAINMOVER_SNAPSHOT_EVERY={' and '.join(everys)}, "
          f"budget {a.budget} for auto) and off run at the same time, {a.pairs} sets per size", flush=True)
    for params in [int(x) for x in a.sizes.split(",") if x]:
        ratios = {e: [] for e in everys}
        on_rates = {e: [] for e in everys}
        off_rates = []
        for i in range(a.pairs):
            jobs = {}
            modes = [(e, [f"TRAINMOVER_SNAPSHOT_EVERY={e}", f"TRAINMOVER_SNAPSHOT_BUDGET={a.budget}"]) for e in everys]
            modes.append(("off", ["TRAINMOVER_RECOVERY=off"]))
            for mode, env in modes[::1 if i % 2 == 0 else -1]:  # which one starts first alternates
                tl = os.path.join(work, f"{params}-{i}-{mode}.timeline")
                log = open(os.path.join(work, f"{params}-{i}-{mode}.log"), "w")
                cmd = [tmrun, "-n", str(a.steady_ranks), "--", "env"] + shim + env + train + \
                    ["--params", str(params), "--timeline", tl]
                jobs[mode] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work), tl, log)
            rates = {}
            for mode, (p, tl, log) in jobs.items():
                rc = p.wait()
                log.close()
                rates[mode] = steps_per_s(tl, a.steady_ranks, a.warmup) if rc == 0 else None
                if rates[mode] is None:
                    print(f"  {params} parameters, pair {i}: the {mode} job failed (rc {rc}; {log.name})")
                    ok = False
            if None not in rates.values():
                off_rates.append(rates["off"])
                for e in everys:
                    on_rates[e].append(rates[e])
                    ratios[e].append(rates[e] / rates["off"])
        for e in everys:
            if ratios[e]:
                rows.append({"params": params, "state_bytes": params * 12 + (a.extra_state_mb << 20), "every": e,
                             "on_steps_per_s": [round(x, 1) for x in on_rates[e]],
                             "off_steps_per_s": [round(x, 1) for x in off_rates],
                             "ratios": [round(x, 4) for x in ratios[e]],
                             "median_ratio": round(statistics.median(ratios[e]), 4)})
    print(f"{'params':>8} {'state':>9} {'every':>6} {'on steps/s':>22} {'off steps/s':>22} {'on/off per set':>24} "
          f"{'median':>7}")
    for r in rows:
        print(f"{r['params']:>8} {r['state_bytes'] / 1e6:>7.2f}MB {r['every']:>6} "
              f"{'/'.join(f'{x:.0f}' for x in r['on_steps_per_s']):>22} "
              f"{'/'.join(f'{x:.0f}' for x in r['off_steps_per_s']):>22} "
              f"{'/'.join(f'{x:.3f}' for x in r['ratios']):>24} {r['median_ratio']:>6.1%}")
    print("goal: median on/off >= 98%")
    return rows, ok


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
