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
# Rank 1's window 4 -> 7: (50 + 3000 + 1 + 20) - 40 ms = 3031 ms; median step 10 ms; 3031 - 3 x 10 = 3001.
check("cold window", m["window_ms"], 3031.0)
check("cold median", m["median_step_ms"], 10.0)
check("cold downtime", m["downtime_ms"], 3001.0)
check("cold rank/steps", (m["window_rank"], m["window_steps"]), (1, [4, 7]))

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
check("live window", m["window_ms"], 75.0)  # rank 1: step 5 at 50 ms -> step 8 at 125 ms
check("live median", m["median_step_ms"], 10.0)
check("live downtime", m["downtime_ms"], 45.0)
check("live rank", m["window_rank"], 1)

# A stall split across both sides of K (held 15 ms inside safe point K, then 20 ms in the first operation after
# it) counts whole: 35 ms, where the longest single gap would show only 20.
split = steady(0, range(0, 6), 0, 10 * MS) + [{"rank": 0, "step": 6, "t_ns": 75 * MS, "role": "worker"},
                                              {"rank": 0, "step": 7, "t_ns": 105 * MS, "role": "worker"}]
split += steady(0, range(8, 12), 115 * MS, 10 * MS)
m = h.downtime(split, 6, 1)
check("split stall downtime", m["downtime_ms"], 35.0)
marks = h.first_marks(live)
check("shadow marks ignored", marks[1][5], 50 * MS)

try:
    h.downtime(steady(0, range(0, 5), 0, MS), 5, 1)
    fails.append("a timeline without steps 4 and 7 was accepted")
except h.HarnessError as e:
    check("missing marks message", "no safe point" in str(e), True)

for f in fails:
    print("FAIL:", f)
print("PASS" if not fails else f"{len(fails)} failures")
sys.exit(1 if fails else 0)
