// SPDX-License-Identifier: Apache-2.0
// The process-side machine's world inside the shim (process.h): the agent, the VComms and the real NCCL, the
// UCX state transfer, the sandbox tape; and InstallMigration, which wires the machine to the agent and to the
// safe-point hook.
#include <dlfcn.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/cudart.h"
#include "base/launcher.h"
#include "base/thread.h"
#include "base/log.h"
#include "control/conn.h"
#include "core/binding.h"
#include "core/shim_state.h"
#include "hand_off.h"
#include "migration.h"
#include "process.h"
#include "recovery.h"
#include "recovery_msgs.h"
#include "sandbox/tape.h"
#include "shim_agent.h"
#include "standby_msgs.h"
#include "transfer/transfer.h"

namespace trainmover::migration {

namespace {

// Device or host memory: asked of the CUDA runtime only when the application loaded it (RTLD_NOLOAD).
transfer::MemoryType TypeOf(const void* p) {
  return base::IsDevicePointer(base::CudartIfLoaded(), p) ? transfer::MemoryType::kCuda : transfer::MemoryType::kHost;
}

std::vector<transfer::Region> LocalRegions() {
  std::vector<transfer::Region> out;
  for (const shim::Region& r : shim::Regions()) out.push_back(transfer::Region{r.name, r.ptr, r.bytes, TypeOf(r.ptr)});
  return out;
}

shim::VComm* VC(CommRef v) { return static_cast<shim::VComm*>(v); }

class ServerSource final : public StateSource {
 public:
  // tamper: the test knob TRAINMOVER_FAULT=tamper-descriptor (one byte of a region's address changed after the
  // MAC, as an attacker between the leaver and the joiner would).
  ServerSource(std::unique_ptr<transfer::StateServer> s, bool tamper)
      : s_(std::move(s)), descriptor_(s_->Descriptor()) {
    if (tamper && !descriptor_.empty()) descriptor_[descriptor_.size() - 40] ^= 0x01;
  }
  const std::vector<uint8_t>& Descriptor() const override { return descriptor_; }
  std::string Seal() override {
    transfer::Status st = s_->Seal();
    return st.ok() ? "" : st.ToString();
  }
  bool ReadableBeforeSeal() const override { return s_->DeviceBytes() == 0; }
  // Abandon, not Close: the joiner's host may be cut off (transfer.h says why that matters to UCX). The leaver
  // exits right after a hand-off that completed, so nothing is kept for long there.
  void Close() override { s_->Abandon(); }

 private:
  std::unique_ptr<transfer::StateServer> s_;
  std::vector<uint8_t> descriptor_;
};

// The joiner's prepared read: the client and what it prepared (destroyed in that order's reverse).
struct ClientSink final : StateSink {
  std::unique_ptr<transfer::StateClient> client;
  std::unique_ptr<transfer::PreparedFetch> prepared;
  size_t regions = 0;

  ~ClientSink() override { prepared.reset(); }
  std::string Read(bool corrupt, const std::function<void(uint64_t, uint64_t)>& progress,
                   std::string* summary) override {
    transfer::FetchOptions o;
    o.timeout_ms = HandOffTimeoutMs(prepared->bytes());
    o.progress = progress;
    if (corrupt) o.expected_checksums.assign(regions, 0x5eed5eed5eed5eedull);
    transfer::FetchResult res;
    transfer::Status st = prepared->Read(o, &res);
    if (!st.ok()) {
      TM_WARN(kLogMigration, "migration: state transfer failed: %s", st.ToString().c_str());
      return st.ToString();
    }
    char msg[200];
    std::snprintf(msg, sizeof(msg), "%llu bytes in %.3f s (%.2f GB/s) over %s, checksums verified",
                  static_cast<unsigned long long>(res.bytes), res.seconds, res.gbps, transfer::FetchPathName(res.path));
    TM_INFO(kLogMigration, "migration: state read: %s", msg);
    *summary = msg;
    return "";
  }
};

ProcessMachine* g_machine = nullptr;  // never destroyed: used by the agent thread up to _exit

// At the process's end (exit or World::Exit, after the agent stopped: no job starts any more), the background
// jobs that finished are joined, not left behind (ThreadSanitizer: thread leak of tm-expose, tm-build).
void ReapMigrationJobs() {
  if (g_machine) g_machine->ReapJobs();
}

class ShimWorld final : public World {
 public:
  explicit ShimWorld(control::Agent* a) : agent_(a) {}

  void SendEvent(control::Event e) override {
    if (agent_) agent_->SendEvent(std::move(e));
  }
  bool HasAgent() const override { return agent_ != nullptr; }
  bool Connected() const override { return agent_ && agent_->connected(); }

  void Exit(int code, const std::string& line) override {
    char host[256] = "?";
    gethostname(host, sizeof(host) - 1);
    std::fflush(stdout);
    std::fprintf(stderr, "%s:%d:%d [%d] TRAINMOVER INFO %s\n", host, getpid(), static_cast<int>(gettid()),
                 FirstCommRank(), line.c_str());
    std::fflush(stderr);
    RecoveryDrain();
    if (agent_) agent_->Stop(/*bye=*/true);
    ReapMigrationJobs();
    _exit(code);
  }

  bool IsJoiner() const override { return shim::ProcessRole() != shim::Role::kWorker; }
  bool IsStandby() const override { return shim::ProcessRole() == shim::Role::kStandby; }
  void PrepareSnapshots() override { RecoveryPrepareSlots(); }
  void AwaitSnapshots() override { RecoveryAwaitSlots(); }
  void SnapshotSwitchStep(int64_t step) override { RecoverySnapshotSwitchStep(step); }
  int32_t WarmRank() const override { return base::LauncherFromEnv().rank; }
  bool FollowsRank() const override { return shim::RankFollowed(); }
  void TakeRank(int32_t rank, int32_t world) override {
    shim::SetAssignedRank(rank);
    base::LogSetRank(rank);
    if (agent_) agent_->ReportRankWorld(rank, world);  // what it registers with from now on
  }
  bool Sandboxed() const override { return shim::ProcessSandboxed(); }
  void LeaveSandbox() override { shim::SetProcessSandboxed(false); }
  void SetLeaving(bool leaving) override { shim::SetProcessLeaving(leaving); }
  std::string Fault() const override { return shim::ProcessConfig().fault; }
  int64_t ShadowIters() const override { return shim::ProcessConfig().shadow_iters; }
  uint64_t HoldTimeoutMs() const override { return static_cast<uint64_t>(shim::ProcessConfig().hold_timeout_ms); }
  uint64_t PhaseTimeoutMs() const override { return static_cast<uint64_t>(shim::ProcessConfig().phase_timeout_ms); }
  uint64_t TapeMaxBytes() const override { return static_cast<uint64_t>(shim::ProcessConfig().tape_max_bytes); }

  // auto: overlap unless the joiner (`destination` is "host H pid P") runs on this host and the host has under
  // 8 CPUs, where the two sides' hash threads (up to 4 each) would share the cores: measured on 2 cores,
  // overlapping made the switch slower than sealing first (docs/benchmarks.md, "Seal overlapped with the
  // transfer").
  bool SealOverlaps(const std::string& destination) const override {
    const std::string& mode = shim::ProcessConfig().seal_overlap;
    if (mode == "on" || mode == "off") return mode == "on";
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const bool same_host = destination.rfind("host " + std::string(host) + " ", 0) == 0;
    return !same_host || std::thread::hardware_concurrency() >= 8;
  }
  uint64_t MonotonicNs() const override { return control::NowMonotonicNs(); }
  uint64_t RealtimeNs() const override { return control::NowRealtimeNs(); }
  void Wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, uint64_t ms) override {
    cv.wait_for(lk, std::chrono::milliseconds(ms));
  }
  std::unique_lock<std::mutex> LockSafePoint(int64_t* step) override {
    std::unique_lock<std::mutex> lk(shim::SafePointMutex());
    *step = shim::GetSafePointLocked().step;
    return lk;
  }
  std::thread StartThread(const char* name, std::function<void()> fn) override {
    return base::StartThread(name, std::move(fn));  // tm-build, tm-fetch: named in top, gdb and perf
  }

  std::vector<CommRef> CommsWithKey(uint64_t key) override {
    std::vector<CommRef> out;
    for (shim::VComm* v : shim::LiveVComms()) {
      if (v->magic == shim::VComm::kMagic && v->comm_key == key) out.push_back(v);
    }
    return out;
  }
  int32_t FirstCommRank() override {
    std::vector<shim::VCommInfo> vs = shim::SnapshotVComms();
    return vs.empty() ? -1 : vs.front().lineage.rank;
  }
  std::vector<control::CommCreated> DescribeComms() override {
    std::vector<control::CommCreated> out;
    for (const shim::VCommInfo& vi : shim::SnapshotVComms()) out.push_back(control::DescribeVComm(vi.vcomm));
    return out;
  }
  std::vector<control::Region> RegionTable() override {
    std::vector<control::Region> out;
    for (const shim::Region& rg : shim::Regions()) out.push_back(control::Region{rg.name, rg.bytes});
    return out;
  }
  uint64_t CapturedCount() override { return shim::CapturedCount(); }
  std::vector<uint64_t> CapturedKeys() override {
    std::vector<uint64_t> keys;
    for (shim::VComm* v : shim::LiveVComms()) {
      if (v->magic == shim::VComm::kMagic && v->captured.load()) keys.push_back(v->comm_key);
    }
    return keys;
  }
  bool NewUniqueId(std::array<uint8_t, mig::kUniqueIdBytes>* id) override {
    ncclUniqueId uid;
    if (shim::g_real.GetUniqueId(&uid) != ncclSuccess) return false;
    std::memcpy(id->data(), uid.internal, id->size());
    return true;
  }

  // The real non-blocking ncclCommInitRankConfig with the VComm's config, polled until done or stopped.
  BuildOutcome BuildReplacement(CommRef ref, const mig::BuildEntry& e, const std::function<bool()>& stop) override {
    shim::VComm* v = VC(ref);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    if (v->lineage.has_config) {
      cfg = v->lineage.config;
      cfg.netName = v->lineage.net_name.empty() ? nullptr : v->lineage.net_name.c_str();
      cfg.commName = v->lineage.comm_name.empty() ? nullptr : v->lineage.comm_name.c_str();
    }
    cfg.blocking = 0;
    ncclUniqueId uid;
    std::memcpy(uid.internal, e.id.data(), sizeof(uid.internal));
    ncclComm_t c = nullptr;
    ncclResult_t r = shim::g_real.CommInitRankConfig(&c, e.nranks, uid, e.rank, &cfg);
    BuildOutcome out;
    // Polled with a growing pause (1 ms doubling to 16 ms): a build takes the library's init time (seconds with a
    // real NCCL), and the ranks still training need the cores more than this thread needs to notice at once.
    for (int pause_ms = 1; r == ncclInProgress; pause_ms = std::min(2 * pause_ms, 16)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
      if (stop()) {
        out.kind = BuildOutcome::Kind::kStopped;
        out.comm = c;
        return out;
      }
      ncclResult_t async = ncclSuccess;
      if (shim::g_real.CommGetAsyncError(c, &async) != ncclSuccess) async = ncclInternalError;
      r = async;
    }
    out.comm = c;
    if (r == ncclSuccess) {
      out.kind = BuildOutcome::Kind::kBuilt;
    } else {
      out.error = std::string("ncclCommInitRankConfig: ") +
                  (shim::g_real.GetErrorString ? shim::g_real.GetErrorString(r) : "error");
    }
    return out;
  }
  void FreeComm(void* comm) override { shim::g_real.CommAbort(static_cast<ncclComm_t>(comm)); }
  bool Stage(CommRef v, void* comm) override {
    shim::SetNextComm(VC(v), static_cast<ncclComm_t>(comm));
    return shim::RebindObjects(VC(v)) == ncclSuccess;
  }
  void* Unstage(CommRef v) override { return shim::AbortNext(VC(v)); }
  void* SwitchStayer(CommRef v) override { return shim::SwitchToNext(VC(v)); }
  // On tm-retire, at normal priority: a destroy takes locks the application's operations on the replacements
  // may need (UCX's context, the CUDA context), and a low-priority holder would make them wait longer.
  void RetireComm(void* comm) override { shim::g_real.CommDestroy(static_cast<ncclComm_t>(comm)); }
  void SwitchJoiner(CommRef ref, int32_t nranks, int32_t rank) override {
    shim::VComm* v = VC(ref);
    shim::SwitchToNext(v);
    std::lock_guard<std::mutex> vl(v->mu);
    v->lineage.nranks = nranks;
    v->lineage.rank = rank;
  }
  // The children of `v` (Split/Shrink) name it by key in their lineage: they take the new key too, and one already
  // reported is reported again, so that the coordinator's table (what a later migration of this rank compares
  // with) names parents by the keys the job knows.
  void Rekey(CommRef ref, uint64_t key) override {
    shim::VComm* v = VC(ref);
    if (v->magic != shim::VComm::kMagic) return;
    const uint64_t old = v->comm_key;
    v->comm_key = key;  // its sandboxed key was never reported (shim_agent.cc)
    rekeyed_.push_back(v);
    for (shim::VComm* c : shim::LiveVComms()) {
      if (c->magic != shim::VComm::kMagic || c->lineage.parent_key != old || c == v) continue;
      {
        std::lock_guard<std::mutex> lock(c->mu);
        c->lineage.parent_key = key;
      }
      const bool reported = std::find(rekeyed_.begin(), rekeyed_.end(), c) != rekeyed_.end();
      if (reported && agent_) agent_->ReportCommCreated(control::DescribeVComm(c));
    }
    if (agent_) agent_->ReportCommCreated(control::DescribeVComm(v));
  }

  std::unique_ptr<StateSource> Expose(const std::string& destination, std::string* error) override {
    std::unique_ptr<transfer::StateServer> server;
    transfer::Status st = transfer::StateServer::Create(HandOffServerOptions(destination), &server);
    if (st.ok()) st = server->Expose(LocalRegions());
    if (st.ok()) {
      TM_INFO(kLogMigration, "migration: state exposed: %llu bytes in huge pages (docs/transfer.md)",
              static_cast<unsigned long long>(server->HugePageBytes()));
    }
    if (st.ok() && server->Descriptor().size() > mig::kMaxBlob) {
      st = transfer::Status(transfer::Code::kInvalidArgument, "the transfer descriptor exceeds one control frame");
    }
    if (!st.ok()) {
      *error = st.ToString();
      if (server) server->Close();
      return nullptr;
    }
    return std::make_unique<ServerSource>(std::move(server), Fault() == "tamper-descriptor");
  }
  std::unique_ptr<StateSink> Prepare(const std::vector<uint8_t>& descriptor, uint32_t leaver_pid,
                                     std::string* note) override {
    auto sink = std::make_unique<ClientSink>();
    const std::vector<transfer::Region> local = LocalRegions();
    uint64_t bytes = 0;
    for (const transfer::Region& r : local) bytes += r.size;
    // Refused before anyone is held: a hand-off that may outlast the stayers' hold deadline.
    if (std::string slow = HandOffTooSlow(bytes); !slow.empty()) {
      TM_WARN(kLogMigration, "migration: refused: %s", slow.c_str());
      *note = slow;
      return nullptr;
    }
    transfer::Status st = transfer::StateClient::Create(HandOffClientOptions(), &sink->client);
    if (st.ok()) {
      sink->regions = local.size();
      transfer::FetchOptions o;
      o.timeout_ms = HandOffTimeoutMs(bytes);
      o.leaver_pid = leaver_pid;
      o.warm = true;  // the leaver's pages read once now, so the read at S finds them warm (docs/transfer.md)
      st = sink->client->Prepare(descriptor, local, o, &sink->prepared);
    }
    if (!st.ok()) {
      TM_WARN(kLogMigration, "migration: connecting to the leaver's state failed: %s", st.ToString().c_str());
      *note = st.ToString();
      return nullptr;
    }
    char msg[160];
    std::snprintf(msg, sizeof(msg), "%llu bytes to read over %s (%llu of ours in huge pages)",
                  static_cast<unsigned long long>(sink->prepared->bytes()),
                  transfer::FetchPathName(sink->prepared->path()),
                  static_cast<unsigned long long>(sink->prepared->huge_page_bytes()));
    TM_INFO(kLogMigration, "migration: state prepared: %s", msg);
    *note = msg;
    return sink;
  }

  void TapeRecordBegin() override { shim::TapeRecordBegin(TapeMaxBytes()); }
  bool TapeRecordEnd(uint64_t migration, std::vector<uint8_t>* blob) override {
    std::shared_ptr<shim::Tape> tape = shim::TapeRecordEnd();
    if (!tape) return false;
    *blob = tape->Encode();
    TM_INFO(kLogMigration, "migration %llu: sandbox tape recorded: %zu operations, %llu output bytes",
            static_cast<unsigned long long>(migration), tape->size(),
            static_cast<unsigned long long>(tape->output_bytes()));
    return true;
  }
  void InstallTape(const std::vector<uint8_t>& blob) override {
    auto tape = std::make_shared<shim::Tape>();
    if (tape->Decode(blob, TapeMaxBytes())) {
      TM_INFO(kLogSandbox, "sandbox: tape of the leaver's iteration installed: %zu operations, %llu bytes",
              tape->size(), static_cast<unsigned long long>(tape->output_bytes()));
      shim::InstallTape(std::move(tape));
    } else {
      TM_INFO(kLogSandbox, "sandbox: the leaver's tape (%zu bytes) is damaged or over the cap; emulating",
              blob.size());
    }
  }
  void TapeIterationBegin() override { shim::TapeIterationBegin(); }
  void LogReady() override {
    const shim::TapeCounters tc = shim::TapeCount();
    TM_INFO(kLogMigration,
            "joiner: %lld shadow iteration(s) done, READY sent; %llu ops served from the tape, %llu "
            "emulated after a tape mismatch",
            static_cast<long long>(shim::ProcessConfig().shadow_iters), static_cast<unsigned long long>(tc.served),
            static_cast<unsigned long long>(tc.fallbacks));
  }

 private:
  control::Agent* agent_;
  std::vector<shim::VComm*> rekeyed_;  // VComms that took a leaver's key (application thread, at the switch)
};


// The hook: reports the step, then lets the machine hold the application where the migration needs it, then
// failure recovery (a snapshot, or the hold and rollback of a fenced process).
int64_t Hook(void*, int64_t step) {
  control::ShimAgentSafePoint(step);
  const bool clean = !RecoveryFenced();
  return RecoverySafePoint(g_machine->OnSafePoint(step, !clean), clean);
}

}  // namespace

void InstallMigration(control::Agent* agent) {
  auto* world = new ShimWorld(agent);
  g_machine = new ProcessMachine(*world);
  std::atexit(ReapMigrationJobs);  // before InstallRecovery's and the agent's: runs after them
  InstallRecovery(world, g_machine);
  agent->SetCommandHandler([](const control::Command& c) {
    if (c.kind >= control::rec::kFirstRecoveryKind && c.kind < control::standby::kFirstStandbyKind) {
      return RecoveryCommand(c);
    }
    g_machine->OnCommand(c);
  });
  shim::SetSafePointHook(Hook, nullptr);
}

}  // namespace trainmover::migration
