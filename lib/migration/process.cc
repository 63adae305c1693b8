// SPDX-License-Identifier: Apache-2.0
// The process side of a live migration. docs/migration.md describes the protocol; this file is the
// state machine of one process (joiner, leaver or stayer) driven by the coordinator's commands.
#include <dlfcn.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/binding.h"
#include "control/conn.h"
#include "base/cudart.h"
#include "base/log.h"
#include "base/thread.h"
#include "migration.h"
#include "msgs.h"
#include "sandbox/tape.h"
#include "shim_agent.h"
#include "core/shim_state.h"
#include "transfer/transfer.h"

namespace trainmover::migration {

namespace {

using control::Agent;
using control::Command;
namespace mig = control::mig;

using control::NowMonotonicNs;
using control::NowRealtimeNs;

struct Staged {
  shim::VComm* v;
  ncclComm_t next;
  int nranks, rank;  // of the replacement (a joiner's sandboxed Split child had guessed them)
};

// The whole process-side state, under `mu` unless noted.
struct State {
  std::mutex mu;
  std::condition_variable cv;
  Agent* agent = nullptr;  // set once at install
  uint64_t mig = 0;        // the migration being served (0: none)
  uint64_t gen = 0;        // bumped by every abort: background jobs of an older generation stop
  bool active = false;     // some migration command arrived and the migration is not over
  // Joiner.
  int64_t sandbox_safepoints = 0;
  bool ready_sent = false;
  // Sandbox tape. Leaver: 1 = RECORD_TAPE received (arm at the next safe point), 2 = recording this iteration.
  int tape_state = 0;
  uint64_t tape_mig = 0;
  // Joiner: the chunks received so far; tape_ready once installed (or found unusable).
  std::vector<uint8_t> tape_buf;
  bool tape_ready = false;
  bool exit_pending = false;  // the joiner must exit at its next safe point (the migration ended without it)
  std::string exit_reason;
  std::map<uint64_t, shim::VComm*> by_leaver_key;  // joiner: leaver comm_key -> own VComm
  std::map<shim::VComm*, uint64_t> rekey;          // joiner: own VComm -> leaver comm_key
  // Every member (joiner included): replacements staged on VComms.
  std::vector<Staged> staged;
  // Switch agreement.
  int64_t proposed = -1, committed = -1;
  bool at_sent = false;
  bool switch_go = false;
  int64_t switch_step = -1;
  // Leaver.
  bool leaver = false;
  std::string destination;  // "host H pid P" of the joiner
  std::unique_ptr<transfer::StateServer> server;
  bool sealing = false;  // the application thread is in server->Seal() without mu: an abort must not free it
  // Stall measurement (application thread only, but kept here for simplicity).
  std::vector<uint64_t> step_ns;  // recent undisturbed step intervals
  uint64_t last_entry_ns = 0;     // monotonic time tmSafePoint was entered last
  bool last_disturbed = false;    // the interval since last_entry_ns includes a hold
  bool measure_pending = false;   // SWITCHED is due at the first safe point after the switch
  uint64_t switch_entry_ns = 0;
  uint64_t switch_entry_real = 0;
  uint64_t captured_sent = 0;  // CapturedCount() already reported
  bool fault_passed = false;   // TRAINMOVER_FAULT=pass-first-proposal used
};

State& S() {
  static State* s = new State();  // never destroyed: used by the agent thread up to _exit
  return *s;
}

bool FaultIs(const char* name) { return shim::ProcessConfig().fault == name; }

constexpr int kTapeWaitMs = 3000;  // the joiner's wait for the leaver's tape at its first sandboxed safe point

// TRAINMOVER_SEAL_OVERLAP: whether the leaver hashes its state while the joiner reads it (see Hook). auto: yes
// unless the joiner (`destination` is "host H pid P") runs on this host and the host has under 8 CPUs, where
// the two sides' hash threads (up to 4 each) would share the cores: measured on 2 cores, overlapping made the
// switch slower than sealing first (docs/benchmarks.md, "Seal overlapped with the transfer").
bool SealOverlaps(const std::string& destination) {
  const std::string& mode = shim::ProcessConfig().seal_overlap;
  if (mode == "on" || mode == "off") return mode == "on";
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const bool same_host = destination.rfind("host " + std::string(host) + " ", 0) == 0;
  return !same_host || std::thread::hardware_concurrency() >= 8;
}

void Send(uint16_t kind, uint64_t id, std::vector<uint8_t> body) {
  Command c;
  c.kind = kind;
  c.migration = id;
  c.body = std::move(body);
  if (Agent* a = S().agent) a->SendEvent(std::move(c));
}
template <typename B>
void SendEv(mig::Ev kind, uint64_t id, const B& body) {
  Send(static_cast<uint16_t>(kind), id, control::EncodePayload(body));
}
void SendPhase(uint64_t id, const std::string& name, uint64_t start_real, uint64_t end_real) {
  SendEv(mig::Ev::kPhase, id, mig::Phase{name, start_real, end_real});
}

uint64_t Median(std::vector<uint64_t> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

// Drops everything staged for a migration (mu held): replacements aborted and freed, proposals cleared,
// the leaver's server closed. A joiner must exit afterwards. Never touches the current real comms.
void AbortLocked(const std::string& why) {
  State& s = S();
  if (!s.active && s.staged.empty()) return;
  TM_WARN(kLogMigration, "migration %llu aborted here: %s; training continues on the current communicators",
          static_cast<unsigned long long>(s.mig), why.c_str());
  ++s.gen;
  for (const Staged& st : s.staged) {
    ncclComm_t n = shim::AbortNext(st.v);
    if (n && shim::g_real.CommAbort) shim::g_real.CommAbort(n);
  }
  s.staged.clear();
  s.proposed = s.committed = -1;
  s.at_sent = false;
  s.switch_go = false;
  if (s.server && !s.sealing) {  // while sealing, the hook closes it when Seal returns
    s.server->Close();
    s.server.reset();
  }
  s.leaver = false;
  s.active = false;
  if (shim::ProcessRole() == shim::Role::kJoiner) {
    s.exit_pending = true;
    s.exit_reason = why;
  }
  s.cv.notify_all();
}

shim::VComm* FindLocal(uint64_t key) {
  State& s = S();
  auto it = s.by_leaver_key.find(key);
  if (it != s.by_leaver_key.end()) return it->second;
  for (shim::VComm* v : shim::LiveVComms()) {
    if (v->magic == shim::VComm::kMagic && v->comm_key == key) return v;
  }
  return nullptr;
}

// Background: builds the replacement communicators in the order given (the same on every member, so even a
// blocking init could not deadlock), with the real non-blocking ncclCommInitRankConfig.
void BuildJob(uint64_t id, uint64_t gen, mig::Build b) {
  State& s = S();
  uint64_t t0 = NowRealtimeNs();
  for (const mig::BuildEntry& e : b.entries) {
    shim::VComm* v;
    {
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.gen != gen) return;
      v = FindLocal(e.comm_key);
    }
    auto fail = [&](const std::string& m) { SendEv(mig::Ev::kBuilt, id, mig::Built{e.comm_key, 0, m}); };
    if (!v) {
      fail("no live communicator with that key here");
      continue;
    }
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
    while (r == ncclInProgress) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      {
        std::lock_guard<std::mutex> lk(s.mu);
        if (s.gen != gen) break;
      }
      ncclResult_t async = ncclSuccess;
      if (shim::g_real.CommGetAsyncError(c, &async) != ncclSuccess) async = ncclInternalError;
      r = async;
    }
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.gen != gen || r != ncclSuccess) {
      if (c) shim::g_real.CommAbort(c);
      if (s.gen != gen) return;
      fail(std::string("ncclCommInitRankConfig: ") +
           (shim::g_real.GetErrorString ? shim::g_real.GetErrorString(r) : "error"));
      continue;
    }
    shim::SetNextComm(v, c);
    ncclResult_t rr = shim::RebindObjects(v);
    s.staged.push_back(Staged{v, c, e.nranks, e.rank});
    if (rr != ncclSuccess) {
      fail("re-creating PreMulSum ops/registrations on the replacement failed");
      continue;
    }
    SendEv(mig::Ev::kBuilt, id, mig::Built{e.comm_key, 1, ""});
  }
  SendPhase(id, "build", t0, NowRealtimeNs());
}

// Device or host memory: asked of the CUDA runtime only when the application loaded it (RTLD_NOLOAD).
transfer::MemoryType TypeOf(const void* p) {
  return base::IsDevicePointer(base::CudartIfLoaded(), p) ? transfer::MemoryType::kCuda
                                                         : transfer::MemoryType::kHost;
}

std::vector<transfer::Region> LocalRegions() {
  std::vector<transfer::Region> out;
  for (const shim::Region& r : shim::Regions()) out.push_back(transfer::Region{r.name, r.ptr, r.bytes, TypeOf(r.ptr)});
  return out;
}

// Background (joiner): reads the leaver's regions one-sided into ours and verifies the checksums.
void FetchJob(uint64_t id, uint64_t gen, std::vector<uint8_t> descriptor) {
  uint64_t t0 = NowRealtimeNs();
  std::unique_ptr<transfer::StateClient> client;
  transfer::Status st = transfer::StateClient::Create(transfer::ClientOptions{}, &client);
  transfer::FetchResult res;
  if (st.ok()) {
    std::vector<transfer::Region> local = LocalRegions();
    transfer::FetchOptions o;
    uint64_t last_sent = 0;
    o.progress = [&](uint64_t done, uint64_t total) {
      uint64_t now = NowMonotonicNs();
      if (done == total || now - last_sent > 20000000ull) {
        last_sent = now;
        SendEv(mig::Ev::kProgress, id, mig::Progress{done, total});
      }
    };
    // Test knob (docs/migration.md): expect checksums no transfer can produce, as a corrupted read would.
    if (FaultIs("corrupt-transfer")) o.expected_checksums.assign(local.size(), 0x5eed5eed5eed5eedull);
    st = client->Fetch(descriptor, local, o, &res);
  }
  {
    std::lock_guard<std::mutex> lk(S().mu);
    if (S().gen != gen) return;
  }
  SendPhase(id, "transfer", t0, NowRealtimeNs());
  char msg[200];
  if (st.ok()) {
    std::snprintf(msg, sizeof(msg), "%llu bytes in %.3f s (%.2f GB/s) over %s, checksums verified",
                  static_cast<unsigned long long>(res.bytes), res.seconds, res.gbps, transfer::FetchPathName(res.path));
    TM_INFO(kLogMigration, "migration %llu: state read: %s", static_cast<unsigned long long>(id), msg);
    SendEv(mig::Ev::kVerified, id, mig::Built{0, 1, msg});
  } else {
    TM_WARN(kLogMigration, "migration %llu: state transfer failed: %s", static_cast<unsigned long long>(id),
            st.ToString().c_str());
    SendEv(mig::Ev::kVerified, id, mig::Built{0, 0, st.ToString()});
  }
}

template <typename B>
bool Decode(const Command& c, B* b) {
  if (control::DecodePayload(c.body, b)) return true;
  TM_WARN(kLogMigration, "migration: malformed %s body, ignored", mig::CmdName(c.kind));
  return false;
}

// Agent thread.
void OnCommand(const Command& c) {
  State& s = S();
  const uint64_t id = c.migration;
  switch (static_cast<mig::Cmd>(c.kind)) {
    case mig::Cmd::kMap: {
      mig::KeyList kl;
      if (!Decode(c, &kl)) return;
      std::lock_guard<std::mutex> lk(s.mu);
      s.mig = id;
      s.active = true;
      std::vector<shim::VComm*> live = shim::LiveVComms();
      for (size_t i = 0; i + 1 < kl.keys.size(); i += 2) {
        for (shim::VComm* v : live) {
          if (v->magic == shim::VComm::kMagic && v->comm_key == kl.keys[i]) {
            s.by_leaver_key[kl.keys[i + 1]] = v;
            s.rekey[v] = kl.keys[i + 1];
          }
        }
      }
      return;
    }
    case mig::Cmd::kMakeIds: {
      mig::KeyList kl;
      if (!Decode(c, &kl)) return;
      mig::Ids ids;
      for (uint64_t k : kl.keys) {
        ncclUniqueId uid;
        ncclResult_t r = shim::g_real.GetUniqueId(&uid);
        if (r != ncclSuccess) {
          SendEv(mig::Ev::kFailed, id, mig::Reason{"ncclGetUniqueId failed in the joiner"});
          return;
        }
        mig::IdEntry e;
        e.comm_key = k;
        std::memcpy(e.id.data(), uid.internal, e.id.size());
        ids.ids.push_back(e);
      }
      SendEv(mig::Ev::kIds, id, ids);
      return;
    }
    case mig::Cmd::kBuild: {
      mig::Build b;
      if (!Decode(c, &b)) return;
      uint64_t gen;
      {
        std::lock_guard<std::mutex> lk(s.mu);
        s.mig = id;
        s.active = true;
        gen = s.gen;
      }
      base::StartThread("tm-build", BuildJob, id, gen, std::move(b)).detach();
      return;
    }
    case mig::Cmd::kExpose: {
      mig::Reason where;
      if (!Decode(c, &where)) return;
      uint64_t t0 = NowRealtimeNs();
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.sealing) {  // an aborted migration's Seal still reads the old server (Hook frees it)
        SendEv(mig::Ev::kFailed, id, mig::Reason{"the previous migration's seal is still running"});
        return;
      }
      s.mig = id;
      s.active = true;
      s.leaver = true;
      s.destination = where.text;
      transfer::Status st = transfer::StateServer::Create(transfer::ServerOptions{}, &s.server);
      if (st.ok()) st = s.server->Expose(LocalRegions());
      if (st.ok() && s.server->Descriptor().size() > mig::kMaxBlob) {
        st = transfer::Status(transfer::Code::kInvalidArgument, "the transfer descriptor exceeds one control frame");
      }
      if (!st.ok()) {
        SendEv(mig::Ev::kFailed, id, mig::Reason{"leaver cannot expose its state: " + st.ToString()});
        return;
      }
      SendEv(mig::Ev::kExposed, id, mig::Blob{s.server->Descriptor()});
      SendPhase(id, "expose", t0, NowRealtimeNs());
      return;
    }
    case mig::Cmd::kFetchFrom: {
      mig::Blob b;
      if (!Decode(c, &b)) return;
      uint64_t gen;
      {
        std::lock_guard<std::mutex> lk(s.mu);
        gen = s.gen;
      }
      base::StartThread("tm-fetch", FetchJob, id, gen, std::move(b.bytes)).detach();
      return;
    }
    case mig::Cmd::kPropose: {
      mig::Step st;
      if (!Decode(c, &st)) return;
      std::lock_guard<std::mutex> sp(shim::SafePointMutex());
      int64_t now = shim::GetSafePointLocked().step;
      std::lock_guard<std::mutex> lk(s.mu);
      s.mig = id;
      s.active = true;
      bool fault_pass = false;
      if (FaultIs("pass-first-proposal") && !s.fault_passed) {  // test knob: rank 0 refuses the first S once
        std::vector<shim::VCommInfo> vs = shim::SnapshotVComms();
        fault_pass = !vs.empty() && vs.front().lineage.rank == 0;
        s.fault_passed = true;
      }
      if (now < st.step && !fault_pass) {
        s.proposed = st.step;
        s.committed = -1;
        SendEv(mig::Ev::kAccept, id, st);
      } else {
        s.proposed = -1;
        SendEv(mig::Ev::kPassed, id, mig::Step{now});
      }
      s.cv.notify_all();
      return;
    }
    case mig::Cmd::kCommit: {
      mig::Step st;
      if (!Decode(c, &st)) return;
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.proposed != st.step) {
        SendEv(mig::Ev::kFailed, id, mig::Reason{"COMMIT of a step this process did not accept"});
        return;
      }
      s.committed = st.step;
      s.cv.notify_all();
      return;
    }
    case mig::Cmd::kSwitch: {
      mig::Step st;
      if (!Decode(c, &st)) return;
      std::lock_guard<std::mutex> lk(s.mu);
      s.switch_go = true;
      s.switch_step = st.step;
      s.cv.notify_all();
      return;
    }
    case mig::Cmd::kRecordTape: {
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.tape_state == 0) s.tape_state = 1;
      s.tape_mig = id;
      return;
    }
    case mig::Cmd::kTape: {
      mig::Blob b;
      if (!Decode(c, &b)) return;
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.tape_ready) return;
      const uint64_t cap = static_cast<uint64_t>(shim::ProcessConfig().tape_max_bytes);
      if (!b.bytes.empty()) {
        if (s.tape_buf.size() + b.bytes.size() <= cap + (uint64_t{64} << 20)) {  // outputs + signatures
          s.tape_buf.insert(s.tape_buf.end(), b.bytes.begin(), b.bytes.end());
        }
        return;
      }
      auto tape = std::make_shared<shim::Tape>();
      if (tape->Decode(s.tape_buf, cap)) {
        TM_INFO(kLogSandbox, "sandbox: tape of the leaver's iteration installed: %zu operations, %llu bytes",
                tape->size(), static_cast<unsigned long long>(tape->output_bytes()));
        shim::InstallTape(std::move(tape));
      } else {
        TM_INFO(kLogSandbox, "sandbox: the leaver's tape (%zu bytes) is damaged or over the cap; emulating",
                s.tape_buf.size());
      }
      s.tape_buf.clear();
      s.tape_buf.shrink_to_fit();
      s.tape_ready = true;
      s.cv.notify_all();
      return;
    }
    case mig::Cmd::kAbort: {
      mig::Reason r;
      if (!Decode(c, &r)) return;
      std::lock_guard<std::mutex> lk(s.mu);
      if (shim::ProcessRole() == shim::Role::kJoiner && shim::ProcessSandboxed()) {
        s.exit_pending = true;
        s.exit_reason = r.text;
      }
      AbortLocked("the coordinator aborted it: " + r.text);
      return;
    }
  }
  TM_WARN(kLogMigration, "migration: unknown command %u ignored", c.kind);
}

void LeaveProcess(int code, const char* fmt, const std::string& a, const std::string& b) {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::fflush(stdout);
  int rank = -1;
  std::vector<shim::VCommInfo> comms = shim::SnapshotVComms();
  if (!comms.empty()) rank = comms.front().lineage.rank;
  std::fprintf(stderr, "%s:%d:%d [%d] TRAINMOVER INFO ", host, getpid(), static_cast<int>(gettid()), rank);
  std::fprintf(stderr, fmt, a.c_str(), b.c_str());
  std::fputc('\n', stderr);
  std::fflush(stderr);
  if (Agent* ag = S().agent) ag->Stop(/*bye=*/true);
  _exit(code);
}

// Application thread, S().mu held: the joiner's way out when its migration ended without it.
[[noreturn]] void JoinerExit(std::unique_lock<std::mutex>& lk) {
  std::string why = S().exit_reason;
  lk.unlock();
  LeaveProcess(1, "joiner exits: the migration did not complete (%s)%s", why, "");
  __builtin_unreachable();
}

bool Disconnected() { return S().agent && !S().agent->connected(); }

// The joiner: shadow iterations in the sandbox, READY, then wait for SWITCH (returns S) or exit.
int64_t JoinerSafePoint(std::unique_lock<std::mutex>& lk, int64_t step) {
  State& s = S();
  if (s.sandbox_safepoints == 0 && s.agent) {  // connected or still connecting
    // The first safe point: what ran before it was start-up. Wait (bounded) for the leaver's tape, so the
    // shadow iteration that follows replays it; without one in time the sandbox emulates.
    s.cv.wait_for(lk, std::chrono::milliseconds(kTapeWaitMs), [&] { return s.tape_ready; });
  }
  shim::TapeIterationBegin();  // operations from here on are positions 0, 1, ... of the next sandbox iteration
  if (++s.sandbox_safepoints <= shim::ProcessConfig().shadow_iters) return step;
  if (!s.ready_sent) {
    s.ready_sent = true;
    mig::Ready r;
    for (const shim::VCommInfo& vi : shim::SnapshotVComms()) r.comms.push_back(control::DescribeVComm(vi.vcomm));
    for (const shim::Region& rg : shim::Regions()) r.regions.push_back(control::Region{rg.name, rg.bytes});
    r.step = step;
    SendEv(mig::Ev::kReady, 0, r);
    const shim::TapeCounters tc = shim::TapeCount();
    TM_INFO(kLogMigration, "joiner: %lld shadow iteration(s) done, READY sent; %llu ops served from the tape, %llu "
            "emulated after a tape mismatch", static_cast<long long>(shim::ProcessConfig().shadow_iters),
            static_cast<unsigned long long>(tc.served), static_cast<unsigned long long>(tc.fallbacks));
  }
  uint64_t lost_since = 0;
  while (!s.switch_go && !s.exit_pending) {
    s.cv.wait_for(lk, std::chrono::milliseconds(50));
    if (Disconnected()) {
      if (!lost_since) lost_since = NowMonotonicNs();
      if (NowMonotonicNs() - lost_since > 3000000000ull) {
        s.exit_pending = true;
        s.exit_reason = "lost the coordinator";
      }
    } else {
      lost_since = 0;
    }
  }
  if (s.exit_pending) JoinerExit(lk);
  // Switch in: the state is already in our regions (verified); real communicators replace the emulated ones.
  for (const Staged& st : s.staged) {
    shim::SwitchToNext(st.v);
    std::lock_guard<std::mutex> vl(st.v->mu);
    st.v->lineage.nranks = st.nranks;
    st.v->lineage.rank = st.rank;
  }
  s.staged.clear();
  shim::SetProcessSandboxed(false);
  for (auto& [v, key] : s.rekey) {
    if (v->magic != shim::VComm::kMagic) continue;
    v->comm_key = key;  // its sandboxed key was never reported (shim_agent.cc)
    if (s.agent) s.agent->ReportCommCreated(control::DescribeVComm(v));
  }
  s.rekey.clear();
  s.by_leaver_key.clear();
  s.active = false;
  int64_t at = s.switch_step;
  SendEv(mig::Ev::kSwitched, s.mig, mig::Switched{at, 0, 0});
  TM_INFO(kLogMigration, "joiner: switched in at step %lld", static_cast<long long>(at));
  s.switch_go = false;
  return at;
}

// Tells the coordinator which communicators were captured into a CUDA graph (mu held): it refuses to
// migrate their members.
void ReportCaptured() {
  State& s = S();
  s.captured_sent = shim::CapturedCount();
  mig::KeyList kl;
  for (shim::VComm* v : shim::LiveVComms()) {
    if (v->magic == shim::VComm::kMagic && v->captured.load()) kl.keys.push_back(v->comm_key);
  }
  SendEv(mig::Ev::kCaptured, 0, kl);
}

// Leaver, at a safe point (mu held): arms the tape recorder for the iteration that starts here, or, one safe
// point later, stops it and sends the tape to D in chunks of one frame, then an empty chunk.
void TapeSafePoint() {
  State& s = S();
  if (s.tape_state == 1) {
    shim::TapeRecordBegin(static_cast<uint64_t>(shim::ProcessConfig().tape_max_bytes));
    s.tape_state = 2;
    return;
  }
  s.tape_state = 0;
  std::shared_ptr<shim::Tape> tape = shim::TapeRecordEnd();
  if (!tape) return;
  std::vector<uint8_t> blob = tape->Encode();
  for (size_t at = 0; at < blob.size(); at += mig::kMaxBlob) {
    const size_t n = std::min(mig::kMaxBlob, blob.size() - at);
    SendEv(mig::Ev::kTape, s.tape_mig,
           mig::Blob{std::vector<uint8_t>(blob.begin() + static_cast<ptrdiff_t>(at),
                                          blob.begin() + static_cast<ptrdiff_t>(at + n))});
  }
  SendEv(mig::Ev::kTape, s.tape_mig, mig::Blob{});
  TM_INFO(kLogMigration, "migration %llu: sandbox tape recorded: %zu operations, %llu output bytes",
          static_cast<unsigned long long>(s.tape_mig), tape->size(),
          static_cast<unsigned long long>(tape->output_bytes()));
}

// The hook: reports the step, then holds the application where the migration needs it.
int64_t Hook(void*, int64_t step) {
  control::ShimAgentSafePoint(step);
  State& s = S();
  const uint64_t entry = NowMonotonicNs();
  std::unique_lock<std::mutex> lk(s.mu);
  if (s.last_entry_ns && !s.last_disturbed) {
    s.step_ns.push_back(entry - s.last_entry_ns);
    if (s.step_ns.size() > 64) s.step_ns.erase(s.step_ns.begin());
  }
  s.last_disturbed = false;
  if (s.measure_pending) {  // the first safe point after the switch: the stall S..S+1
    s.measure_pending = false;
    s.last_disturbed = true;
    uint64_t interval = entry - s.switch_entry_ns, median = Median(s.step_ns);
    SendPhase(s.mig, "switch step", s.switch_entry_real, NowRealtimeNs());
    SendEv(mig::Ev::kSwitched, s.mig, mig::Switched{s.switch_step, interval > median ? interval - median : 0, median});
  }
  s.last_entry_ns = entry;
  if (shim::CapturedCount() != s.captured_sent) ReportCaptured();
  if (s.tape_state != 0) TapeSafePoint();
  if (s.exit_pending) JoinerExit(lk);
  if (shim::ProcessRole() == shim::Role::kJoiner && shim::ProcessSandboxed()) {
    s.last_disturbed = true;
    return JoinerSafePoint(lk, step);
  }
  if (s.active && Disconnected()) AbortLocked("lost the coordinator");
  if (s.proposed < 0 || step < s.proposed) return step;
  // Held: at (or past) a proposed switch point.
  s.last_disturbed = true;
  const uint64_t hold_real = NowRealtimeNs();
  const uint64_t id = s.mig;
  for (;;) {
    if (s.committed >= 0 && step == s.committed && !s.at_sent) {
      s.at_sent = true;
      // Overlapped (SealOverlaps): AT_STEP first. The memory is frozen from here on, so the joiner may start
      // reading at once (D sends it FETCH_FROM on this event) while we hash; it compares when both hashes are
      // ready (the sealed flag of the control block), so the seal leaves the critical path unless it is
      // slower than the read. Otherwise: seal, then AT_STEP (both sides would compete for too few CPUs).
      const bool overlap = s.leaver && s.server && SealOverlaps(s.destination);
      if (overlap || !s.leaver || !s.server) SendEv(mig::Ev::kAtStep, id, mig::Step{step});
      if (s.leaver && s.server) {
        transfer::StateServer* server = s.server.get();
        const uint64_t gen = s.gen;
        s.sealing = true;
        lk.unlock();
        uint64_t t0 = NowRealtimeNs();
        transfer::Status st = server->Seal();
        lk.lock();
        s.sealing = false;
        SendPhase(id, "seal", t0, NowRealtimeNs());
        if (s.gen != gen) {  // aborted meanwhile (AbortLocked left the server to us)
          s.server->Close();
          s.server.reset();
        } else if (!st.ok()) {
          SendEv(mig::Ev::kFailed, id, mig::Reason{"leaver cannot checksum its state: " + st.ToString()});
        }
        if (!overlap && s.gen == gen) SendEv(mig::Ev::kAtStep, id, mig::Step{step});
      }
    }
    if (s.committed >= 0 && step > s.committed) {
      SendEv(mig::Ev::kFailed, id, mig::Reason{"process passed the committed switch step"});
      AbortLocked("passed the committed switch step");
    }
    if (s.switch_go) break;
    if (s.proposed < 0 || step < s.proposed) return step;  // re-proposed later, or aborted
    s.cv.wait_for(lk, std::chrono::milliseconds(50));
    if (Disconnected()) AbortLocked("lost the coordinator");
  }
  // SWITCH at S.
  s.switch_go = false;
  s.proposed = s.committed = -1;
  s.at_sent = false;
  s.active = false;
  SendPhase(id, "hold at S", hold_real, NowRealtimeNs());
  if (s.leaver) {
    std::string where = s.destination;
    if (s.server) s.server->Close();
    lk.unlock();
    LeaveProcess(0, "rank migrated at step %s to %s; this process exits", std::to_string(step), where);
  }
  for (const Staged& st : s.staged) {
    ncclComm_t old = shim::SwitchToNext(st.v);
    if (old) shim::g_real.CommDestroy(old);
  }
  s.staged.clear();
  s.measure_pending = true;
  s.switch_entry_ns = entry;
  s.switch_entry_real = hold_real;
  return step;
}

}  // namespace

void InstallMigration(Agent* agent) {
  State& s = S();
  s.agent = agent;
  agent->SetCommandHandler(OnCommand);
  shim::SetSafePointHook(Hook, nullptr);
}

}  // namespace trainmover::migration
