// SPDX-License-Identifier: Apache-2.0
#include "straggler.h"

#include <algorithm>
#include <cstdlib>

namespace trainmover::control {

namespace {

bool ParseFraction(const std::string& v, double lo, double hi, double* out) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= lo && x <= hi)) return false;
  *out = x;
  return true;
}

bool ParseCount(const std::string& v, long lo, long hi, long* out) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > hi) return false;
  *out = x;
  return true;
}

}  // namespace

constexpr StragglerFlag kFlags[] = {
    {"--straggler-policy", "P",
     "report (default): flag and report stragglers; migrate: also move a flagged rank away (planned migration)"},
    {"--straggler-threshold", "F",
     "flag a rank whose compute per step is above its peers' median by more than F "
     "(default 0.1 = 10%)"},
    {"--straggler-clear", "F", "a flagged rank recovers at or below the peers' median * (1 + F) (default 0.05)"},
    {"--straggler-windows", "N", "consecutive windows (heartbeats) above the threshold to flag (default 3)"},
    {"--straggler-clear-windows", "N", "consecutive windows at or below --straggler-clear to recover (default 3)"},
    {"--straggler-cooldown-s", "S", "migrate: never the same rank twice within S seconds (default 600)"},
    {"--straggler-spare-hosts", "H1,H2",
     "the job's spare hosts (node agents there): migrate starts the joiner on the first listed host that is not the "
     "straggler's, and a failed rank's replacement goes there when its own host cannot take it; default: none (the "
     "coordinator's host)"},
};

std::span<const StragglerFlag> StragglerFlags() { return kFlags; }

int ParseStragglerFlag(const std::string& flag, const std::string& value, StragglerOptions* o, std::string* err) {
  long n = 0;
  bool ok = true;
  if (flag == "--straggler-policy") {
    ok = value == "report" || value == "migrate";
    if (ok) o->policy = value == "migrate" ? StragglerPolicy::kMigrate : StragglerPolicy::kReport;
  } else if (flag == "--straggler-threshold") {
    ok = ParseFraction(value, 1e-6, 100, &o->detector.threshold);
  } else if (flag == "--straggler-clear") {
    ok = ParseFraction(value, 0, 100, &o->detector.clear);
  } else if (flag == "--straggler-windows") {
    ok = ParseCount(value, 1, 1000, &n);
    if (ok) o->detector.flag_windows = static_cast<int>(n);
  } else if (flag == "--straggler-clear-windows") {
    ok = ParseCount(value, 1, 1000, &n);
    if (ok) o->detector.clear_windows = static_cast<int>(n);
  } else if (flag == "--straggler-cooldown-s") {
    ok = ParseCount(value, 0, 86400 * 365, &n);
    if (ok) o->cooldown_ms = static_cast<uint64_t>(n) * 1000;
  } else if (flag == "--straggler-spare-hosts") {
    o->spare_hosts.clear();
    for (size_t i = 0; i <= value.size();) {
      size_t c = value.find(',', i);
      if (c == std::string::npos) c = value.size();
      if (c > i) o->spare_hosts.push_back(value.substr(i, c - i));
      i = c + 1;
    }
    ok = !o->spare_hosts.empty();
  } else {
    return 0;
  }
  if (!ok) {
    *err = flag + ": invalid value '" + value + "' (see --help)";
    return -1;
  }
  return 1;
}

std::string StragglerParams::Check() const {
  if (!(threshold > 0 && threshold < 100)) return "threshold must be a fraction > 0 (0.1 = 10%)";
  if (!(clear >= 0 && clear <= threshold)) return "clear must be between 0 and the threshold";
  if (flag_windows < 1 || flag_windows > 1000) return "flag windows must be 1..1000";
  if (clear_windows < 1 || clear_windows > 1000) return "clear windows must be 1..1000";
  if (warmup_windows < 0 || warmup_windows > 1000) return "warm-up windows must be 0..1000";
  return "";
}

double LowerQuartile(std::vector<double>& v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 4), v.end());
  return v[v.size() / 4];
}

double Median(std::vector<double>& v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

namespace {

// A window's compute figure: the lower quartile of its steps' compute times (the mean when the sender gave none).
double ComputeFigure(const StepWindow& w) {
  return w.compute_p25_ns ? static_cast<double>(w.compute_p25_ns) : static_cast<double>(w.compute_ns) / w.steps;
}

// The median of `sorted` without its element at position `skip` (sorted.size() >= 2), in O(1).
double MedianWithout(const std::vector<double>& sorted, size_t skip) {
  const size_t m = sorted.size() - 1;
  auto at = [&](size_t i) { return sorted[i < skip ? i : i + 1]; };
  return m % 2 ? at(m / 2) : (at(m / 2 - 1) + at(m / 2)) / 2;
}

}  // namespace

bool StragglerDetector::Round(const std::vector<RankSample>& samples, uint64_t now_ns,
                              std::vector<StragglerChange>* changes) {
  std::vector<const RankSample*> in;
  for (const RankSample& s : samples) {
    if (s.window.steps > 0) in.push_back(&s);
  }
  if (in.size() < 2) return false;
  std::vector<double> compute, wall;
  for (const RankSample* s : in) {
    compute.push_back(ComputeFigure(s->window));
    wall.push_back(static_cast<double>(s->window.compute_ns + s->window.wait_ns) / s->window.steps);
  }
  job_step_ns_ = Median(wall);
  std::vector<double> sorted = compute;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < in.size(); ++i) {
    const RankSample& s = *in[i];
    const double c = compute[i];
    const size_t pos = static_cast<size_t>(std::lower_bound(sorted.begin(), sorted.end(), c) - sorted.begin());
    const double peers = MedianWithout(sorted, pos);
    StragglerState& st = states_[s.process];
    st.rank = s.rank;
    st.rounds++;
    st.score = peers > 0 ? c / peers - 1 : 0;
    st.compute_ms = c / 1e6;
    st.wait_ms = static_cast<double>(s.window.wait_ns) / s.window.steps / 1e6;
    if (st.rounds <= static_cast<uint64_t>(p_.warmup_windows)) continue;
    if (!st.flagged) {
      st.above = st.score > p_.threshold ? st.above + 1 : 0;
      if (st.above >= p_.flag_windows) {
        st.flagged = true;
        st.above = 0;
        st.below = 0;
        st.since_ns = now_ns;
        changes->push_back(StragglerChange{s.process, s.rank, true, st});
      }
    } else {
      st.below = st.score <= p_.clear ? st.below + 1 : 0;
      if (st.below >= p_.clear_windows) {
        st.flagged = false;
        st.above = 0;
        st.below = 0;
        st.since_ns = now_ns;
        changes->push_back(StragglerChange{s.process, s.rank, false, st});
      }
    }
  }
  return true;
}

}  // namespace trainmover::control
