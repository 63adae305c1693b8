// SPDX-License-Identifier: Apache-2.0
// agent.h: the coordinator's agent inside a training process. libtrainmover owns one when
// TRAINMOVER_COORDINATOR is set.
//
// A background thread connects to trainmoverd, registers the process, reports communicators, safe
// points and regions, sends heartbeats, and receives commands (handed to the installed handler).
//
// It never blocks the application. The report calls below are lock-free and never wait:
//  - SafePoint goes into a bounded MPSC ring; when the ring is full the report is dropped and counted,
//    but the latest step is always kept (an atomic), so the coordinator never falls behind for long.
//  - Essential reports (communicator created/destroyed, regions, engine events) go on a lock-free
//    list and are never dropped; they are rare (communicator creation is not a hot path).
// A coordinator that goes silent (frozen, or the link cut without a reset) is treated as gone after
// Options::silence_timeout_ms (it says BYE "reconnect" on that connection before closing it, so that the
// coordinator does not take the close for this process's death). When the coordinator is unreachable or goes
// away, training goes on: the agent logs one WARN line, reconnects with backoff (100 ms doubling to 2 s), and on every (re)connection re-registers the
// process and replays what it knows (live communicators, latest step, regions), so a restarted
// coordinator rebuilds its view without disturbing training.
#ifndef TRAINMOVER_LIB_CONTROL_AGENT_H_
#define TRAINMOVER_LIB_CONTROL_AGENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "messages.h"

namespace trainmover::control {

// This process as REGISTER describes it: host, pid, /proc/self/cmdline, cwd and the environment without
// its secrets (base::IsSecretEnvName: the job's token never leaves the process). The command line and
// environment are exact or absent: when they do not fit one REGISTER (kMaxList entries of kMaxString bytes,
// half a frame in all) both are left out, with a WARN, and --spawn is refused for this process. `instance`
// is random.
Register DescribeSelf(const std::string& role, int32_t rank, int32_t world, int32_t replace);

class Agent {
 public:
  struct Options {
    std::string coordinator;  // host:port
    std::string token;
    Register self;             // from DescribeSelf
    size_t ring_slots = 1024;  // safe-point ring capacity (rounded up to a power of two)
    int heartbeat_ms = 0;      // upper bound of the heartbeat interval (0: the coordinator's choice)
    // A connection on which the coordinator sent nothing for this long (it sends KEEPALIVE every heartbeat
    // interval) is dropped and re-made; at least five of its intervals (more than its heartbeat timeout) are
    // always allowed.
    int silence_timeout_ms = 10000;
  };
  // Called on the agent thread for every COMMAND from the coordinator. Must not block for long.
  using CommandHandler = std::function<void(const Command&)>;

  explicit Agent(Options opt);
  ~Agent();  // Stop(false)
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Called on the agent thread for every REGISTER_ACK (each (re)registration). Must not block.
  using RegisteredHandler = std::function<void(const RegisterAck&)>;

  // Install before Start().
  void SetCommandHandler(CommandHandler h) { handler_ = std::move(h); }
  void SetRegisteredHandler(RegisteredHandler h) { registered_ = std::move(h); }
  // Called on the agent thread about every `period_ms` (e.g. to poll the shim's region table).
  void SetTick(std::function<void()> fn, int period_ms) {
    tick_ = std::move(fn);
    tick_period_ms_ = period_ms;
  }
  // The process's step timing so far (docs/stragglers.md): read on the agent thread at every heartbeat, which
  // carries the difference since the previous heartbeat as its StepWindow. The argument is the step count of
  // the previous heartbeat: compute_p25_ns is the lower quartile over the steps after it. Install before Start().
  struct StepTotals {
    uint64_t steps = 0, wall_ns = 0, wait_ns = 0, compute_p25_ns = 0;
  };
  void SetStepTotals(std::function<StepTotals(uint64_t)> fn) { step_totals_ = std::move(fn); }
  // Starts the thread. Returns at once; connecting happens in the background.
  void Start();
  // Stops the thread. With bye, first tells the coordinator this process is exiting (bounded wait).
  // A no-op when called on the agent thread itself (e.g. exit() from a command handler) or in a forked
  // child (which has no agent thread). A forked child (a data-loader worker) closes its copy of the
  // connection at once (pthread_atfork), so the coordinator still sees this process's end as the connection
  // closing.
  void Stop(bool bye = false);

  // --- reports: any thread, lock-free, never block ---
  void ReportCommCreated(const CommCreated& c);
  void ReportCommDestroyed(uint64_t comm_key);
  void ReportSafePoint(int64_t step);
  void ReportRegions(std::vector<Region> regions);    // the whole table
  void ReportRankWorld(int32_t rank, int32_t world);  // fills REGISTER's rank/world when learnt later
  void SendEvent(Event e);                            // a migration-engine report, never dropped

  // --- observation (any thread) ---
  bool connected() const { return connected_.load(); }
  uint64_t dropped() const { return dropped_.load(); }
  uint64_t connections() const { return connections_.load(); }  // successful (re)registrations
  uint64_t process_id() const { return process_id_.load(); }
  int64_t latest_step() const { return latest_step_.load(); }

 private:
  struct Essential;
  struct Slot;
  struct Session;  // the agent thread's own state (agent.cc)
  void PushEssential(Essential* e);
  void Wake();
  void Loop();
  // Pieces of Loop, agent thread only.
  void Connect(Session& s);
  void RegisterAndReplay(Session& s);
  void Lose(Session& s, const std::string& why);
  void DrainEssentials(Session& s);
  void DrainSafePoints(Session& s);
  void SendHeartbeat(Session& s);
  void PollOnce(Session& s);
  bool Silent(Session& s);   // true when the connection was dropped for silence
  bool Stalled(Session& s);  // true when the connection was dropped because the coordinator read nothing of it
  uint64_t SilenceLimitNs(const Session& s) const;
  void OnFrame(Session& s, const Frame& f);
  void SayBye(Session& s);                                              // at exit: last reports, BYE "exit"
  void SendBye(Session& s, const std::string& reason, uint64_t flush_ms);  // queued last, flushed for at most flush_ms

  Options opt_;
  CommandHandler handler_;
  RegisteredHandler registered_;
  std::function<void()> tick_;
  std::function<StepTotals(uint64_t)> step_totals_;
  int tick_period_ms_ = 200;
  std::thread thread_;
  int owner_pid_ = 0;  // the process that started the thread
  std::atomic<int> conn_fd_{-1};  // the connection's socket, closed in a forked child (pthread_atfork)
  static void CloseInForkedChild();
  std::atomic<bool> stop_{false};
  std::atomic<bool> bye_{false};
  int wake_fd_ = -1;
  // Safe-point ring (bounded MPSC, Vyukov-style sequence numbers).
  std::unique_ptr<Slot[]> ring_;
  size_t mask_ = 0;
  std::atomic<uint64_t> head_{0};                // next slot producers claim
  uint64_t tail_ = 0;                            // next slot the agent thread reads
  std::atomic<Essential*> essentials_{nullptr};  // Treiber stack, newest first
  std::atomic<int64_t> latest_step_{-1};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> connections_{0};
  std::atomic<uint64_t> process_id_{0};
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_AGENT_H_
