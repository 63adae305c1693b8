// SPDX-License-Identifier: Apache-2.0
#include "agent.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cinttypes>
#include <cstring>
#include <fstream>
#include <iterator>
#include <deque>
#include <map>

#include "base/host.h"
#include "base/log.h"
#include "base/spawn_process.h"
#include "base/thread.h"
#include "conn.h"

extern char** environ;

namespace trainmover::control {

namespace {
// The agent's timing. Reconnection backs off exponentially so a job of thousands of ranks does not hammer a
// restarting coordinator; the heartbeat interval is the coordinator's (REGISTER_ACK) once registered.
constexpr uint64_t kNsPerMs = 1000000ull;
constexpr int kConnectTimeoutMs = 1000;             // one TCP connect attempt
constexpr uint64_t kReconnectFirstBackoffMs = 100;  // wait after the first failed attempt
constexpr uint64_t kReconnectMaxBackoffMs = 2000;   // doubling stops here
constexpr uint64_t kHeartbeatBeforeAckMs = 1000;    // until REGISTER_ACK says otherwise
constexpr uint64_t kPollSliceMs = 50;               // longest sleep of the loop (stop and ticks are checked)
constexpr uint64_t kByeFlushMs = 500;               // at exit, how long BYE may take to leave
constexpr uint64_t kReconnectByeFlushMs = 100;      // BYE "reconnect" to a silent coordinator: into its socket buffer
// KEEPALIVE intervals of silence always tolerated: more than the coordinator's heartbeat timeout (four intervals),
// so that an agent never closes the connection of a live process before the coordinator would have declared it
// lost anyway. The coordinator takes a closed connection for a dead process (and recovers it): an agent that gave up
// sooner would turn a short pause of the coordinator or of the link into a failure (docs/reliability.md).
constexpr uint64_t kSilenceIntervals = 5;
constexpr size_t kPaceBytes = 4u << 20;             // essential reports wait while this much is queued
}  // namespace

Register DescribeSelf(const std::string& role, int32_t rank, int32_t world, int32_t replace) {
  Register r;
  RandomBytes(&r.instance, sizeof(r.instance));
  r.role = role;
  r.host = base::HostName();
  r.pid = static_cast<uint32_t>(getpid());
  r.rank = rank;
  r.world = world;
  r.replace = replace;
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (size_t i = 0; i < all.size() && r.cmdline.size() <= kMaxList;) {
    size_t z = all.find('\0', i);
    if (z == std::string::npos) z = all.size();
    r.cmdline.push_back(all.substr(i, std::min(z - i, kMaxString)));  // one over kMaxString-1 refuses below
    i = z + 1;
  }
  char cwd[4096];
  if (getcwd(cwd, sizeof(cwd))) r.cwd = cwd;
  for (char** e = environ; e && *e; ++e) {
    if (!base::IsSecretEnvName(*e)) r.env.emplace_back(*e);  // secrets never leave the process
  }
  // --spawn starts the joiner with exactly this command line and environment, or not at all: what does not fit
  // one REGISTER (an argument or variable over kMaxString, more than kMaxList, half a frame in all) is not cut,
  // the whole command line is left out and the coordinator refuses --spawn naming why.
  size_t total = r.cwd.size();
  bool fits = !all.empty() && r.env.size() <= kMaxList;
  for (const std::string& a : r.cmdline) fits &= a.size() < kMaxString, total += a.size() + 4;
  for (const std::string& kv : r.env) fits &= kv.size() <= kMaxString, total += kv.size() + 4;
  if (!fits || total > kMaxPayload / 2) {
    TM_WARN(kLogControl,
            "agent: the command line and environment (%zu bytes) do not fit one REGISTER; tmctl migrate --spawn "
            "will be refused for this process (start its joiner yourself)",
            total);
    r.cmdline.clear();
    r.env.clear();
  }
  return r;
}

struct Agent::Slot {
  std::atomic<uint64_t> seq{0};
  int64_t step = 0;
  uint64_t time_ns = 0;
};

struct Agent::Essential {
  enum Kind { kCreated, kDestroyed, kRegions, kRankWorld, kEvent } kind;
  CommCreated created;
  uint64_t key = 0;
  std::vector<Region> regions;
  int32_t rank = -1, world = -1;
  Event event;
  Essential* next = nullptr;
};

Agent::Agent(Options opt) : opt_(std::move(opt)) {
  size_t n = 2;
  while (n < opt_.ring_slots) n <<= 1;
  ring_ = std::make_unique<Slot[]>(n);
  for (size_t i = 0; i < n; ++i) ring_[i].seq.store(i, std::memory_order_relaxed);
  mask_ = n - 1;
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

Agent::~Agent() {
  Stop(false);
  Essential* e = essentials_.exchange(nullptr);
  while (e) {
    Essential* n = e->next;
    delete e;
    e = n;
  }
  if (wake_fd_ >= 0) close(wake_fd_);
}

namespace {
std::atomic<Agent*> g_started{nullptr};  // the process's agent, for the fork handler
}  // namespace

// In a child forked while the agent runs: no agent thread was copied, only its socket; the child closes it so
// that the parent's death still closes the connection (the child may live on, as data-loader workers do).
void Agent::CloseInForkedChild() {
  if (Agent* a = g_started.load()) {
    const int fd = a->conn_fd_.exchange(-1);
    if (fd >= 0) close(fd);
  }
}

void Agent::Start() {
  if (thread_.joinable()) return;
  stop_.store(false);
  owner_pid_ = getpid();
  if (g_started.exchange(this) == nullptr) pthread_atfork(nullptr, nullptr, &Agent::CloseInForkedChild);
  thread_ = base::StartThread("tm-agent", [this] { Loop(); });
}

void Agent::Stop(bool bye) {
  if (!thread_.joinable() || getpid() != owner_pid_) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    stop_.store(true);  // the loop ends when the current handler returns; nobody joins it
    return;
  }
  bye_.store(bye);
  stop_.store(true);
  Wake();
  thread_.join();
}

void Agent::Wake() {
  uint64_t one = 1;
  ssize_t w = write(wake_fd_, &one, sizeof(one));
  (void)w;
}

void Agent::PushEssential(Essential* e) {
  e->next = essentials_.load(std::memory_order_relaxed);
  while (!essentials_.compare_exchange_weak(e->next, e, std::memory_order_release, std::memory_order_relaxed)) {
  }
  Wake();
}

void Agent::ReportCommCreated(const CommCreated& c) {
  auto* e = new Essential{Essential::kCreated};
  e->created = c;
  PushEssential(e);
}

void Agent::ReportCommDestroyed(uint64_t comm_key) {
  auto* e = new Essential{Essential::kDestroyed};
  e->key = comm_key;
  PushEssential(e);
}

void Agent::ReportRegions(std::vector<Region> regions) {
  auto* e = new Essential{Essential::kRegions};
  e->regions = std::move(regions);
  PushEssential(e);
}

void Agent::ReportRankWorld(int32_t rank, int32_t world) {
  auto* e = new Essential{Essential::kRankWorld};
  e->rank = rank;
  e->world = world;
  PushEssential(e);
}

void Agent::SendEvent(Event ev) {
  auto* e = new Essential{Essential::kEvent};
  e->event = std::move(ev);
  PushEssential(e);
}

void Agent::ReportSafePoint(int64_t step) {
  // The latest step is always kept, whatever happens to the ring.
  int64_t prev = latest_step_.load(std::memory_order_relaxed);
  while (step > prev && !latest_step_.compare_exchange_weak(prev, step, std::memory_order_relaxed)) {
  }
  uint64_t pos = head_.load(std::memory_order_relaxed);
  Slot* s;
  for (;;) {
    s = &ring_[pos & mask_];
    uint64_t seq = s->seq.load(std::memory_order_acquire);
    auto dif = static_cast<int64_t>(seq - pos);
    if (dif == 0) {
      if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
    } else if (dif < 0) {
      dropped_.fetch_add(1, std::memory_order_relaxed);  // full: drop, the step is coalesced above
      return;
    } else {
      pos = head_.load(std::memory_order_relaxed);
    }
  }
  s->step = step;
  s->time_ns = NowRealtimeNs();
  s->seq.store(pos + 1, std::memory_order_release);
}

// Everything the agent thread keeps between iterations of Loop.
struct Agent::Session {
  std::map<uint64_t, CommCreated> comms;  // live communicators, replayed on every connection
  std::vector<Region> regions;
  bool have_regions = false;
  Register self;
  std::unique_ptr<Connection> conn;
  bool registered = false;  // REGISTER and the replay were sent on this connection
  bool warned = false;      // one WARN per outage
  uint64_t backoff_ms = kReconnectFirstBackoffMs;
  uint64_t next_attempt = 0;
  uint64_t hb_interval_ns = kHeartbeatBeforeAckMs * kNsPerMs;
  uint64_t next_hb = 0;
  int64_t sent_step = -1;
  uint64_t next_tick = 0;
  std::vector<Event> held_events;  // engine events made while not registered: sent once registered
  StepTotals sent_totals;          // step timing as of the previous heartbeat
  std::deque<Essential*> backlog;  // essential reports, oldest first, not yet handled (paced to the connection)
  uint64_t last_heard = 0;         // monotonic: the last bytes from the coordinator (or the connect)
  uint64_t heard_bytes = 0;        // conn->received() then
  uint64_t keepalive_ns = 0;       // the coordinator's heartbeat (and KEEPALIVE) interval, from REGISTER_ACK
  uint64_t bye_by = 0;             // stalled: BYE "reconnect" queued last; closed once written, or at this time

  bool ready() const { return conn && registered; }
  void Send(MsgType t, const std::vector<uint8_t>& p) {
    if (ready()) conn->Send(t, p);
  }
};

void Agent::Loop() {
  Session s;
  s.self = opt_.self;
  while (!stop_.load()) {
    const uint64_t now = NowMonotonicNs();
    if (!s.conn && now >= s.next_attempt) Connect(s);
    if (s.conn && s.conn->authenticated() && !s.registered && !s.conn->closing()) RegisterAndReplay(s);
    if (tick_ && now >= s.next_tick) {
      tick_();
      s.next_tick = now + static_cast<uint64_t>(tick_period_ms_) * kNsPerMs;
    }
    DrainEssentials(s);
    DrainSafePoints(s);
    if (s.ready() && now >= s.next_hb) SendHeartbeat(s);
    if (s.conn && (Silent(s) || Stalled(s))) continue;
    if (s.conn && !s.conn->Flush()) {
      Lose(s, s.conn->error());
      continue;
    }
    PollOnce(s);
  }
  if (s.ready() && bye_.load()) SayBye(s);
  connected_.store(false);
  for (Essential* e : s.backlog) delete e;
}

// A coordinator that sent nothing (not even KEEPALIVE) for the silence timeout is frozen or cut off: the
// connection is dropped and re-made, which tells the migration machine too (docs/reliability.md).
bool Agent::Silent(Session& s) {
  const uint64_t now = NowMonotonicNs();  // not the loop's: the connection may be younger than that
  if (s.conn->received() != s.heard_bytes) {
    s.heard_bytes = s.conn->received();
    s.last_heard = now;
    return false;
  }
  if (now - s.last_heard <= SilenceLimitNs(s)) return false;
  // A live process closes this connection: it says so first, so that the coordinator, when it reads the close
  // (after its freeze, or once the link is back), waits for it to register again instead of taking the close for
  // its death. Sealed like every frame: nobody else can say it for this process, and a killed one cannot say it.
  const std::string why = "no word from the coordinator for " + std::to_string((now - s.last_heard) / kNsPerMs) + " ms";
  if (s.ready()) {
    SendBye(s, ByeReconnect(why), kReconnectByeFlushMs);
    s.conn->ReadSome();  // what the coordinator sent is read, so that closing sends FIN after BYE, not a reset
  }
  Lose(s, why);
  return true;
}

uint64_t Agent::SilenceLimitNs(const Session& s) const {
  return std::max<uint64_t>(static_cast<uint64_t>(opt_.silence_timeout_ms) * kNsPerMs, kSilenceIntervals * s.keepalive_ns);
}

// The coordinator reads nothing of what this connection queued (Connection::kMaxQueued: it sends, but its side of
// the link or its reading is stuck): the connection is re-made as a silent one's is, with BYE "reconnect" last,
// saying why. Nothing queued is dropped, so the BYE reaches the coordinator in order once it reads again, and it
// waits for this process to register again instead of taking the close for its death. The connection is closed
// once the BYE is written, or after the silence timeout; meanwhile nothing more is sent on it (events are held for
// the next connection, the rest is replayed at its registration).
bool Agent::Stalled(Session& s) {
  if (!s.conn->stalled()) return false;
  const uint64_t now = NowMonotonicNs();
  if (!s.bye_by) {
    TM_WARN(kLogControl, "agent: coordinator %s reads nothing of this connection (%s); it is closed after a BYE "
                         "\"reconnect\" saying so, and made again",
            opt_.coordinator.c_str(), s.conn->error().c_str());
    s.bye_by = now + SilenceLimitNs(s);
    if (s.registered) s.conn->SendLast(MsgType::kBye, EncodePayload(Bye{ByeReconnect(s.conn->error())}));
    s.registered = false;
    connected_.store(false);
  }
  if (s.conn->WantsWrite() && now < s.bye_by && s.conn->Flush()) return false;  // PollOnce waits for room
  s.conn->ReadSome();  // FIN after the BYE, not a reset
  Lose(s, s.conn->error());
  return true;
}

void Agent::Connect(Session& s) {
  int fd = -1;
  base::Status st = ConnectTcp(opt_.coordinator, kConnectTimeoutMs, &fd);
  if (!st.ok()) return Lose(s, st.message());
  // The local end of this connection is the address the job reaches this host at (base/host.h).
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  char ip[INET_ADDRSTRLEN] = {};
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 && local.sin_family == AF_INET &&
      inet_ntop(AF_INET, &local.sin_addr, ip, sizeof(ip)) != nullptr) {
    base::SetHostAddress(ip);
  }
  s.conn = std::make_unique<Connection>(fd, Connection::Side::kClient, opt_.token);
  conn_fd_.store(fd);
  s.conn->StartHello(kClientAgent);
  s.last_heard = NowMonotonicNs();
  s.heard_bytes = 0;
}

// On every connection: REGISTER, then what the coordinator must know (docs/protocol.md, "The coordinator's
// model": a restarted coordinator rebuilds its view from this replay).
void Agent::RegisterAndReplay(Session& s) {
  s.registered = true;
  s.conn->SendMsg(MsgType::kRegister, s.self);
  for (const auto& [key, c] : s.comms) s.conn->SendMsg(MsgType::kCommCreated, c);
  if (s.have_regions) s.conn->SendMsg(MsgType::kRegions, Regions{s.regions});
  int64_t step = latest_step_.load();
  if (step >= 0) s.conn->SendMsg(MsgType::kSafePoint, SafePoint{step, NowRealtimeNs()});
  s.sent_step = step;
  for (const Event& ev : s.held_events) s.conn->SendMsg(MsgType::kEvent, ev);
  s.held_events.clear();
  s.next_hb = NowMonotonicNs();
}

// The connection is gone (or never came): one WARN per outage, reconnect with backoff.
void Agent::Lose(Session& s, const std::string& why) {
  if (!s.warned && why.rfind("rejected by peer", 0) == 0) {
    TM_WARN(kLogControl,
            "agent: coordinator %s %s; check TRAINMOVER_TOKEN. Training continues, retrying in the background",
            opt_.coordinator.c_str(), why.c_str());
    s.warned = true;
  } else if (!s.warned) {
    TM_WARN(kLogControl, "agent: coordinator %s unreachable (%s); training continues, reconnecting in the background",
            opt_.coordinator.c_str(), why.c_str());
    s.warned = true;
  } else {
    TM_INFO(kLogControl, "agent: reconnect to %s failed: %s", opt_.coordinator.c_str(), why.c_str());
  }
  conn_fd_.store(-1);
  s.conn.reset();
  s.registered = false;
  s.bye_by = 0;
  connected_.store(false);
  s.next_attempt = NowMonotonicNs() + s.backoff_ms * kNsPerMs;
  s.backoff_ms = std::min<uint64_t>(s.backoff_ms * 2, kReconnectMaxBackoffMs);
}

// Essential reports, oldest first: kept for the replay and sent when connected.
void Agent::DrainEssentials(Session& s) {
  Essential* list = essentials_.exchange(nullptr, std::memory_order_acquire);
  const size_t at = s.backlog.size();
  for (; list; list = list->next) s.backlog.insert(s.backlog.begin() + static_cast<std::ptrdiff_t>(at), list);
  // Flow control: while the connection has kPaceBytes queued (a large tape on its way), the rest waits here,
  // in order, instead of growing the connection's buffer past its bound.
  while (!s.backlog.empty() && !(s.ready() && s.conn->queued_bytes() > kPaceBytes)) {
    Essential* e = s.backlog.front();
    s.backlog.pop_front();
    switch (e->kind) {
      case Essential::kCreated:
        s.comms[e->created.comm_key] = e->created;
        s.Send(MsgType::kCommCreated, EncodePayload(e->created));
        break;
      case Essential::kDestroyed:
        s.comms.erase(e->key);
        s.Send(MsgType::kCommDestroyed, EncodePayload(CommDestroyed{e->key}));
        break;
      case Essential::kRegions:
        s.regions = std::move(e->regions);
        s.have_regions = true;
        s.Send(MsgType::kRegions, EncodePayload(Regions{s.regions}));
        break;
      case Essential::kRankWorld:
        s.self.rank = e->rank;
        s.self.world = e->world;
        break;
      case Essential::kEvent:
        if (s.ready()) {
          s.conn->SendMsg(MsgType::kEvent, e->event);
        } else {
          TM_INFO(kLogControl, "agent: event %u of migration %" PRIu64 " held until the coordinator is reachable",
                  e->event.kind, e->event.migration);
          if (s.held_events.size() < 1024) s.held_events.push_back(std::move(e->event));
        }
        break;
    }
    delete e;
  }
}

// Safe points from the ring, then the coalesced latest step if the ring dropped some.
void Agent::DrainSafePoints(Session& s) {
  for (;;) {
    Slot& slot = ring_[tail_ & mask_];
    if (slot.seq.load(std::memory_order_acquire) != tail_ + 1) break;
    SafePoint sp{slot.step, slot.time_ns};
    slot.seq.store(tail_ + mask_ + 1, std::memory_order_release);
    ++tail_;
    if (sp.step > s.sent_step) {
      s.Send(MsgType::kSafePoint, EncodePayload(sp));
      if (s.registered) s.sent_step = sp.step;
    }
  }
  int64_t latest = latest_step_.load();
  if (s.registered && latest > s.sent_step) {
    s.Send(MsgType::kSafePoint, EncodePayload(SafePoint{latest, NowRealtimeNs()}));
    s.sent_step = latest;
  }
}

void Agent::SendHeartbeat(Session& s) {
  Heartbeat hb{latest_step_.load(), NowRealtimeNs(), dropped_.load(), {}};
  if (step_totals_) {
    const StepTotals now = step_totals_(s.sent_totals.steps);
    const StepTotals& was = s.sent_totals;
    if (now.steps > was.steps && now.wall_ns >= was.wall_ns && now.wait_ns >= was.wait_ns) {
      const uint64_t wall = now.wall_ns - was.wall_ns, wait = now.wait_ns - was.wait_ns;
      hb.window.steps = static_cast<uint32_t>(std::min<uint64_t>(now.steps - was.steps, UINT32_MAX));
      hb.window.wait_ns = wait;
      hb.window.compute_ns = wall > wait ? wall - wait : 0;
      hb.window.compute_p25_ns = now.compute_p25_ns;
    }
    s.sent_totals = now;
  }
  s.Send(MsgType::kHeartbeat, EncodePayload(hb));
  s.next_hb = NowMonotonicNs() + s.hb_interval_ns;
}

// Waits (at most 50 ms, less while a reconnect is due) for the wake eventfd or the connection, then handles
// what arrived.
void Agent::PollOnce(Session& s) {
  const uint64_t now = NowMonotonicNs();
  pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {s.conn ? s.conn->fd() : -1, 0, 0}};
  if (s.conn) fds[1].events = static_cast<short>(POLLIN | (s.conn->WantsWrite() ? POLLOUT : 0));
  int timeout = 50;
  if (!s.conn) {
    timeout = static_cast<int>(
        std::min<uint64_t>(kPollSliceMs, (s.next_attempt > now ? s.next_attempt - now : 0) / kNsPerMs + 1));
  }
  poll(fds, s.conn ? 2 : 1, timeout);
  if (fds[0].revents) {
    uint64_t v;
    ssize_t r = read(wake_fd_, &v, sizeof(v));
    (void)r;
  }
  if (!s.conn || !fds[1].revents) return;
  bool open = s.conn->ReadSome();
  Frame f;
  while (s.conn->Next(&f)) OnFrame(s, f);
  if (s.conn->failed() || !open) Lose(s, s.conn->error());
}

void Agent::OnFrame(Session& s, const Frame& f) {
  switch (static_cast<MsgType>(f.type)) {
    case MsgType::kRegisterAck: {
      RegisterAck a;
      if (!DecodePayload(f.payload, &a)) return;
      process_id_.store(a.process_id);
      uint64_t ms = a.heartbeat_interval_ms;
      if (opt_.heartbeat_ms > 0 && static_cast<uint64_t>(opt_.heartbeat_ms) < ms) ms = opt_.heartbeat_ms;
      s.hb_interval_ns = ms * kNsPerMs;
      s.keepalive_ns = uint64_t{a.heartbeat_interval_ms} * kNsPerMs;
      connections_.fetch_add(1);
      connected_.store(true);
      if (s.warned) TM_WARN(kLogControl, "agent: reconnected to coordinator %s", opt_.coordinator.c_str());
      TM_INFO(kLogControl, "agent: registered with coordinator %s as process %" PRIu64, opt_.coordinator.c_str(),
              a.process_id);
      s.warned = false;
      s.backoff_ms = kReconnectFirstBackoffMs;
      if (registered_) registered_(a);
      return;
    }
    case MsgType::kKeepalive:
      return;  // its bytes already counted as word from the coordinator (Silent)
    case MsgType::kCommand: {
      Command c;
      if (!DecodePayload(f.payload, &c)) {
        TM_WARN(kLogControl, "agent: malformed COMMAND ignored");
      } else if (handler_) {
        handler_(c);
      }
      return;
    }
    default:
      TM_WARN(kLogControl, "agent: unexpected %s from the coordinator ignored", MsgTypeName(f.type));
  }
}

// What the process said last (final steps, destroyed communicators) goes first, then BYE, flushed for at
// most 500 ms.
void Agent::SayBye(Session& s) {
  DrainEssentials(s);
  DrainSafePoints(s);
  SendBye(s, kByeExit, kByeFlushMs);
}

void Agent::SendBye(Session& s, const std::string& reason, uint64_t flush_ms) {
  s.conn->SendLast(MsgType::kBye, EncodePayload(Bye{reason}));
  uint64_t deadline = NowMonotonicNs() + flush_ms * kNsPerMs;
  while (s.conn->WantsWrite() && NowMonotonicNs() < deadline) {
    if (!s.conn->Flush()) break;
    pollfd p{s.conn->fd(), POLLOUT, 0};
    poll(&p, 1, 50);
  }
}

}  // namespace trainmover::control
