// SPDX-License-Identifier: Apache-2.0
// options.h: tmrun's command line (one table) and the environment of a rank (one function).
// To add an option (e.g. --coordinator host:port), add a field to Config, a row to the table in options.cc,
// and, if ranks must see it, a line in ChildEnv.
#ifndef TOOLS_TMRUN_OPTIONS_H_
#define TOOLS_TMRUN_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "control/straggler.h"

namespace tmrun {

struct Config {
  int nproc = 0;                // -n: ranks on this node (with --join: optional, the job's world size)
  int nnodes = 1;               // --nnodes: nodes of the job, each running one tmrun with -n ranks
  int node_rank = 0;            // --node-rank: this node's index; global rank = node_rank * nproc + local rank
  std::string master;           // --master ADDR:PORT: node 0 serves the store there (and the coordinator on ADDR)
  bool no_prefix = false;       // --no-prefix: ranks write straight to tmrun's stdout/stderr
  std::string output_dir;       // --output-dir: rank-<r>.log per rank instead of tmrun's output
  int grace_ms = 5000;          // --grace-ms: SIGTERM -> SIGKILL delay when stopping ranks
  bool join = false;            // --join: start one joiner for an existing job
  bool node = false;            // --node: a node agent for the job at --master (no ranks of its own)
  int replace = -1;             // --replace R: the rank the joiner takes over
  int standby = 0;              // --standby K: spare processes (TRAINMOVER_ROLE=standby), started once the job trains
  std::string store;            // --store host:port: the job's store (with --join; --master is the same)
  std::string token_file;       // --token-file: the job's token (nodes K > 0 and joiners; else TRAINMOVER_TOKEN)
  std::string coordinator;      // --coordinator host:port (else TRAINMOVER_COORDINATOR, else an embedded one)
  bool no_coordinator = false;  // --no-coordinator: plain pass-through ranks
  int heartbeat_timeout_ms = 10000;  // --heartbeat-timeout-ms: the embedded coordinator's (failure detection)
  bool no_shim = false;         // --no-shim: the ranks get no LD_PRELOAD of the shim
  std::string shim;             // --shim PATH: the shim to preload (default: this build's, libraries.h)
  trainmover::control::StragglerOptions straggler;  // --straggler-*: the embedded coordinator's (docs/stragglers.md)
  bool straggler_given = false;                      // any --straggler-* given (refused without an embedded one)
  bool hostnccl = false;        // --hostnccl: the ranks' NCCL is hostnccl (no GPU needed)
  std::string hostnccl_path;    // where hostnccl is (set by ParseArgs when --hostnccl)
  std::vector<std::string> command;
};

// What a rank's environment is made from, besides the Config.
struct JobInfo {
  int world = 0;           // every rank of every node
  int nproc_per_node = 0;  // ranks per node (LOCAL_WORLD_SIZE)
  std::string store_host;
  uint16_t store_port = 0;
  std::string master_addr;
  uint16_t master_port = 0;
  std::string token;  // the job's token: the store's and the coordinator's (TMRUN_STORE_TOKEN)
};

// Parses argv. Returns -1 to go on, else the exit code to end with (0 after --help; 2 on error, usage printed).
int ParseArgs(int argc, char** argv, Config* cfg);

// The full environment of global rank `rank`: tmrun's own environment with the launcher variables set
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, TMRUN_STORE, and
// for a joiner TRAINMOVER_ROLE=joiner TRAINMOVER_REPLACE=<rank>), the shim first in LD_PRELOAD (unless
// --no-shim) and with --hostnccl TRAINMOVER_NCCL_LIBRARY (or, with --no-shim, hostnccl preloaded), as
// "NAME=value" strings. A joiner gets
// the variables rank `rank` got on its own node; a standby (`standby`) those of the rank it warms up as, and
// TRAINMOVER_ROLE=standby.
std::vector<std::string> ChildEnv(const Config& cfg, const JobInfo& job, int rank, bool standby = false);

}  // namespace tmrun

#endif  // TOOLS_TMRUN_OPTIONS_H_
