// SPDX-License-Identifier: Apache-2.0
// coordinator.h: trainmoverd's engine, as a class so that tools/trainmoverd, tmrun (embedded) and the
// tests run the same code.
//
// The coordinator holds the job's view (docs/protocol.md, "The coordinator's model"): processes, the
// virtual communicators they reported (one entry per comm_key with every member), safe-point progress,
// standbys, and migrations with a state machine and a timeline of phases per process. It is a single
// thread running a poll loop over non-blocking sockets: a slow or hostile peer can never stall it, and
// nothing in the model needs a lock. Only Stop() may be called from another thread.
#ifndef TRAINMOVER_LIB_CONTROL_COORDINATOR_H_
#define TRAINMOVER_LIB_CONTROL_COORDINATOR_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "conn.h"
#include "messages.h"
#include "straggler.h"

namespace trainmover::control {

class StragglerMonitor;  // straggler_monitor.h

// Process states. alive: connected and heartbeating. lost: connection closed or no heartbeat within the
// timeout (it comes back to alive if the same process reconnects; ProcessRec::returning_by_ns while it said it
// will). A silent process is declared lost only once another process was heard after its deadline (or it is the
// job's only one): a coordinator that hears nobody may be the one cut off. exited: said BYE (a leaver that
// handed off, or a process that finished).
enum class ProcState { kAlive, kLost, kExited };
const char* ProcStateName(ProcState s);

struct ProcessRec {
  uint64_t id = 0;
  Register info;  // as registered (role, host, pid, rank, world, cmdline, cwd, env)
  ProcState state = ProcState::kAlive;
  std::string lost_reason;
  bool fenced = false;  // declared failed by an engine (a recovery replaced it): lost for good, even if it wakes up
  // Lost, but it said it will register again (BYE "reconnect": its agent gave up on a silent connection): monotonic
  // deadline of that. Engines were told it is lost (a migration it is part of aborts) but not that it failed: a
  // recovery waits for this deadline, after which the coordinator tells them again (docs/reliability.md).
  uint64_t returning_by_ns = 0;
  int conn_fd = -1;                // -1 when not connected
  uint64_t last_heartbeat_ns = 0;  // monotonic
  uint64_t missed_counted = 0;     // heartbeat intervals already counted as missed since the last heartbeat
  int64_t step = -1;               // latest safe-point step
  uint64_t step_time_ns = 0;       // sender clock of that step
  uint64_t safepoints = 0;         // SAFEPOINT messages received
  uint64_t dropped = 0;            // reports the agent dropped (ring full)
  int64_t snapshot_step = -1;      // its newest snapshot a buddy verified a copy of (failure recovery), -1: none
  int64_t snapshot_every = 0;      // the snapshot interval it was told under TRAINMOVER_SNAPSHOT_EVERY=auto, 0: none
  std::vector<Region> regions;
  std::vector<uint64_t> comms;  // comm_keys it is a member of
  std::map<uint64_t, CommCreated> comm_info;  // its own report of each (lineage as seen by this process)
  // A standby (role standby; docs/recovery.md, "Standbys") as the recovery engine's pool sees it: warmed up and
  // waiting (STANDBY_READY), and whether it can take any rank (its program reads its rank through tmRank) or only
  // the one it warmed up as (info.replace).
  struct StandbyView {
    bool ready = false;
    bool any_rank = false;
  } standby;
};

struct CommMember {
  uint64_t process = 0;
  int32_t rank = 0;
};
struct CommRec {
  uint64_t key = 0;
  int32_t nranks = 0;
  Lineage lineage;                      // as reported by the first member
  std::map<int32_t, uint64_t> members;  // rank -> process id
};

// Migration state machine (the migration engine drives it; docs/protocol.md has the diagram):
//   requested -> spawning -> sandbox -> ready -> building -> agreeing -> switching -> done
//   any non-terminal state -> cancelled (tmctl cancel) | failed (a process lost, a mismatch, an error)
//   requested -> refused (validation failed: unknown rank, no safe points, another migration active)
enum class MigState {
  kRequested,
  kSpawning,
  kSandbox,
  kReady,
  kBuilding,
  kAgreeing,
  kSwitching,
  kDone,
  kCancelled,
  kFailed,
  kRefused
};
const char* MigStateName(MigState s);
bool MigTerminal(MigState s);

struct PhaseSpan {
  uint64_t process = 0;  // 0: the coordinator itself
  std::string phase;
  uint64_t start_ns = 0;  // realtime
  uint64_t end_ns = 0;    // 0 while running
};

// The request kind of MIGRATE_REQ (Engine::kind of the planned-migration engine).
inline constexpr char kKindMigrate[] = "migrate";
// The kind of a failure recovery (lib/migration/recovery_engine.h): a record the engine makes itself when a rank
// fails (EngineHost::NewMigration), shown next to the migrations.
inline constexpr char kKindRecover[] = "recover";

// What a recovery record adds (docs/recovery.md): rank = the failed rank, joiner = its replacement.
struct RecoveryInfo {
  uint64_t epoch = 0;         // the failure's epoch (every declared failure gets the next one)
  std::string detected_by;    // "connection closed", "no heartbeat for N ms", ...
  uint64_t detected_ns = 0;   // realtime, when the coordinator declared the failure
  int64_t failed_at_step = -1;  // the furthest step any survivor had reached
  int64_t rollback_step = -1;   // the snapshot step everyone continued from
  int64_t lost_steps = -1;      // failed_at_step - rollback_step
  int64_t snapshot_every = 1;   // the bound on lost_steps then: the snapshot interval (docs/recovery.md)
  std::string replacement;      // "spawned pid P" / "standby process N"
};

struct Migration {
  uint64_t id = 0;
  std::string kind = kKindMigrate;  // the engine that drives it (Engine::kind)
  int32_t rank = -1;
  std::vector<int32_t> ranks;  // every rank moved by this migration (rank first)
  std::string host;
  bool spawn = false;
  uint64_t leaver = 0;  // process ids, 0 until known
  uint64_t joiner = 0;
  MigState state = MigState::kRequested;
  std::string reason;  // why it failed/was refused/cancelled
  uint64_t created_ns = 0;
  uint64_t ended_ns = 0;
  int64_t switch_step = -1;
  uint64_t bytes_total = 0;  // state to transfer
  uint64_t bytes_done = 0;   // transferred so far (progress bar of tmctl watch)
  uint64_t downtime_ns = 0;
  bool switch_sent = false;  // the commit point: SWITCH went out (cancel is refused from here on)
  std::string joiner_log;  // --spawn: where the joiner's output goes
  std::vector<PhaseSpan> phases;
  RecoveryInfo recovery;  // kind "recover" only
};

// What an engine may see and do in the coordinator (Coordinator implements it; the engines' unit tests
// implement a fake). Coordinator thread only, like every engine call. Pointers and references returned
// stay valid until the engine call that received this host returns.
class EngineHost {
 public:
  virtual ~EngineHost() = default;
  // Queues a COMMAND to a connected process; false when it is not connected (the engine learns of the loss
  // through OnProcessLost).
  virtual bool SendCommand(uint64_t process, const Command& c) = 0;
  // Moves `m` to `s` (terminal states are final: later calls are ignored); closes open phases at the end.
  virtual void SetMigState(Migration& m, MigState s, const std::string& reason = "") = 0;
  // A span of the migration's timeline (process 0: the coordinator itself).
  virtual void BeginPhase(Migration& m, uint64_t process, const std::string& phase) = 0;
  virtual void EndPhase(Migration& m, uint64_t process, const std::string& phase) = 0;
  virtual ProcessRec* FindProcess(uint64_t id) = 0;
  virtual ProcessRec* FindProcessByRank(int32_t rank) = 0;  // an alive worker with that rank, not fenced
  virtual const std::map<uint64_t, ProcessRec>& processes() const = 0;
  virtual const std::map<uint64_t, CommRec>& comms() const = 0;
  virtual Migration* FindMigration(uint64_t id) = 0;  // 0: the latest
  virtual const std::map<uint64_t, Migration>& migrations() const = 0;
  // Bytes queued to a process and not yet written to its socket (bulk senders pace themselves on it: a
  // connection fails once Connection::kMaxQueued is queued).
  virtual size_t QueuedBytes(uint64_t /*process*/) const { return 0; }
  // A record the engine starts itself (a failure recovery), in state requested, of `kind`, for `rank`.
  virtual Migration& NewMigration(const std::string& kind, int32_t rank) = 0;
  // An alive process an engine found failed (a probe it did not answer, one out of step after a switch): lost with
  // `why`, as by the heartbeat timeout (every engine's OnProcessLost runs before this returns; its connection is
  // dropped). One that said it would reconnect (returning_by_ns) is lost for good at once, as when its grace ends.
  virtual void DeclareLost(uint64_t process, const std::string& why) = 0;
  // `process` is the member at `rank` of communicator `key` again (a switch that was undone: the leaver holds the place
  // its joiner reported when it switched in).
  virtual void SetMember(uint64_t key, int32_t rank, uint64_t process) = 0;
};

// An engine drives one kind of request (planned migration: lib/migration/engine.h; failure recovery next).
// The program that owns the Coordinator installs its engines (AddEngine); the coordinator routes each
// request to the engine of its kind, refuses a kind no engine handles, and tells every engine of every
// event, lost process and tick (each ignores what is not its own). All calls come from the coordinator's
// thread.
class Engine {
 public:
  virtual ~Engine() = default;
  // The request kind it handles ("migrate": tmctl migrate).
  virtual const char* kind() const = 0;
  // Checks a new request against the engine's own rules (ranks exist and reached a safe point, nothing else
  // in flight, ...). Empty: acceptable; otherwise the reason it is refused. Nothing may be changed here.
  virtual std::string Validate(EngineHost& h, const Migration& m) = 0;
  // A validated request was recorded in state requested (with its "requested" phase open): drive it.
  virtual void OnRequest(EngineHost& h, Migration& m) = 0;
  // The operator cancels `m` (never once SWITCH was sent: Migration::switch_sent); the coordinator marks it cancelled afterwards
  // unless the engine ended it.
  virtual void OnCancel(EngineHost& h, Migration& m) = 0;
  virtual void OnEvent(EngineHost& h, uint64_t process, const Event& e) = 0;
  virtual void OnProcessLost(EngineHost& h, uint64_t process) = 0;  // also on BYE (state exited)
  // A known process registered again (it reconnected): tell it what it missed (docs/reliability.md, "The
  // commit point": an outcome decided while it was away).
  virtual void OnProcessBack(EngineHost&, uint64_t /*process*/) {}
  // About every 100 ms (timeouts, spawned children).
  virtual void OnTick(EngineHost&) {}
};

class Coordinator final : public EngineHost {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";
    std::string metrics_listen;  // empty: no metrics endpoint
    std::string token;           // required, non-empty
    int heartbeat_timeout_ms = 10000;
    StragglerOptions straggler;  // the detector's parameters and the policy (docs/stragglers.md)
  };
  explicit Coordinator(Options opt);
  ~Coordinator();

  // Binds the sockets. An error names what is wrong (bad address, port in use, empty token).
  base::Status Start();
  const std::string& address() const { return address_; }  // host:port actually bound
  const std::string& metrics_address() const { return metrics_address_; }
  // The heartbeat interval agents are told to use (a quarter of the timeout, at least 20 ms).
  int heartbeat_interval_ms() const;

  // Runs the loop until Stop(). Blocking; call from one thread.
  void Run();
  // Thread-safe, async-signal-safe: makes Run() return soon.
  void Stop();
  // Thread-safe: processes of the job (node agents aside) connected and alive as of the loop's last turn (every 100 ms at most). tmrun's
  // node 0 keeps its embedded coordinator (and the store) up while this is not 0, even after its own ranks
  // moved to another host.
  int alive_processes() const { return alive_processes_.load(std::memory_order_relaxed); }

  // Installs an engine (before Run()). One per kind: a second engine of the same kind replaces the first.
  void AddEngine(std::unique_ptr<Engine> e);

  // --- EngineHost (coordinator thread only) ---
  bool SendCommand(uint64_t process, const Command& c) override;
  void SetMigState(Migration& m, MigState s, const std::string& reason = "") override;
  void BeginPhase(Migration& m, uint64_t process, const std::string& phase) override;
  void EndPhase(Migration& m, uint64_t process, const std::string& phase) override;
  ProcessRec* FindProcess(uint64_t id) override;
  ProcessRec* FindProcessByRank(int32_t rank) override;
  const std::map<uint64_t, ProcessRec>& processes() const override { return procs_; }
  const std::map<uint64_t, CommRec>& comms() const override { return comms_; }
  Migration* FindMigration(uint64_t id) override;
  const std::map<uint64_t, Migration>& migrations() const override { return migs_; }
  void DeclareLost(uint64_t process, const std::string& why) override;
  void SetMember(uint64_t key, int32_t rank, uint64_t process) override;
  size_t QueuedBytes(uint64_t process) const override;
  Migration& NewMigration(const std::string& kind, int32_t rank) override;
  // Thread-safe: failure recoveries in progress as of the loop's last turn (tmrun does not end a job while one
  // runs: the failed rank's exit is expected).
  int recovering() const { return recovering_.load(std::memory_order_relaxed); }
  // Thread-safe: whether process `pid` was declared failed and replaced by a recovery (ProcessRec::fenced) as of the
  // loop's last turn: its exit, whenever it comes, is expected (a process that was stopped and wakes up ends then).
  bool fenced_pid(uint32_t pid) const {
    std::lock_guard<std::mutex> lk(fenced_mu_);
    return fenced_pids_.count(pid) > 0;
  }
  // Thread-safe: workers alive that reported a safe point, as of the loop's last turn (tmrun --standby starts its
  // standbys once every rank trains, so that none of them publishes a sandboxed unique id to the job's store first).
  int workers_training() const { return workers_training_.load(std::memory_order_relaxed); }

  const StragglerMonitor& stragglers() const { return *stragglers_; }

  // Documents (also what tmctl receives).
  std::string StatusJson() const;
  std::string TimelineJson(const Migration& m) const;
  std::string MetricsText() const;

 private:
  struct Peer;
  // The unauthenticated connection opened first (from `addr`, or from anywhere when null), -1 if none;
  // *count: how many there are.
  int OldestUnauthenticated(const std::string* addr, size_t* count) const;
  void Accept();
  void AcceptMetrics();
  void HandlePeer(Peer& p, short revents);
  void HandleMessage(Peer& p, const Frame& f);
  void ClosePeer(int fd, const std::string& why);
  // A peer whose socket someone else closed (poll says POLLNVAL, or accept returned its number again): dropped
  // with a warning, its number never closed a second time.
  void ForgetClosedSocket(int fd);
  void CheckHeartbeats();
  static constexpr uint64_t kMinReturnGraceMs = 5000;
  uint64_t ReturnGraceNs() const;  // how long a process that said BYE "reconnect" has to register again
  void SendKeepalives();
  void Sweep();  // peers that failed, missed the HELLO deadline, or slow HTTP clients
  void MarkLost(ProcessRec& pr, const std::string& why);
  // Alive, and heard saying (or showing, by a new connection) that it will register again: lost until then, failed
  // only if it does not within ReturnGraceNs (CheckHeartbeats).
  void MarkReconnecting(ProcessRec& pr, const std::string& why);
  void OnRegister(Peer& p, const Register& r);
  void ReplacedTable(int32_t rank, RegisterAck* a);
  void OnCommCreated(ProcessRec& pr, const CommCreated& c);
  void OnCommDestroyed(ProcessRec& pr, uint64_t key);
  MigrateReply OnMigrate(const MigrateReq& r);
  CancelReply OnCancel(const CancelReq& r);
  void Observe(std::vector<uint64_t>& buckets, double& sum, uint64_t& count, double v) const;

  Options opt_;
  std::string address_, metrics_address_;
  int listen_fd_ = -1, metrics_fd_ = -1;
  int wake_fd_ = -1;  // eventfd
  uint64_t accept_paused_until_ = 0;  // monotonic: after EMFILE/ENFILE the listener rests (no busy loop)
  uint64_t next_keepalive_ns_ = 0;
  bool flood_warned_ = false;  // one WARN for connection floods per coordinator
  // Monotonic: the newest word from any process when every silent one lacked proof (CheckHeartbeats); 0: none.
  uint64_t isolated_since_ = 0;
  // Monotonic: when it last ran or heard the job again after a pause or isolation (CheckHeartbeats); 0: never.
  uint64_t rejoined_ns_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> alive_processes_{0};
  std::atomic<int> recovering_{0};
  mutable std::mutex fenced_mu_;
  std::set<uint32_t> fenced_pids_;
  std::atomic<int> workers_training_{0};
  uint64_t epoch_ = 0;
  uint64_t start_ns_ = 0;
  std::map<int, std::unique_ptr<Peer>> peers_;  // by fd
  struct HttpPeer {
    int fd = -1;
    std::string in, out;
    size_t out_off = 0;
    uint64_t opened_ns = 0;
  };
  std::map<int, HttpPeer> http_;
  std::map<uint64_t, ProcessRec> procs_;
  std::map<uint64_t, CommRec> comms_;
  std::map<uint64_t, Migration> migs_;
  uint64_t next_proc_ = 1, next_mig_ = 1;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::unique_ptr<StragglerMonitor> stragglers_;
  Engine* EngineOf(const std::string& kind) const;  // nullptr: none installed
  // Metrics.
  uint64_t heartbeats_missed_ = 0;
  uint64_t last_check_ns_ = 0;  // CheckHeartbeats' previous run (a longer gap: the coordinator itself was paused)
  uint64_t rejected_ = 0;
  std::map<std::string, uint64_t> mig_outcomes_;
  std::map<std::string, uint64_t> recovery_outcomes_;
  std::vector<uint64_t> recovery_downtime_buckets_;
  double recovery_downtime_sum_ = 0;
  uint64_t recovery_downtime_count_ = 0;
  std::vector<uint64_t> downtime_buckets_;
  double downtime_sum_ = 0;
  uint64_t downtime_count_ = 0;
  struct PhaseHist {
    std::vector<uint64_t> buckets;
    double sum = 0;
    uint64_t count = 0;
  };
  std::map<std::string, PhaseHist> phase_hist_;
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_COORDINATOR_H_
