#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# tm-harness's downtime arithmetic on made-up timelines, exactly: a cold restart (the same rank marks step K
# twice), a live migration (the joiner's marks replace the leaver's, its shadow marks are ignored), and the
# refusal of a timeline that lacks the safe points around K.
import importlib.machinery
import importlib.util
import sys

path = sys.argv[1]
loader = importlib.machinery.SourceFileLoader("tm_harness", path)
spec = importlib.util.spec_from_loader("tm_harness", loader)
h = importlib.util.module_from_spec(spec)
loader.exec_module(h)

MS = 1_000_000
fails = []


def check(what, got, want):
    if got != want:
        fails.append(f"{what}: got {got!r}, want {want!r}")


def steady(rank, steps, t0, step_ns, role="worker"):
    return [{"rank": rank, "step": s, "t_ns": t0 + (s - steps[0]) * step_ns, "role": role} for s in steps]


# Cold restart at K=5: every step 10 ms; the first run marks 0..5, the resumed one marks 5..9 from 3 s later.
cold = []
for r in range(2):
    cold += steady(r, range(0, 6), 0, 10 * MS)
    cold += steady(r, range(5, 10), 50 * MS + 3000 * MS + r * MS, 10 * MS)
m = h.downtime(cold, 5, 2)
# Rank 1's gap 5 -> 6: (50 + 3000 + 1 + 10) - 50 ms = 3011 ms; median step 10 ms.
check("cold gap", m["gap_ms"], 3011.0)
check("cold median", m["median_step_ms"], 10.0)
check("cold downtime", m["downtime_ms"], 3001.0)
check("cold rank/step", (m["gap_rank"], m["gap_from_step"]), (1, 5))

# Live migration of rank 1 at switch step 6: rank 0 waits 40 ms in step 6 -> 7; the leaver marks 0..6; the
# joiner shadows steps 3..6 early (ignored) and marks 7..9 from then on.
live = steady(0, range(0, 6), 0, 10 * MS) + steady(0, range(6, 10), 60 * MS, 10 * MS)
for rec in live:
    if rec["step"] >= 7:
        rec["t_ns"] += 40 * MS
live += steady(1, range(0, 7), 0, 10 * MS)
live += steady(1, range(3, 7), 1 * MS, 1 * MS, role="joiner")
live += steady(1, range(7, 10), 115 * MS, 10 * MS, role="joiner")
m = h.downtime(live, 6, 2)
check("live gap", m["gap_ms"], 55.0)  # rank 1: 60 -> 115 ms
check("live median", m["median_step_ms"], 10.0)
check("live downtime", m["downtime_ms"], 45.0)
check("live rank", m["gap_rank"], 1)
marks = h.first_marks(live)
check("shadow marks ignored", marks[1][5], 50 * MS)

try:
    h.downtime(steady(0, range(0, 5), 0, MS), 5, 1)
    fails.append("a timeline without steps 5 and 6 was accepted")
except h.HarnessError as e:
    check("missing marks message", "no safe points" in str(e), True)

for f in fails:
    print("FAIL:", f)
print("PASS" if not fails else f"{len(fails)} failures")
sys.exit(1 if fails else 0)
