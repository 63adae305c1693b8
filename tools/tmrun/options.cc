// SPDX-License-Identifier: Apache-2.0
#include "options.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "libraries.h"

extern char** environ;

namespace tmrun {
namespace {

using Setter = std::function<bool(Config*, const std::string&)>;

struct Option {
  const char* name;     // long form
  const char* alias;    // short form or nullptr
  const char* metavar;  // nullptr: a flag without a value
  const char* help;
  Setter set;
};

bool ToInt(const std::string& s, int lo, int* out) {
  char* end = nullptr;
  errno = 0;
  long v = strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || errno || v < lo || v > 1000000) return false;
  *out = static_cast<int>(v);
  return true;
}

// Every option; the --straggler-* rows come from trainmoverd's table (control/straggler.h) and configure the
// embedded coordinator.
const std::vector<Option>& Table() {
  static const std::vector<Option> table = [] {
    std::vector<Option> rows = {
      {"--nproc", "-n", "N", "ranks on this node (with --join: optional, checked against the job's world size)",
       [](Config* c, const std::string& v) { return ToInt(v, 1, &c->nproc); }},
      {"--nnodes", nullptr, "N", "nodes in the job, one tmrun each (default 1)",
       [](Config* c, const std::string& v) { return ToInt(v, 1, &c->nnodes); }},
      {"--node-rank", nullptr, "K", "this node's index, 0..N-1 (default 0); node 0 serves the store",
       [](Config* c, const std::string& v) { return ToInt(v, 0, &c->node_rank); }},
      {"--master", nullptr, "ADDR:PORT", "node 0's address: the store listens there, the coordinator on ADDR",
       [](Config* c, const std::string& v) { return !(c->master = v).empty(); }},
      {"--no-prefix", nullptr, nullptr, "do not prefix rank output with '[r] '",
       [](Config* c, const std::string&) { return c->no_prefix = true; }},
      {"--output-dir", nullptr, "DIR", "write each rank's stdout and stderr to DIR/rank-<r>.log",
       [](Config* c, const std::string& v) { return !(c->output_dir = v).empty(); }},
      {"--grace-ms", nullptr, "MS", "delay between SIGTERM and SIGKILL when stopping ranks (default 5000)",
       [](Config* c, const std::string& v) { return ToInt(v, 0, &c->grace_ms); }},
      {"--node", nullptr, nullptr, "a node agent: start processes on this host when the job's coordinator asks",
       [](Config* c, const std::string&) { return c->node = true; }},
      {"--join", nullptr, nullptr, "start one joiner for rank --replace of the job at --store",
       [](Config* c, const std::string&) { return c->join = true; }},
      {"--replace", nullptr, "R", "the rank a joiner takes over (with --join)",
       [](Config* c, const std::string& v) { return ToInt(v, 0, &c->replace); }},
      {"--standby", nullptr, "K",
       "K standbys on this node: the command again with TRAINMOVER_ROLE=standby, started once every rank of "
       "the job trains; standby k warms up as this node's k-th rank (mod --nproc) and waits to replace a rank that fails",
       [](Config* c, const std::string& v) { return ToInt(v, 1, &c->standby); }},
      {"--store", nullptr, "HOST:PORT", "the job's key-value store (with --join; same as --master)",
       [](Config* c, const std::string& v) { return !(c->store = v).empty(); }},
      {"--token-file", nullptr, "FILE", "the job's token (nodes K > 0, --join; default: TRAINMOVER_TOKEN)",
       [](Config* c, const std::string& v) { return !(c->token_file = v).empty(); }},
      {"--coordinator", nullptr, "HOST:PORT", "trainmoverd of the job (default: TRAINMOVER_COORDINATOR, else embedded)",
       [](Config* c, const std::string& v) { return !(c->coordinator = v).empty(); }},
      {"--heartbeat-timeout-ms", nullptr, "MS",
       "the embedded coordinator declares a silent rank failed after MS without a heartbeat (default 10000)",
       [](Config* c, const std::string& v) { return ToInt(v, 100, &c->heartbeat_timeout_ms); }},
      {"--no-coordinator", nullptr, nullptr, "no control plane: the ranks get no TRAINMOVER_COORDINATOR",
       [](Config* c, const std::string&) { return c->no_coordinator = true; }},
      {"--no-shim", nullptr, nullptr, "do not preload the shim (libtrainmover.so) into the ranks",
       [](Config* c, const std::string&) { return c->no_shim = true; }},
      {"--shim", nullptr, "PATH", "the shim to preload (default: the libtrainmover.so of this tmrun's build)",
       [](Config* c, const std::string& v) { return !(c->shim = v).empty(); }},
      {"--hostnccl", nullptr, nullptr, "the ranks' NCCL is hostnccl, on host memory (machines without a GPU)",
       [](Config* c, const std::string&) { return c->hostnccl = true; }},
  };
    for (const trainmover::control::StragglerFlag& f : trainmover::control::StragglerFlags()) {
      rows.push_back({f.name, nullptr, f.metavar, f.help, [name = std::string(f.name)](Config* c, const std::string& val) {
                     std::string err;
                     c->straggler_given = true;
                     return trainmover::control::ParseStragglerFlag(name, val, &c->straggler, &err) == 1;
                   }});
    }
    return rows;
  }();
  return table;
}

void Usage(FILE* out) {
  fprintf(out,
          "usage: tmrun -n N [options] [--] command [args...]\n"
          "       tmrun --nnodes N --node-rank K --master ADDR:PORT -n P [options] [--] command [args...]\n"
          "       tmrun --join --replace R --master ADDR:PORT [options] [--] command [args...]\n"
          "       tmrun --node --master ADDR:PORT [--token-file FILE]\n"
          "options:\n");
  for (const Option& o : Table()) {
    std::string lhs = std::string(o.alias ? std::string(o.alias) + ", " : "") + o.name;
    if (o.metavar) lhs += std::string(" ") + o.metavar;
    fprintf(out, "  %-26s %s\n", lhs.c_str(), o.help);
  }
  fprintf(out, "  %-26s %s\n", "-h, --help", "this text");
  fprintf(out, "The straggler options configure the embedded coordinator, as trainmoverd's (docs/stragglers.md).\n");
}

}  // namespace

int ParseArgs(int argc, char** argv, Config* cfg) {
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "-h" || a == "--help") {
      Usage(stdout);
      return 0;
    }
    if (a.empty() || a[0] != '-') break;  // the command starts here
    std::string value;
    bool inline_value = false;
    if (size_t eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      inline_value = true;
    }
    const Option* opt = nullptr;
    for (const Option& o : Table()) {
      if (a == o.name || (o.alias && a == o.alias)) opt = &o;
    }
    if (!opt) {
      fprintf(stderr, "tmrun: unknown option '%s'\n", argv[i]);
      Usage(stderr);
      return 2;
    }
    if (opt->metavar && !inline_value) {
      if (i + 1 >= argc) {
        fprintf(stderr, "tmrun: %s needs a value\n", opt->name);
        return 2;
      }
      value = argv[++i];
    } else if (!opt->metavar && inline_value) {
      fprintf(stderr, "tmrun: %s takes no value\n", opt->name);
      return 2;
    }
    if (!opt->set(cfg, value)) {
      fprintf(stderr, "tmrun: bad value '%s' for %s\n", value.c_str(), opt->name);
      return 2;
    }
  }
  for (; i < argc; ++i) cfg->command.emplace_back(argv[i]);
  const char* problem = nullptr;
  if (cfg->join && cfg->store.empty()) cfg->store = cfg->master;
  if (cfg->node && (cfg->master.empty() || !cfg->command.empty() || cfg->nproc > 0 || cfg->join))
    problem = "--node takes --master ADDR:PORT, no -n, no --join and no command";
  else if (cfg->node)
    problem = nullptr;
  else if (cfg->nproc <= 0 && !cfg->join)
    problem = "-n N is required";
  else if (cfg->command.empty())
    problem = "no command given";
  else if (cfg->join && (cfg->replace < 0 || cfg->store.empty()))
    problem = "--join needs --replace R and --master (or --store)";
  else if (cfg->join && cfg->nproc > 0 && cfg->replace >= cfg->nproc * cfg->nnodes)
    problem = "--replace R must be below the job's world size";
  else if (!cfg->join && (cfg->replace >= 0 || !cfg->store.empty()))
    problem = "--replace/--store need --join";
  else if (cfg->join && (cfg->nnodes != 1 || cfg->node_rank != 0))
    problem = "--join takes no --nnodes/--node-rank (it reads the job's layout from the store)";
  else if (cfg->node_rank >= cfg->nnodes)
    problem = "--node-rank K must be below --nnodes";
  else if (cfg->nnodes > 1 && cfg->master.empty())
    problem = "--nnodes > 1 needs --master ADDR:PORT (node 0's address)";
  else if (cfg->standby > 0 && (cfg->join || cfg->node || cfg->no_shim || cfg->no_coordinator))
    problem = "--standby K needs the shim and a coordinator (no --join, --node, --no-coordinator or --no-shim)";
  else if (cfg->no_shim && !cfg->shim.empty())
    problem = "--shim and --no-shim exclude each other";
  std::string why;
  if (!problem && cfg->straggler_given && !(why = cfg->straggler.detector.Check()).empty()) {
    why = "--straggler-*: " + why;
    problem = why.c_str();
  }
  if (!problem && !cfg->shim.empty() && access(cfg->shim.c_str(), R_OK) != 0) {
    why = "--shim " + cfg->shim + ": " + strerror(errno);
    problem = why.c_str();
  }
  if (!problem && !cfg->node && !cfg->no_shim && cfg->shim.empty() &&
      (cfg->shim = LocateLibrary(Library::kShim, &why)).empty()) {
    why = "the shim " + why + " (give --shim PATH, or --no-shim)";
    problem = why.c_str();
  }
  if (!problem && cfg->hostnccl && (cfg->hostnccl_path = LocateLibrary(Library::kHostnccl, &why)).empty()) {
    why = "--hostnccl: " + why;
    problem = why.c_str();
  }
  if (problem) {
    fprintf(stderr, "tmrun: %s\n", problem);
    Usage(stderr);
    return 2;
  }
  return -1;
}

std::vector<std::string> ChildEnv(const Config& cfg, const JobInfo& job, int rank, bool standby) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    const char* eq = strchr(*e, '=');
    if (eq) env[std::string(*e, static_cast<size_t>(eq - *e))] = eq + 1;
  }
  env["RANK"] = std::to_string(rank);
  env["WORLD_SIZE"] = std::to_string(job.world);
  env["LOCAL_RANK"] = std::to_string(rank % job.nproc_per_node);
  env["LOCAL_WORLD_SIZE"] = std::to_string(job.nproc_per_node);
  env["GROUP_RANK"] = std::to_string(rank / job.nproc_per_node);
  env["MASTER_ADDR"] = job.master_addr;
  env["MASTER_PORT"] = std::to_string(job.master_port);
  env["TMRUN_STORE"] = job.store_host + ":" + std::to_string(job.store_port);
  env["TMRUN_STORE_TOKEN"] = job.token;
  // The shim first in LD_PRELOAD (kept once); with --hostnccl the shim forwards to hostnccl, or without the
  // shim hostnccl itself is preloaded so that the program's NCCL calls bind to it.
  const std::string preload = cfg.no_shim ? (cfg.hostnccl ? cfg.hostnccl_path : "") : cfg.shim;
  if (!preload.empty()) {
    std::string& ld = env["LD_PRELOAD"];
    if (ld.find(preload) == std::string::npos) ld = ld.empty() ? preload : preload + ":" + ld;
  }
  if (cfg.hostnccl && !cfg.no_shim) env["TRAINMOVER_NCCL_LIBRARY"] = cfg.hostnccl_path;
  if (cfg.join) {
    env["TRAINMOVER_ROLE"] = "joiner";
    env["TRAINMOVER_REPLACE"] = std::to_string(cfg.replace);
  } else if (standby) {
    env["TRAINMOVER_ROLE"] = "standby";
    env.erase("TRAINMOVER_REPLACE");
  }
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

}  // namespace tmrun
