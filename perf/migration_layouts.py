# SPDX-License-Identifier: Apache-2.0
"""The program shapes of migration_bench: one live migration in tm-train's data-parallel workload and in its 3D
one (--tp 2 --pp 2: Split TP, non-blocking PP with grouped send/recv, ZeRO-1 DP, a watchdog thread), same
ranks, same state size, zero emulated costs, side by side in one run (these machines are noisy: read the ratio).
Each point is one `tm-harness live` (the uninterrupted reference run, then the live migration of one rank,
compared bit for bit with the reference: per rank in 3D, where the ranks' digests differ)."""
import json
import os
import shutil
import subprocess
import sys

LAYOUTS = {"dp": (0, 0), "tp2pp2": (2, 2), "tp2pp4": (2, 4)}


def parse(spec):
    names = [s for s in spec.split(",") if s]
    bad = [n for n in names if n not in LAYOUTS]
    if bad:
        raise ValueError(f"unknown layout(s) {bad}; known: {', '.join(LAYOUTS)}")
    return names


def run_point(a, work, layout, rep):
    """One harness run of `layout` on a.layout_ranks ranks migrating rank a.layout_migrate; returns a row."""
    tp, pp = LAYOUTS[layout]
    wd = os.path.join(work, f"layout-{layout}-{rep}")
    os.makedirs(wd, exist_ok=True)
    steps = a.at + 10 + int((1500 + 150 * a.layout_ranks) / (a.step_ms + 1.5 * a.layout_ranks))
    cmd = [sys.executable, os.path.join(a.build, "tools/harness/tm-harness"), "live", "--build", a.build, "--json",
           "--work-dir", wd, "--ranks", str(a.layout_ranks), "--steps", str(steps), "--params", str(a.params),
           "--at", str(a.at), "--step-ms", str(a.step_ms), "--extra-state-mb", str(a.ranks_state_mb), "--init-ms", "0",
           "--comm-init-ms", "0", "--migrate-rank", str(a.layout_migrate), "--timeout-s", str(a.timeout_s)]
    if tp:
        cmd += ["--tp", str(tp), "--pp", str(pp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        out = {"error": f"tm-harness exited {r.returncode} without JSON: {r.stderr.strip()[-400:]}"}
    mig = ((out.get("live") or {}).get("migrations") or [{}])[0]
    phases = mig.get("phases", [])

    def phase(name):
        d = [p["end_ms"] - p["start_ms"] for p in phases if p.get("phase") == name and p.get("end_ms") is not None]
        return max(d) if d else None

    row = {"layout": layout, "tp": tp or 1, "pp": pp or 1, "ranks": a.layout_ranks, "rank": a.layout_migrate,
           "state_bytes": mig.get("bytes"), "median_step_ms": mig.get("median_step_ms"),
           "live_downtime_ms": out.get("downtime_ms"), "coordinator_downtime_ms": mig.get("coordinator_downtime_ms"),
           "migration_ms": mig.get("elapsed_ms"), "hold_ms": phase("hold at S"), "build_ms": phase("build"),
           "transfer_ms": phase("transfer"), "bit_identical": out.get("bit_identical"), "rc": r.returncode,
           "error": out.get("error") or ((out.get("live") or {}).get("reason"))}
    if r.returncode == 0 and not a.keep:
        shutil.rmtree(wd, ignore_errors=True)
    return row


def run(a, work, log, fmt):
    """Every layout of a.layouts, a.repeat times each (the sample of median downtime stands for it); logs the table
    with each layout's downtime over the first layout's; returns (rows, ok)."""
    rows, ok = [], True
    for layout in parse(a.layouts):
        samples = []
        for rep in range(a.repeat):
            log(f"== layout {layout}: {a.layout_ranks} ranks, migrate rank {a.layout_migrate}, "
                f"{a.ranks_state_mb} MiB extra state, zero costs")
            row = run_point(a, work, layout, rep)
            if row["rc"] != 0:
                ok = False
                log(f"  FAILED: {row['error']}")
            samples.append(row)
        done = sorted((r for r in samples if r["live_downtime_ms"] is not None), key=lambda r: r["live_downtime_ms"])
        row = dict(done[(len(done) - 1) // 2] if done else samples[-1])
        row["bit_identical"] = all(r["bit_identical"] for r in samples)
        row["samples_ms"] = ";".join(fmt(r["live_downtime_ms"]) for r in samples)
        rows.append(row)
    if not rows:
        return rows, ok
    base = rows[0]["live_downtime_ms"]
    log("")
    log("# program shapes: one live migration each, same run (downtime in ms; ratio = over the first layout's)")
    log(f"# {'layout':>7} {'ranks':>5} {'rank':>4} {'state KiB':>9} {'downtime':>8} {'ratio':>6} {'report':>7} "
        f"{'hold':>6} {'xfer':>6} {'build':>6} {'migr.':>7} {'step':>5} {'bit-id':>6} samples")
    for r in rows:
        ratio = r["live_downtime_ms"] / base if base and r["live_downtime_ms"] is not None else None
        r["ratio_to_first"] = ratio
        log(f"  {r['layout']:>7} {r['ranks']:>5} {r['rank']:>4} "
            f"{fmt(r['state_bytes'] / 1024 if r['state_bytes'] else None, '.0f'):>9} {fmt(r['live_downtime_ms']):>8} "
            f"{fmt(ratio, '.2f'):>6} {fmt(r['coordinator_downtime_ms']):>7} {fmt(r['hold_ms']):>6} "
            f"{fmt(r['transfer_ms']):>6} {fmt(r['build_ms']):>6} {fmt(r['migration_ms'], '.0f'):>7} "
            f"{fmt(r['median_step_ms'], '.2f'):>5} {fmt(r['bit_identical']):>6} {r['samples_ms']}")
    return rows, ok
