// SPDX-License-Identifier: Apache-2.0
#include "shim_agent.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "base/launcher.h"
#include "base/log.h"
#include "core/shim_state.h"
#include "migration.h"

namespace trainmover::control {

namespace {

std::atomic<Agent*> g_agent{nullptr};
// A worker whose launcher named its rank (RANK, WORLD_SIZE) registers with that rank, whatever communicator it
// creates first (tmAgentStart); set once before the agent starts.
bool g_rank_from_launcher = false;

}  // namespace

CommCreated DescribeVComm(const shim::VComm* v) {
  CommCreated c;
  c.comm_key = v->comm_key;
  const shim::Lineage& l = v->lineage;
  c.lineage.kind = static_cast<uint8_t>(static_cast<int>(l.kind) + 1);  // shim::CommKind starts at 0
  c.lineage.index = static_cast<uint32_t>(l.index);
  c.lineage.parent_key = l.parent_key;
  c.lineage.child_index = static_cast<uint32_t>(l.child_index);
  c.lineage.color = l.color;
  c.lineage.key = l.key;
  c.lineage.excluded.assign(l.excluded.begin(), l.excluded.end());
  c.lineage.id_hash = l.id_hash;
  c.rank = l.rank;
  c.nranks = l.nranks;
  c.device = l.device;
  c.blocking = l.blocking ? 1 : 0;
  return c;
}

namespace {

void Observe(void*, shim::VComm* v, bool created) {
  Agent* a = g_agent.load(std::memory_order_acquire);
  if (!a) return;
  // A joiner's (or a standby's) sandboxed communicators are not the job's: they are described in READY and reported
  // (with the leaver's keys) when it switches in, so they never displace the leaver in the coordinator's view.
  const bool sandboxed_joiner = shim::ProcessRole() != shim::Role::kWorker && shim::ProcessSandboxed();
  if (!created) {
    if (!sandboxed_joiner) a->ReportCommDestroyed(v->comm_key);
    return;
  }
  if (!sandboxed_joiner) a->ReportCommCreated(DescribeVComm(v));
  // The first names the rank of a process that has none from its launcher. Not a launched worker's: its first
  // communicator may be a group's (tm-train --tp/--pp: the DP group's, rank 0 of 1), and an agent that registered
  // only after it was created (a loaded machine, a coordinator started late) claimed rank 0 in every process.
  if (v->lineage.index == 0 && shim::ProcessRole() != shim::Role::kStandby && !g_rank_from_launcher) {
    a->ReportRankWorld(v->lineage.rank, v->lineage.nranks);
  }
}

int64_t OnSafePoint(void*, int64_t step) {
  ShimAgentSafePoint(step);
  return step;
}

// A non-blocking communicator completes (and is reported with its size) at the first ncclCommGetAsyncError that
// says success; a program that never polls one would leave it unreported, so the agent polls those (the call is
// thread-safe, as NCCL's watchdog use requires).
void PollIncomplete() {
  for (shim::VComm* v : shim::LiveVComms()) {
    if (v->magic != shim::VComm::kMagic || v->complete.load(std::memory_order_acquire) || shim::IsSandboxed(v)) continue;
    ncclResult_t async = ncclSuccess;
    (void)ncclCommGetAsyncError(shim::AsHandle(v), &async);
  }
}

// Region table polling (agent thread): sent when names or sizes change.
void PollRegions() {
  // Agent thread only. Never destroyed: the agent thread may still poll while the process runs its static
  // destructors at exit (a destroyed vector here crashed a rank at its normal end).
  static std::vector<Region>& last = *new std::vector<Region>();
  static bool sent = false;
  std::vector<Region> now;
  for (const shim::Region& r : shim::Regions()) now.push_back(Region{r.name, r.bytes});
  if (sent && now == last) return;
  last = now;
  sent = true;
  if (Agent* a = g_agent.load(std::memory_order_acquire)) a->ReportRegions(std::move(now));
}

// REGISTER_ACK: a joiner's sandbox answers from the table of the rank it replaces, a standby's from the table of
// the rank it warms up as (the first ack that says).
void OnRegistered(const RegisterAck& a) {
  if (shim::ProcessRole() == shim::Role::kWorker) return;
  std::vector<shim::ReplacedComm> table;
  for (const CommCreated& c : a.replaced_comms) {
    shim::ReplacedComm e;
    e.index = c.lineage.index;
    e.kind = static_cast<shim::CommKind>(c.lineage.kind - 1);  // LineageKind starts at 1
    e.nranks = c.nranks;
    e.rank = c.rank;
    e.device = c.device;
    e.blocking = c.blocking != 0;
    table.push_back(e);
  }
  shim::SetReplacedComms(std::move(table), a.has_table != 0);
}

void StopAtExit() {
  if (Agent* a = g_agent.load(std::memory_order_acquire)) a->Stop(/*bye=*/true);
}

}  // namespace

Agent* ShimAgent() { return g_agent.load(std::memory_order_acquire); }

void ShimAgentSafePoint(int64_t step) {
  if (Agent* a = g_agent.load(std::memory_order_acquire)) a->ReportSafePoint(step);
}

}  // namespace trainmover::control

namespace trainmover::shim {

// Strong definition of the shim's weak hook (shim_state.h). Called once, on the initialising thread.
extern "C" void tmAgentStart(const Config* config) {
  using namespace trainmover::control;
  if (config->token.empty()) {
    TM_WARN(kLogControl,
            "TRAINMOVER_COORDINATOR is set but TRAINMOVER_TOKEN is not: the coordinator will reject "
            "this process; set the job's token (tmrun sets both)");
  }
  Agent::Options o;
  o.coordinator = config->coordinator;
  o.token = config->token;
  o.heartbeat_ms = static_cast<int>(config->heartbeat_ms);
  o.silence_timeout_ms = static_cast<int>(config->coordinator_timeout_ms);
  // A worker's identity is its launcher's (torchrun, tmrun: RANK, WORLD_SIZE) when it has one, not the rank in
  // whichever communicator a framework happens to create first (base/launcher.h). A joiner's rank is the one
  // it replaces; a standby has none until it takes one, and registers the rank it warms up as (its launcher's) as
  // the one whose communicator table its sandbox answers from.
  const base::LauncherIdentity launcher = base::LauncherFromEnv();
  const bool worker = config->role == Role::kWorker;
  const int32_t replace = config->role == Role::kStandby ? launcher.rank : static_cast<int32_t>(config->replace);
  o.self = DescribeSelf(RoleName(config->role), worker ? launcher.rank : -1, worker ? launcher.world : -1, replace);
  g_rank_from_launcher = worker && launcher.rank >= 0;
  if (g_rank_from_launcher) {
    TM_INFO(kLogControl, "launcher %s: rank %d of %d (RANK, WORLD_SIZE)", launcher.launcher.c_str(), launcher.rank,
            launcher.world);
  }
  auto* agent = new Agent(o);  // lives until exit
  agent->SetTick(
      [] {
        PollRegions();
        PollIncomplete();
      },
      200);
  agent->SetRegisteredHandler(OnRegistered);
  agent->SetStepTotals([](uint64_t after) {
    const SafePointRecord sp = GetSafePoint();
    return Agent::StepTotals{sp.timed_steps, sp.wall_ns, sp.wait_ns, StepComputeP25Ns(after)};
  });
  g_agent.store(agent, std::memory_order_release);
  SetVCommObserver(Observe, nullptr);
  SetSafePointHook(OnSafePoint, nullptr);
  trainmover::migration::InstallMigration(agent);  // replaces the hook (and still reports every step)
  agent->Start();
  std::atexit(StopAtExit);
  TM_INFO(kLogControl, "agent started, coordinator %s", config->coordinator.c_str());
}

}  // namespace trainmover::shim
