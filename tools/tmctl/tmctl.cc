// SPDX-License-Identifier: Apache-2.0
// tmctl: the operator's command line for a TrainMover job (docs/operator.md).
//
//   tmctl [--coordinator host:port] [--token-file F] COMMAND
//     status [--json]                         processes, communicators, progress, migrations
//     migrate --rank R [--rank R2 ...] [--to H] [--spawn]     request a planned migration of rank(s) R
//     migrate --host H [--to H2] [--spawn]                     every rank whose process runs on host H
//     cancel [ID]                             cancel a migration (default: the active one)
//     watch [ID]                              follow a migration's phases until it ends
//     timeline [ID] --out FILE                a migration's phases as Chrome trace JSON
//     stragglers [--json]                     the straggler detector's view, per rank, and its actions
//     env                                     every TRAINMOVER_* parameter
//
// Exit status: 0 done, 1 the request failed (unreachable, rejected, refused), 2 usage error.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "base/config.h"
#include "base/spawn_process.h"  // IsSecretEnvName
#include "control/client.h"
#include "common/json.h"

using tm_tools::Json;
using trainmover::base::Status;
using trainmover::control::CancelReply;
using trainmover::control::CancelReq;
using trainmover::control::Client;
using trainmover::control::JsonReply;
using trainmover::control::MigrateReply;
using trainmover::control::MigrateReq;
using trainmover::control::MsgType;
using trainmover::control::StatusReq;
using trainmover::control::TimelineReq;

namespace {

constexpr int kTimeoutMs = 5000;

const char kUsage[] =
    "usage: tmctl [--coordinator host:port] [--token-file F] COMMAND [ARGS]\n"
    "commands:\n"
    "  status [--json]                        processes, communicators, steps, migrations\n"
    "  migrate --rank R [--to H] [--spawn]    migrate rank R (to host H; --spawn starts the joiner);\n"
    "                                         repeat --rank to move several ranks in one migration\n"
    "  migrate --host H [--to H2] [--spawn]   migrate every rank whose process runs on host H, in one migration\n"
    "  cancel [ID]                            cancel migration ID (default: the active one)\n"
    "  watch [ID]                             follow a migration until it ends\n"
    "  timeline [ID] --out FILE               write a migration's phases as Chrome trace JSON\n"
    "  stragglers [--json]                    compute and wait per step of every rank, who is flagged as a\n"
    "                                         straggler, the policy and what it did (docs/stragglers.md)\n"
    "  env                                    list every TRAINMOVER_* parameter\n"
    "The coordinator comes from --coordinator or TRAINMOVER_COORDINATOR, the token from --token-file or\n"
    "TRAINMOVER_TOKEN, never from the command line, where ps shows it to everyone (tmrun prints both when it\n"
    "starts an embedded coordinator).\n";

int Usage(const std::string& msg) {
  std::fprintf(stderr, "tmctl: %s\n%s", msg.c_str(), kUsage);
  return 2;
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "tmctl: %s\n", msg.c_str());
  return 1;
}

struct Ctx {
  std::string coordinator;
  std::string token;
};

int Fail(const Status& st) { return Fail(st.message()); }

Status Open(const Ctx& ctx, Client* c) {
  return c->Connect(ctx.coordinator, ctx.token, trainmover::control::kClientTool, kTimeoutMs)
      .Prefixed("coordinator " + ctx.coordinator);
}

Status FetchStatus(Client* c, Json* out, std::string* raw) {
  JsonReply r;
  TM_CHECK(c->Call(MsgType::kStatusReq, StatusReq{}, MsgType::kStatusReply, &r, kTimeoutMs));
  if (!r.ok) return Status::Error(r.json);
  if (raw) *raw = r.json;
  if (!tm_tools::ParseJson(r.json, out)) {
    return Status::Error("the coordinator sent a status document tmctl cannot parse");
  }
  return Status::Ok();
}

std::string Bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  char s[32];
  std::snprintf(s, sizeof(s), i ? "%.1f %s" : "%.0f %s", b, u[i]);
  return s;
}

// The STRAGGLER column: "yes +31%" while flagged, the score otherwise, "-" before the first round.
std::string StragglerCell(const Json& p) {
  if (p["straggler_score"].type != Json::kNum) return "-";
  char b[32];
  std::snprintf(b, sizeof(b), "%s%+.0f%%", p["straggler"].Bool() ? "yes " : "", p["straggler_score"].Num() * 100);
  return b;
}

// tmctl stragglers: the detector's parameters, each worker's latest window and the policy's actions.
void PrintStragglers(const Json& st) {
  const Json& s = st["stragglers"];
  std::printf("policy %s  threshold %+.0f%% for %lld windows, clear at %+.0f%% for %lld windows, cool-down %lld s\n",
              s["policy"].Str().c_str(), s["threshold"].Num() * 100, s["windows"].Int(), s["clear"].Num() * 100,
              s["clear_windows"].Int(), s["cooldown_s"].Int());
  std::printf("rounds %lld  job step %.3f ms\n\n", s["rounds"].Int(), s["job_step_ms"].Num());
  std::printf("%-6s %-4s %-28s %12s %12s %8s %-9s %s\n", "RANK", "ID", "HOST:PID", "COMPUTE ms", "WAIT ms", "SCORE",
              "FLAGGED", "SINCE");
  const long long now_ms = static_cast<long long>(time(nullptr)) * 1000;
  for (const Json& p : st["processes"].arr) {
    if (p["state"].Str() != "alive" || p["role"].Str() != "worker") continue;
    std::string since = "-";
    if (p["straggler_since_ms"].type == Json::kNum) {
      since = std::to_string((now_ms - p["straggler_since_ms"].Int()) / 1000) + " s ago";
    }
    const bool known = p["straggler_score"].type == Json::kNum;
    std::printf("%-6lld %-4lld %-28s %12.3f %12.3f %7.1f%% %-9s %s\n", p["rank"].Int(), p["id"].Int(),
                (p["host"].Str() + ":" + std::to_string(p["pid"].Int())).c_str(), p["compute_ms"].Num(),
                p["wait_ms"].Num(), p["straggler_score"].Num() * 100,
                !known ? "-" : p["straggler"].Bool() ? "yes" : "no", since.c_str());
  }
  if (s["actions"].arr.empty()) return;
  std::printf("\n%-6s %-10s %-12s %-10s %10s %10s %10s  %s\n", "RANK", "MIGRATION", "TO", "STATE", "BEFORE ms",
              "SLOW ms", "AFTER ms", "OUTCOME");
  for (const Json& a : s["actions"].arr) {
    std::printf("%-6lld %-10lld %-12s %-10s %10.3f %10.3f %10.3f  %s\n", a["rank"].Int(), a["migration"].Int(),
                a["host"].Str().empty() ? "(local)" : a["host"].Str().c_str(), a["state"].Str().c_str(),
                a["baseline_step_ms"].Num(), a["slow_step_ms"].Num(), a["after_step_ms"].Num(),
                a["outcome"].Str().c_str());
  }
}

void PrintStatus(const Json& st) {
  const Json& c = st["coordinator"];
  std::printf("coordinator %s  up %.1f s  heartbeat timeout %lld ms\n\n", c["address"].Str().c_str(),
              c["uptime_ms"].Num() / 1000, c["heartbeat_timeout_ms"].Int());
  std::printf("%-4s %-20s %-8s %-8s %-7s %-6s %-10s %-6s %-8s %-10s %s\n", "ID", "HOST", "PID", "ROLE", "STATE", "RANK",
              "STEP", "COMMS", "HB AGE", "STRAGGLER", "REGIONS");
  std::vector<const Json*> procs;  // by rank, unranked last, then by id
  for (const Json& p : st["processes"].arr) procs.push_back(&p);
  std::stable_sort(procs.begin(), procs.end(), [](const Json* a, const Json* b) {
    auto key = [](const Json* p) {
      return p->operator[]("rank").Int() < 0 ? (1ll << 40) : p->operator[]("rank").Int();
    };
    return key(a) < key(b);
  });
  for (const Json* pp : procs) {
    const Json& p = *pp;
    double total = 0;
    for (const Json& r : p["regions"].arr) total += r["bytes"].Num();
    std::string rank = std::to_string(p["rank"].Int()) + "/" + std::to_string(p["world"].Int());
    if (p["rank"].Int() < 0) rank = "-";
    std::string regions =
        p["regions"].arr.empty() ? "-" : std::to_string(p["regions"].arr.size()) + " (" + Bytes(total) + ")";
    std::printf("%-4lld %-20s %-8lld %-8s %-7s %-6s %-10lld %-6lld %-8s %-10s %s", p["id"].Int(),
                p["host"].Str().c_str(), p["pid"].Int(), p["role"].Str().c_str(), p["state"].Str().c_str(),
                rank.c_str(), p["step"].Int(), p["comms"].Int(),
                (std::to_string(p["heartbeat_age_ms"].Int()) + "ms").c_str(), StragglerCell(p).c_str(),
                regions.c_str());
    if (p["state"].Str() == "lost") std::printf("  (%s)", p["lost_reason"].Str().c_str());
    std::printf("\n");
  }
  // Standbys (docs/recovery.md, "Standbys"): warmed up as which rank, waiting, and which ranks they can take.
  bool standby_header = false;
  for (const Json* pp : procs) {
    const Json& p = *pp;
    if (p["role"].Str() != "standby" || p["state"].Str() != "alive") continue;
    if (!standby_header) std::printf("\n%-8s %-8s %-10s %-6s %s\n", "STANDBY", "PID", "WARMED AS", "READY", "TAKES");
    standby_header = true;
    const Json& s = p["standby"];
    std::printf("%-8lld %-8lld %-10s %-6s %s\n", p["id"].Int(), p["pid"].Int(),
                ("rank " + std::to_string(s["warm_rank"].Int())).c_str(), s["ready"].Bool() ? "yes" : "no",
                s["any_rank"].Bool() ? "any rank (tmRank)" : ("rank " + std::to_string(s["warm_rank"].Int()) + " only").c_str());
  }
  // Hosts: the node agent of each (tmrun --node, which starts joiners there) and the ranks running on it.
  std::map<std::string, std::pair<std::string, std::string>> hosts;  // host -> (node agent, ranks)
  for (const Json* pp : procs) {
    const Json& p = *pp;
    if (p["state"].Str() != "alive") continue;
    auto& [agent, ranks] = hosts[p["host"].Str()];
    if (p["role"].Str() == "node") {
      agent = "pid " + std::to_string(p["pid"].Int());
    } else if (p["rank"].Int() >= 0) {
      ranks += (ranks.empty() ? "" : " ") + std::to_string(p["rank"].Int());
    }
  }
  std::printf("\n%-20s %-14s %s\n", "HOST", "NODE AGENT", "RANKS");
  for (const auto& [host, v] : hosts) {
    std::printf("%-20s %-14s %s\n", host.c_str(), v.first.empty() ? "-" : v.first.c_str(),
                v.second.empty() ? "-" : v.second.c_str());
  }
  std::printf("\n%-20s %-18s %-7s %-9s %s\n", "COMMUNICATOR", "KIND", "NRANKS", "COMPLETE", "MEMBERS (rank:process)");
  for (const Json& cm : st["communicators"].arr) {
    std::string members;
    for (const Json& m : cm["members"].arr) {
      if (!members.empty()) members += " ";
      members += std::to_string(m["rank"].Int()) + ":" + std::to_string(m["process"].Int());
      if (m["state"].Str() != "alive") members += "(" + m["state"].Str() + ")";
    }
    std::printf("%-20s %-18s %-7lld %-9s %s\n", cm["key"].Str().c_str(),
                (cm["kind"].Str() + "#" + std::to_string(cm["index"].Int())).c_str(), cm["nranks"].Int(),
                cm["complete"].Bool() ? "yes" : "no", members.c_str());
  }
  if (!st["migrations"].arr.empty()) {
    std::printf("\n%-4s %-6s %-10s %-10s %s\n", "MIG", "RANK", "STATE", "ELAPSED", "REASON");
    for (const Json& m : st["migrations"].arr) {
      char el[32];
      std::snprintf(el, sizeof(el), "%.1fs", m["elapsed_ms"].Num() / 1000);
      std::printf("%-4lld %-6lld %-10s %-10s %s\n", m["id"].Int(), m["rank"].Int(), m["state"].Str().c_str(), el,
                  m["reason"].Str().c_str());
    }
  }
  bool header = false;
  for (const Json& m : st["migrations"].arr) {  // failure recoveries (docs/recovery.md)
    if (m["kind"].Str() != "recover") continue;
    if (!header) {
      std::printf("\n%-4s %-6s %-6s %-10s %-24s %-9s %-5s %-10s %s\n", "REC", "RANK", "EPOCH", "STATE", "DETECTED BY",
                  "ROLLBACK", "LOST", "DOWNTIME", "REPLACEMENT");
      header = true;
    }
    const Json& r = m["recovery"];
    char down[32];
    std::snprintf(down, sizeof(down), "%.1fms", m["downtime_ms"].Num());
    std::printf("%-4lld %-6lld %-6lld %-10s %-24.24s %-9lld %-5lld %-10s %s\n", m["id"].Int(), m["rank"].Int(),
                r["epoch"].Int(), m["state"].Str().c_str(), r["detected_by"].Str().c_str(), r["rollback_step"].Int(),
                r["lost_steps"].Int(), down, r["replacement"].Str().c_str());
    for (const Json& ph : m["phases"].arr) {  // the coordinator's phases, from the failure's detection
      if (ph["process"].Int() != 0) continue;
      if (ph["end_ms"].type == Json::kNum) {
        std::printf("     %-18s %8.1f ms .. %8.1f ms\n", ph["phase"].Str().c_str(), ph["start_ms"].Num(),
                    ph["end_ms"].Num());
      } else {
        std::printf("     %-18s %8.1f ms .. (running)\n", ph["phase"].Str().c_str(), ph["start_ms"].Num());
      }
    }
  }
}

const Json* FindMigration(const Json& st, long long id) {
  const Json* found = nullptr;
  for (const Json& m : st["migrations"].arr) {
    if (id == 0 || m["id"].Int() == id) found = &m;
  }
  return found;
}

bool Terminal(const std::string& s) { return s == "done" || s == "cancelled" || s == "failed" || s == "refused"; }

int Watch(const Ctx& ctx, long long id) {
  Client c;
  if (Status st = Open(ctx, &c); !st.ok()) return Fail(st);
  bool tty = isatty(1);
  size_t printed_phases = 0;
  std::string last_state;
  for (;;) {
    Json st;
    if (Status s = FetchStatus(&c, &st, nullptr); !s.ok()) return Fail(s);
    const Json* m = FindMigration(st, id);
    if (!m)
      return Fail(id ? "no migration with id " + std::to_string(id) : "no migration yet (tmctl migrate --rank R)");
    id = (*m)["id"].Int();
    std::string state = (*m)["state"].Str();
    const auto& phases = (*m)["phases"].arr;
    for (; printed_phases < phases.size(); ++printed_phases) {
      const Json& p = phases[printed_phases];
      std::printf("%s[%8.1f ms] process %-3lld %s\n", tty ? "\r\033[K" : "", p["start_ms"].Num(), p["process"].Int(),
                  p["phase"].Str().c_str());
    }
    if (state != last_state) {
      std::printf("%smigration %lld (rank %lld): %s\n", tty ? "\r\033[K" : "", id, (*m)["rank"].Int(), state.c_str());
      last_state = state;
    }
    double total = (*m)["bytes_total"].Num(), done = (*m)["bytes_done"].Num();
    if (total > 0) {
      int width = 40, fill = static_cast<int>(std::lround(width * std::min(1.0, done / total)));
      std::printf("%sstate transfer [%s%s] %5.1f%% %s / %s%s", tty ? "\r\033[K" : "", std::string(fill, '#').c_str(),
                  std::string(width - fill, '.').c_str(), 100 * done / total, Bytes(done).c_str(), Bytes(total).c_str(),
                  tty ? "" : "\n");
    }
    std::fflush(stdout);
    if (Terminal(state)) {
      std::printf("%smigration %lld %s after %.1f s%s%s\n", tty ? "\r\033[K" : "", id, state.c_str(),
                  (*m)["elapsed_ms"].Num() / 1000, (*m)["reason"].Str().empty() ? "" : ": ",
                  (*m)["reason"].Str().c_str());
      if (state == "done") std::printf("downtime %.1f ms\n", (*m)["downtime_ms"].Num());
      return state == "done" ? 0 : 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// The report of a finished migration: each phase's duration per process, the state moved and its
// throughput (over the joiner's transfer phase), the switch step and the downtime.
int Report(const Ctx& ctx, long long id) {
  Client c;
  Json st;
  if (Status s = Open(ctx, &c); !s.ok()) return Fail(s);
  if (Status s = FetchStatus(&c, &st, nullptr); !s.ok()) return Fail(s);
  const Json* m = FindMigration(st, id);
  if (!m) return Fail("no migration with id " + std::to_string(id));
  std::map<long long, std::string> who;
  for (const Json& p : st["processes"].arr) {
    who[p["id"].Int()] =
        "rank " + std::to_string(p["rank"].Int()) + " " + p["role"].Str() + " pid " + std::to_string(p["pid"].Int());
  }
  for (const Json& p : st["processes"].arr) {
    if (p["id"].Int() == (*m)["leaver"].Int())
      who[p["id"].Int()] = "rank " + std::to_string(p["rank"].Int()) + " leaver pid " + std::to_string(p["pid"].Int());
    if (p["id"].Int() == (*m)["joiner"].Int())
      who[p["id"].Int()] = "rank " + std::to_string(p["rank"].Int()) + " joiner pid " + std::to_string(p["pid"].Int());
  }
  std::printf("report of migration %lld (rank %lld): %s\n", id, (*m)["rank"].Int(), (*m)["state"].Str().c_str());
  std::printf("  %-32s %-22s %10s %10s\n", "PROCESS", "PHASE", "START ms", "DURATION ms");
  double transfer_ms = 0;
  for (const Json& p : (*m)["phases"].arr) {
    long long pid = p["process"].Int();
    std::string name = pid == 0 ? "coordinator" : (who.count(pid) ? who[pid] : "process " + std::to_string(pid));
    double start = p["start_ms"].Num(), end = p["end_ms"].Num(), dur = end > 0 ? end - start : 0;
    if (p["phase"].Str() == "transfer") transfer_ms = std::max(transfer_ms, dur);
    std::printf("  %-32s %-22s %10.1f %10.1f\n", name.c_str(), p["phase"].Str().c_str(), start, dur);
  }
  double bytes = (*m)["bytes_done"].Num();
  std::printf("  state moved: %s in %.1f ms (%.2f GB/s)\n", Bytes(bytes).c_str(), transfer_ms,
              transfer_ms > 0 ? bytes / (transfer_ms * 1e6) : 0.0);
  std::printf(
      "  switch step: %lld\n  downtime: %.1f ms (longest extra stall of a stayer between safe points S and S+1 "
      "over its median step time)\n",
      (*m)["switch_step"].Int(), (*m)["downtime_ms"].Num());
  return (*m)["state"].Str() == "done" ? 0 : 1;
}

// Every TRAINMOVER_* parameter, from the shim's configuration registry (lib/base/config.h): the same table
// trainmover-info prints, with the value this environment gives each.
int Env() {
  std::printf("%-26s %-12s %-24s %s\n", "PARAMETER", "DEFAULT", "VALUE", "MEANING (accepted values)");
  for (const trainmover::shim::ParamSpec& p : trainmover::shim::ConfigParams()) {
    const char* v = std::getenv(p.name);
    std::string shown = v && *v ? v : "(unset)";
    if (v && *v && trainmover::base::IsSecretEnvName(p.name)) shown = "(set, hidden)";
    std::printf("%-26s %-12s %-24s %s (%s)\n", p.name, p.default_value[0] ? p.default_value : "-", shown.c_str(), p.doc,
                p.accepted);
  }
  trainmover::shim::Config c;
  if (Status st = trainmover::shim::ConfigParse([](const char* n) { return std::getenv(n); }, &c); !st.ok()) {
    std::fprintf(stderr, "tmctl: %s\n", st.message().c_str());
    return 1;
  }
  return 0;
}

bool ParseId(const std::string& s, long long* id) {
  char* end = nullptr;
  *id = std::strtoll(s.c_str(), &end, 10);
  return !s.empty() && *end == '\0' && *id > 0;
}

}  // namespace

int main(int argc, char** argv) {
  (void)trainmover::shim::LogConfigureFromEnv(trainmover::base::LogLevel::kWarn);  // `tmctl env` reports errors
  Ctx ctx;
  if (const char* c = std::getenv("TRAINMOVER_COORDINATOR")) ctx.coordinator = c;
  if (const char* t = std::getenv("TRAINMOVER_TOKEN")) ctx.token = t;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (i + 1 >= argc) return Usage(a + " needs a value");
    if (a == "--coordinator") {
      ctx.coordinator = argv[++i];
    } else if (a == "--token") {
      return Usage("--token is gone: a token on the command line is visible to every user in ps; use "
                   "--token-file FILE or TRAINMOVER_TOKEN");
    } else if (a == "--token-file") {
      std::ifstream f(argv[++i], std::ios::binary);
      if (!f) return Usage(std::string("cannot read token file '") + argv[i] + "'");
      ctx.token.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      while (!ctx.token.empty() && (ctx.token.back() == '\n' || ctx.token.back() == '\r')) ctx.token.pop_back();
    } else {
      return Usage("unknown option '" + a + "'");
    }
  }
  if (i >= argc) return Usage("no command given");
  std::string cmd = argv[i++];
  std::vector<std::string> args(argv + i, argv + argc);
  if (cmd == "env") return args.empty() ? Env() : Usage("env takes no arguments");
  if (cmd != "status" && cmd != "migrate" && cmd != "cancel" && cmd != "watch" && cmd != "timeline" &&
      cmd != "stragglers") {
    return Usage("unknown command '" + cmd + "'");
  }

  // Parse the command's arguments before connecting, so usage errors need no coordinator.
  bool json = false, spawn = false;
  long long id = 0, rank = -1;
  std::vector<int32_t> more_ranks;   // --rank given again
  std::string host, from_host, out;  // host: --to (the target); from_host: --host (the ranks to move)
  for (size_t k = 0; k < args.size(); ++k) {
    const std::string& a = args[k];
    if ((cmd == "status" || cmd == "stragglers") && a == "--json") {
      json = true;
    } else if (cmd == "migrate" && a == "--rank" && k + 1 < args.size()) {
      char* end = nullptr;
      long long r = std::strtoll(args[++k].c_str(), &end, 10);
      if (*end || r < 0) return Usage("--rank needs a rank number >= 0");
      if (rank < 0) {
        rank = r;
      } else {
        more_ranks.push_back(static_cast<int32_t>(r));
      }
    } else if (cmd == "migrate" && a == "--to" && k + 1 < args.size()) {
      host = args[++k];
    } else if (cmd == "migrate" && a == "--host" && k + 1 < args.size()) {
      from_host = args[++k];
      if (from_host.empty()) return Usage("--host needs a host name (tmctl status lists them)");
    } else if (cmd == "migrate" && a == "--spawn") {
      spawn = true;
    } else if (cmd == "timeline" && a == "--out" && k + 1 < args.size()) {
      out = args[++k];
    } else if ((cmd == "cancel" || cmd == "watch" || cmd == "timeline") && id == 0 && a[0] != '-') {
      if (!ParseId(a, &id)) return Usage("'" + a + "' is not a migration id (see tmctl status)");
    } else {
      return Usage("unexpected argument '" + a + "' for " + cmd);
    }
  }
  if (cmd == "migrate" && rank < 0 && from_host.empty()) {
    return Usage("migrate needs --rank R or --host H (tmctl status lists the ranks and hosts)");
  }
  if (cmd == "migrate" && rank >= 0 && !from_host.empty()) return Usage("migrate takes --rank or --host, not both");
  if (cmd == "timeline" && out.empty()) return Usage("timeline needs --out FILE");
  if (ctx.coordinator.empty()) {
    return Usage("no coordinator: pass --coordinator host:port or set TRAINMOVER_COORDINATOR");
  }
  if (ctx.token.empty()) return Usage("no token: pass --token-file FILE or set TRAINMOVER_TOKEN");
  if (ctx.token.size() < trainmover::control::kMinTokenBytes) {
    return Usage("the token (TRAINMOVER_TOKEN or --token-file) has " + std::to_string(ctx.token.size()) +
                 " characters; a job's token has at least " + std::to_string(trainmover::control::kMinTokenBytes));
  }

  if (cmd == "watch") return Watch(ctx, id);
  Client c;
  if (Status s = Open(ctx, &c); !s.ok()) return Fail(s);
  if (cmd == "status" || cmd == "stragglers") {
    Json st;
    std::string raw;
    if (Status s = FetchStatus(&c, &st, &raw); !s.ok()) return Fail(s);
    if (json) {
      std::printf("%s\n", raw.c_str());
    } else if (cmd == "status") {
      PrintStatus(st);
    } else {
      PrintStragglers(st);
    }
    return 0;
  }
  if (cmd == "migrate") {
    if (!from_host.empty()) {  // every alive worker on that host, lowest rank first
      Json st;
      if (Status s = FetchStatus(&c, &st, nullptr); !s.ok()) return Fail(s);
      std::vector<int32_t> ranks;
      for (const Json& p : st["processes"].arr) {
        if (p["host"].Str() == from_host && p["role"].Str() == "worker" && p["state"].Str() == "alive" &&
            p["rank"].Int() >= 0) {
          ranks.push_back(static_cast<int32_t>(p["rank"].Int()));
        }
      }
      if (ranks.empty()) return Fail("no alive worker runs on host '" + from_host + "' (tmctl status lists the hosts)");
      std::sort(ranks.begin(), ranks.end());
      rank = ranks[0];
      more_ranks.assign(ranks.begin() + 1, ranks.end());
      std::printf("host %s: ranks", from_host.c_str());
      for (int32_t r : ranks) std::printf(" %d", r);
      std::printf("\n");
    }
    MigrateReq q;
    q.rank = static_cast<int32_t>(rank);
    q.more_ranks = more_ranks;
    q.host = host;
    q.spawn = spawn;
    MigrateReply r;
    if (Status s = c.Call(MsgType::kMigrateReq, q, MsgType::kMigrateReply, &r, kTimeoutMs); !s.ok()) return Fail(s);
    std::printf("%s (state %s)\n", r.message.c_str(), r.state.c_str());
    if (!r.accepted) return 1;
    std::fflush(stdout);
    int rc = Watch(ctx, static_cast<long long>(r.id));
    int rr = Report(ctx, static_cast<long long>(r.id));
    return rc ? rc : rr;
  }
  if (cmd == "cancel") {
    CancelReply r;
    if (Status s =
            c.Call(MsgType::kCancelReq, CancelReq{static_cast<uint64_t>(id)}, MsgType::kCancelReply, &r, kTimeoutMs);
        !s.ok()) {
      return Fail(s);
    }
    std::printf("%s\n", r.message.c_str());
    return r.ok ? 0 : 1;
  }
  // timeline
  JsonReply r;
  if (Status s = c.Call(MsgType::kTimelineReq, TimelineReq{static_cast<uint64_t>(id)}, MsgType::kTimelineReply, &r,
                        kTimeoutMs);
      !s.ok()) {
    return Fail(s);
  }
  if (!r.ok) return Fail(r.json);
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  if (!f || !(f << r.json << "\n")) return Fail("cannot write '" + out + "'");
  std::printf("wrote %s (open it in chrome://tracing or https://ui.perfetto.dev)\n", out.c_str());
  return 0;
}
