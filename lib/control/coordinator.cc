// SPDX-License-Identifier: Apache-2.0
#include "coordinator.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <exception>

#include "base/log.h"
#include "json_out.h"
#include "node.h"
#include "straggler_monitor.h"

namespace trainmover::control {

namespace {

// Histogram bucket bounds, in seconds.
constexpr double kBuckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
constexpr size_t kNumBuckets = sizeof(kBuckets) / sizeof(kBuckets[0]);
constexpr size_t kMaxHttpRequest = 8192;
constexpr size_t kMaxPeers = 4096;
// An agent or tool authenticates within 60 s. Not shorter: on a host overloaded by spinning ranks, a starting tmctl
// was measured taking 11-16 s from exec to its HELLO (load 25, 2 cores); the slots a slow or silent peer holds
// meanwhile are bounded by kMaxUnauthenticatedPerAddress, not by this deadline.
constexpr uint64_t kHelloDeadlineNs = 60000000000ull;
constexpr uint64_t kHttpClientDeadlineNs = 5000000000ull;  // a metrics scrape is answered or dropped in 5 s
constexpr size_t kMaxUnauthenticatedPerAddress = 64;       // connections from one address still without HELLO
constexpr uint64_t kAcceptRestNs = 100000000ull;           // the listener rests this long after EMFILE/ENFILE

// Runs `fn`; an exception (a bug, or memory exhausted) is logged with `what` and reported as false, so that it
// never leaves the coordinator's loop (docs/reliability.md).
template <typename F>
bool Guarded(const char* what, F&& fn) {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    TM_WARN(kLogControl, "coordinator: %s failed: %s", what, e.what());
  } catch (...) {
    TM_WARN(kLogControl, "coordinator: %s failed: unknown exception", what);
  }
  return false;
}

// Raises this process's open-file limit to its hard limit: every agent holds one connection.
void RaiseFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) TM_INFO(kLogControl, "coordinator: cannot raise the open-file limit");
}

std::string Q(const std::string& s) { return JsonQuote(s); }

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof(b), "0x%016" PRIx64, v);
  return b;
}

}  // namespace

const char* ProcStateName(ProcState s) {
  switch (s) {
    case ProcState::kAlive:
      return "alive";
    case ProcState::kLost:
      return "lost";
    case ProcState::kExited:
      return "exited";
  }
  return "?";
}

const char* MigStateName(MigState s) {
  switch (s) {
    case MigState::kRequested:
      return "requested";
    case MigState::kSpawning:
      return "spawning";
    case MigState::kSandbox:
      return "sandbox";
    case MigState::kReady:
      return "ready";
    case MigState::kBuilding:
      return "building";
    case MigState::kAgreeing:
      return "agreeing";
    case MigState::kSwitching:
      return "switching";
    case MigState::kDone:
      return "done";
    case MigState::kCancelled:
      return "cancelled";
    case MigState::kFailed:
      return "failed";
    case MigState::kRefused:
      return "refused";
  }
  return "?";
}

bool MigTerminal(MigState s) {
  return s == MigState::kDone || s == MigState::kCancelled || s == MigState::kFailed || s == MigState::kRefused;
}

struct Coordinator::Peer {
  std::unique_ptr<Connection> conn;
  uint64_t opened_ns = 0;  // monotonic: a peer that does not authenticate in kHelloDeadlineNs is dropped
  uint64_t process = 0;    // agent connections, after REGISTER
  std::string addr;
};

Coordinator::Coordinator(Options opt) : opt_(std::move(opt)), downtime_buckets_(kNumBuckets, 0) {
  // A round waits at most three heartbeat intervals for a silent worker (straggler_monitor.h).
  stragglers_ = std::make_unique<StragglerMonitor>(opt_.straggler, 3ull * heartbeat_interval_ms(),
                                                   [this](const MigrateReq& q) { return OnMigrate(q); });
}

Coordinator::~Coordinator() {
  peers_.clear();
  for (auto& [fd, h] : http_) close(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  if (metrics_fd_ >= 0) close(metrics_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

int Coordinator::heartbeat_interval_ms() const { return std::max(20, opt_.heartbeat_timeout_ms / 4); }

base::Status Coordinator::Start() {
  if (opt_.token.empty()) {
    return base::Status::Error(
        "no token: set TRAINMOVER_TOKEN or pass --token-file (every control message is authenticated)");
  }
  if (opt_.token.size() < kMinTokenBytes) {
    return base::Status::Error("the job's token (TRAINMOVER_TOKEN or --token-file) must have at least " +
                               std::to_string(kMinTokenBytes) + " characters, it has " +
                               std::to_string(opt_.token.size()) + " (every session key is derived from it)");
  }
  if (opt_.heartbeat_timeout_ms <= 0) return base::Status::Error("heartbeat timeout must be positive");
  if (std::string e = opt_.straggler.detector.Check(); !e.empty()) return base::Status::Error("straggler " + e);
  RaiseFileLimit();
  TM_CHECK(ListenTcp(opt_.listen, &listen_fd_, &address_));
  if (!opt_.metrics_listen.empty()) TM_CHECK(ListenTcp(opt_.metrics_listen, &metrics_fd_, &metrics_address_));
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  RandomBytes(&epoch_, sizeof(epoch_));
  start_ns_ = NowRealtimeNs();
  return base::Status::Ok();
}

void Coordinator::Stop() {
  stop_.store(true);
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t w = write(wake_fd_, &one, sizeof(one));
    (void)w;
  }
}

void Coordinator::Run() {
  std::vector<pollfd> fds;
  while (!stop_.load()) {
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, static_cast<short>(NowMonotonicNs() >= accept_paused_until_ ? POLLIN : 0), 0});
    if (metrics_fd_ >= 0) fds.push_back({metrics_fd_, POLLIN, 0});
    for (auto& [fd, p] : peers_)
      fds.push_back({fd, static_cast<short>(POLLIN | (p->conn->WantsWrite() ? POLLOUT : 0)), 0});
    for (auto& [fd, h] : http_) fds.push_back({fd, static_cast<short>(h.out.empty() ? POLLIN : POLLOUT), 0});
    int timeout = std::min(100, heartbeat_interval_ms());
    int n = poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) {
      TM_WARN(kLogControl, "coordinator: poll failed: %s", std::strerror(errno));
      break;
    }
    // New connections are accepted after the others' events: an accepted socket may take the number of one
    // closed in this round, and must not be handed that one's events.
    bool accept = false, accept_metrics = false;
    for (const pollfd& pf : fds) {
      if (!pf.revents) continue;
      if (pf.fd == wake_fd_) {
        uint64_t v;
        ssize_t r = read(wake_fd_, &v, sizeof(v));
        (void)r;
      } else if (pf.fd == listen_fd_) {
        accept = true;
      } else if (pf.fd == metrics_fd_) {
        accept_metrics = true;
      } else if (auto it = peers_.find(pf.fd); it != peers_.end()) {
        HandlePeer(*it->second, pf.revents);
      } else if (auto ht = http_.find(pf.fd); ht != http_.end()) {
        HttpPeer& h = ht->second;
        bool done = false;
        if (h.out.empty()) {
          char buf[2048];
          ssize_t r = read(h.fd, buf, sizeof(buf));
          if (r <= 0 && !(r < 0 && (errno == EAGAIN || errno == EINTR))) {
            done = true;
          } else if (r > 0) {
            h.in.append(buf, static_cast<size_t>(r));
            if (h.in.find("\r\n\r\n") != std::string::npos || h.in.find("\n\n") != std::string::npos) {
              std::string body, status = "200 OK";
              if (h.in.rfind("GET /metrics ", 0) == 0 || h.in.rfind("GET /metrics\r", 0) == 0 ||
                  h.in.rfind("GET /metrics?", 0) == 0) {
                body = MetricsText();
              } else {
                status = "404 Not Found";
                body = "not found: try /metrics\n";
              }
              h.out = "HTTP/1.0 " + status +
                      "\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n" + body;
            } else if (h.in.size() > kMaxHttpRequest) {
              done = true;
            }
          }
        } else {
          ssize_t w = send(h.fd, h.out.data() + h.out_off, h.out.size() - h.out_off, MSG_NOSIGNAL);
          if (w > 0) h.out_off += static_cast<size_t>(w);
          if ((w < 0 && errno != EAGAIN && errno != EINTR) || h.out_off == h.out.size()) done = true;
        }
        if (done) {
          close(h.fd);
          http_.erase(ht);
        }
      }
    }
    if (accept) Accept();
    if (accept_metrics) AcceptMetrics();
    Sweep();
    CheckHeartbeats();
    SendKeepalives();
    for (auto& e : engines_) Guarded("an engine's tick", [&] { e->OnTick(*this); });
    Guarded("the straggler monitor's tick", [&] { stragglers_->OnTick(*this, NowMonotonicNs(), NowRealtimeNs()); });
  }
}

void Coordinator::Sweep() {
  uint64_t now = NowMonotonicNs();
  // Slow HTTP clients do not hold a slot forever.
  for (auto it = http_.begin(); it != http_.end();) {
    if (now - it->second.opened_ns > kHttpClientDeadlineNs) {
      close(it->first);
      it = http_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<std::pair<int, std::string>> close_now;
  for (auto& [fd, p] : peers_) {
    Connection& c = *p->conn;
    if (!c.authenticated() && now - p->opened_ns > kHelloDeadlineNs) {
      TM_WARN(kLogControl, "coordinator: a connection from %s sent no valid HELLO within %llu s, closing",
              p->addr.c_str(), static_cast<unsigned long long>(kHelloDeadlineNs / 1000000000ull));
      ++rejected_;
      close_now.push_back({fd, "no HELLO"});
    } else if (c.stalled() || (c.failed() && !c.WantsWrite())) {  // it waits on no peer that does not read
      TM_WARN(kLogControl, "coordinator: closing the connection of process %" PRIu64 ": %s", p->process,
              c.error().c_str());
      close_now.push_back({fd, c.error()});
    }
  }
  for (auto& [fd, why] : close_now) ClosePeer(fd, why);
}

// Every registered agent hears from the coordinator at least once per heartbeat interval, so that it can tell
// a frozen coordinator or a cut link from a quiet one (Agent::Options::silence_timeout_ms).
void Coordinator::SendKeepalives() {
  const uint64_t now = NowMonotonicNs();
  if (now < next_keepalive_ns_) return;
  next_keepalive_ns_ = now + static_cast<uint64_t>(heartbeat_interval_ms()) * 1000000ull;
  for (auto& [fd, p] : peers_) {
    if (p->process && p->conn->authenticated()) p->conn->Send(MsgType::kKeepalive, {});
  }
}

size_t Coordinator::QueuedBytes(uint64_t process) const {
  auto pr = procs_.find(process);
  if (pr == procs_.end() || pr->second.conn_fd < 0) return 0;
  auto it = peers_.find(pr->second.conn_fd);
  return it == peers_.end() ? 0 : it->second->conn->queued_bytes();
}

int Coordinator::OldestUnauthenticated(const std::string* addr, size_t* count) const {
  int oldest = -1;
  uint64_t oldest_ns = 0;
  size_t n = 0;
  for (const auto& [pfd, q] : peers_) {
    if (q->conn->authenticated() || (addr && q->addr != *addr)) continue;
    ++n;
    if (oldest < 0 || q->opened_ns < oldest_ns) {
      oldest = pfd;
      oldest_ns = q->opened_ns;
    }
  }
  if (count) *count = n;
  return oldest;
}

void Coordinator::Accept() {
  bool evicted = false;
  for (;;) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors. Unauthenticated connections must not be able to hold them all: the oldest one
        // goes, so that an agent or tmctl waiting in the backlog is served (each eviction admits one connection
        // of the backlog, so this ends with it); with none to close, the pending connection stays in the
        // backlog and the listener rests instead of spinning on it.
        const int oldest = OldestUnauthenticated(nullptr, nullptr);
        if (oldest >= 0 && (errno == EMFILE || errno == ENFILE)) {
          if (!evicted) TM_WARN(kLogControl, "coordinator: accept: %s; closing the oldest unauthenticated "
                                "connections to make room", std::strerror(errno));
          evicted = true;
          ++rejected_;
          ClosePeer(oldest, "out of descriptors: the oldest unauthenticated connection goes");
          continue;
        }
        TM_WARN(kLogControl, "coordinator: accept: %s (%zu connections); pausing new connections for %llu ms",
                std::strerror(errno), peers_.size(), static_cast<unsigned long long>(kAcceptRestNs / 1000000));
        accept_paused_until_ = NowMonotonicNs() + kAcceptRestNs;
      }
      return;
    }
    char host[NI_MAXHOST] = "?";
    getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST);
    // One address may hold kMaxUnauthenticatedPerAddress connections that have not said HELLO: beyond that its
    // oldest one goes, so a flood never locks out a real agent or tmctl from the same host (they authenticate
    // at once).
    const std::string addr = host;
    size_t unauthenticated = 0;
    const int oldest = OldestUnauthenticated(&addr, &unauthenticated);
    if (unauthenticated >= kMaxUnauthenticatedPerAddress) {
      ++rejected_;
      if (!flood_warned_) TM_WARN(kLogControl, "coordinator: over %zu unauthenticated connections from %s: "
                                  "closing the oldest ones", kMaxUnauthenticatedPerAddress, host);
      flood_warned_ = true;
      ClosePeer(oldest, "unauthenticated flood");
    }
    if (peers_.size() >= kMaxPeers) {
      TM_WARN(kLogControl, "coordinator: too many connections (%zu), refusing one", peers_.size());
      ++rejected_;
      close(fd);
      continue;
    }
    auto p = std::make_unique<Peer>();
    p->conn = std::make_unique<Connection>(fd, Connection::Side::kServer, opt_.token);
    p->conn->server_epoch = epoch_;
    p->opened_ns = NowMonotonicNs();
    p->addr = host;
    ForgetClosedSocket(fd);  // a record still holding this number lost its socket to someone else's close
    peers_[fd] = std::move(p);
  }
}

void Coordinator::AcceptMetrics() {
  for (;;) {
    int fd = accept4(metrics_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (http_.size() >= 64) {
      close(fd);
      continue;
    }
    HttpPeer h;
    h.fd = fd;
    h.opened_ns = NowMonotonicNs();
    http_[fd] = std::move(h);
  }
}

void Coordinator::ClosePeer(int fd, const std::string& why) {
  auto it = peers_.find(fd);
  if (it == peers_.end()) return;
  uint64_t proc = it->second->process;
  if (proc) {
    ProcessRec* pr = FindProcess(proc);
    if (pr && pr->conn_fd == fd) {
      pr->conn_fd = -1;
      // While this coordinator hears nobody, and for a return grace after, a connection that ends without BYE was
      // most likely given up by its agent during the silence: its BYE "reconnect" was lost with the link, and the
      // closed socket answered this coordinator's held KEEPALIVEs with a reset (docs/reliability.md).
      const bool after_silence = isolated_since_ || (rejoined_ns_ && NowMonotonicNs() < rejoined_ns_ + ReturnGraceNs());
      if (pr->state == ProcState::kAlive && after_silence) {
        MarkReconnecting(*pr, why + ", just after this coordinator heard nobody");
      } else if (pr->state == ProcState::kAlive) {
        MarkLost(*pr, why);
      }
    }
  }
  peers_.erase(it);  // closes the socket
}

void Coordinator::ForgetClosedSocket(int fd) {
  auto it = peers_.find(fd);
  if (it == peers_.end()) return;
  TM_WARN(kLogControl, "coordinator: the socket (fd %d) of %s was closed under the coordinator; dropping that "
          "connection without closing the number again", fd,
          it->second->process ? ("process " + std::to_string(it->second->process)).c_str() : "an unregistered peer");
  it->second->conn->Disown();
  ClosePeer(fd, "its socket was closed under the coordinator");
}

void Coordinator::HandlePeer(Peer& p, short revents) {
  int fd = p.conn->fd();
  if (revents & POLLNVAL) {
    ForgetClosedSocket(fd);
    return;
  }
  Connection& c = *p.conn;
  bool open = true;
  if (revents & (POLLIN | POLLHUP | POLLERR)) open = c.ReadSome();
  Frame f;
  while (!c.failed() && c.Next(&f)) {
    // A message that makes the coordinator throw (a bug) costs its sender the connection, never the daemon.
    if (!Guarded(MsgTypeName(f.type), [&] { HandleMessage(p, f); })) {
      c.SendReject(RejectCode::kProtocol, "internal error handling " + std::string(MsgTypeName(f.type)));
      ++rejected_;
      break;
    }
  }
  if (c.failed()) {
    ++rejected_;
    TM_WARN(kLogControl, "coordinator: rejected connection %s: %s",
            p.process ? ("of process " + std::to_string(p.process)).c_str() : "(unregistered)", c.error().c_str());
  }
  if (!c.Flush()) open = false;
  if (!open || (c.closing() && !c.WantsWrite())) {
    std::string why = c.error().empty() ? "connection closed" : c.error();
    if (c.closing() && c.WantsWrite()) {
      // Best effort: a rejected peer that does not read does not hold the coordinator.
    }
    ClosePeer(fd, why);
  }
}

void Coordinator::HandleMessage(Peer& p, const Frame& f) {
  Connection& c = *p.conn;
  auto type = static_cast<MsgType>(f.type);
  bool agent = c.client_kind() == kClientAgent;
  auto bad = [&](const char* what) {
    TM_WARN(kLogControl, "coordinator: malformed %s from %s, closing", what, agent ? "agent" : "tool");
    c.SendReject(RejectCode::kProtocol, std::string("malformed ") + what);
    ++rejected_;
  };
  if (type == MsgType::kBye) {
    Bye bye;
    ProcessRec* pr = FindProcess(p.process);
    const bool decoded = pr && DecodePayload(f.payload, &bye);
    if (std::optional<std::string> why = decoded ? ByeReconnectWhy(bye.reason) : std::nullopt) {
      // Alive, and it will register again: lost until then, failed only if it does not (CheckHeartbeats).
      if (pr->state == ProcState::kAlive) {
        pr->conn_fd = -1;
        p.process = 0;
        MarkReconnecting(*pr, *why);
      }
    } else if (pr) {
      pr->state = ProcState::kExited;
      pr->conn_fd = -1;
      p.process = 0;
      TM_INFO(kLogControl, "coordinator: process %" PRIu64 " (rank %d) exited", pr->id, pr->info.rank);
      for (auto& e : engines_) e->OnProcessLost(*this, pr->id);  // the engine tells exited from lost by state
    }
    c.SendReject(RejectCode::kProtocol, "bye");
    return;
  }
  if (agent) {
    if (type == MsgType::kRegister) {
      Register r;
      if (!DecodePayload(f.payload, &r)) return bad("REGISTER");
      OnRegister(p, r);
      return;
    }
    ProcessRec* pr = FindProcess(p.process);
    if (!pr) {
      TM_WARN(kLogControl, "coordinator: %s before REGISTER, closing", MsgTypeName(f.type));
      c.SendReject(RejectCode::kOrder, "REGISTER first");
      ++rejected_;
      return;
    }
    switch (type) {
      case MsgType::kHeartbeat: {
        Heartbeat h;
        if (!DecodePayload(f.payload, &h)) return bad("HEARTBEAT");
        pr->last_heartbeat_ns = NowMonotonicNs();
        pr->missed_counted = 0;
        pr->dropped = h.dropped;
        if (h.step > pr->step) pr->step = h.step;
        stragglers_->OnWindow(pr->id, h.window, pr->last_heartbeat_ns);
        if (pr->state == ProcState::kLost && !pr->fenced) {
          pr->state = ProcState::kAlive;
          pr->returning_by_ns = 0;
          TM_INFO(kLogControl, "coordinator: process %" PRIu64 " is back", pr->id);
        }
        return;
      }
      case MsgType::kCommCreated: {
        CommCreated m;
        if (!DecodePayload(f.payload, &m)) return bad("COMM_CREATED");
        OnCommCreated(*pr, m);
        return;
      }
      case MsgType::kCommDestroyed: {
        CommDestroyed m;
        if (!DecodePayload(f.payload, &m)) return bad("COMM_DESTROYED");
        OnCommDestroyed(*pr, m.comm_key);
        return;
      }
      case MsgType::kSafePoint: {
        SafePoint m;
        if (!DecodePayload(f.payload, &m)) return bad("SAFEPOINT");
        if (m.step >= pr->step) {
          pr->step = m.step;
          pr->step_time_ns = m.time_ns;
        }
        ++pr->safepoints;
        return;
      }
      case MsgType::kRegions: {
        Regions m;
        if (!DecodePayload(f.payload, &m)) return bad("REGIONS");
        pr->regions = std::move(m.regions);
        return;
      }
      case MsgType::kEvent: {
        Event e;
        if (!DecodePayload(f.payload, &e)) return bad("EVENT");
        for (auto& en : engines_) en->OnEvent(*this, pr->id, e);
        return;
      }
      default:
        TM_WARN(kLogControl, "coordinator: unexpected %s from an agent, closing", MsgTypeName(f.type));
        c.SendReject(RejectCode::kProtocol, "unexpected message");
        ++rejected_;
        return;
    }
  }
  // Tool connections.
  switch (type) {
    case MsgType::kStatusReq: {
      StatusReq q;
      if (!DecodePayload(f.payload, &q)) return bad("STATUS_REQ");
      JsonReply r;
      r.json = StatusJson();
      if (r.json.size() > kMaxPayload - 16) {
        r.ok = 0;
        r.json = "the status document exceeds one frame (" + std::to_string(r.json.size()) + " bytes)";
      }
      c.SendMsg(MsgType::kStatusReply, r);
      return;
    }
    case MsgType::kMigrateReq: {
      MigrateReq q;
      if (!DecodePayload(f.payload, &q)) return bad("MIGRATE_REQ");
      c.SendMsg(MsgType::kMigrateReply, OnMigrate(q));
      return;
    }
    case MsgType::kCancelReq: {
      CancelReq q;
      if (!DecodePayload(f.payload, &q)) return bad("CANCEL_REQ");
      c.SendMsg(MsgType::kCancelReply, OnCancel(q));
      return;
    }
    case MsgType::kTimelineReq: {
      TimelineReq q;
      if (!DecodePayload(f.payload, &q)) return bad("TIMELINE_REQ");
      JsonReply r;
      Migration* m = FindMigration(q.id);
      if (!m) {
        r.ok = 0;
        r.json = q.id ? "no migration with id " + std::to_string(q.id) : "no migration yet";
      } else {
        r.json = TimelineJson(*m);
      }
      c.SendMsg(MsgType::kTimelineReply, r);
      return;
    }
    default:
      TM_WARN(kLogControl, "coordinator: unexpected %s from a tool, closing", MsgTypeName(f.type));
      c.SendReject(RejectCode::kProtocol, "unexpected message");
      ++rejected_;
      return;
  }
}

void Coordinator::OnRegister(Peer& p, const Register& r) {
  ProcessRec* pr = nullptr;
  for (auto& [id, rec] : procs_) {
    if (rec.info.instance == r.instance && rec.info.pid == r.pid && rec.info.host == r.host) pr = &rec;
  }
  if (pr && pr->conn_fd >= 0 && pr->conn_fd != p.conn->fd()) {
    // The same process on a new connection (its agent gave up on the old one, whose BYE "reconnect" never arrived):
    // what that BYE would have said, a reconnection, never a failure (it was one once, and a recovery replaced a
    // live rank); the old connection goes.
    const int old = pr->conn_fd;
    pr->conn_fd = -1;
    if (pr->state == ProcState::kAlive) {
      MarkReconnecting(*pr, "a new connection replaced its old one");
    }
    ClosePeer(old, "replaced by a new connection");
  }
  bool again = pr != nullptr;
  if (!pr) {
    uint64_t id = next_proc_++;
    pr = &procs_[id];
    pr->id = id;
  }
  pr->info = r;
  if (!pr->fenced) {  // a fenced process stays lost (its engine tells it to end)
    pr->state = ProcState::kAlive;
    pr->lost_reason.clear();
  }
  pr->returning_by_ns = 0;
  pr->conn_fd = p.conn->fd();
  pr->last_heartbeat_ns = NowMonotonicNs();
  pr->missed_counted = 0;
  p.process = pr->id;
  RegisterAck a;
  a.process_id = pr->id;
  a.heartbeat_interval_ms = static_cast<uint32_t>(heartbeat_interval_ms());
  if ((r.role == "joiner" || r.role == "standby") && r.replace >= 0) ReplacedTable(r.replace, &a);
  p.conn->SendMsg(MsgType::kRegisterAck, a);
  TM_INFO(kLogControl, "coordinator: %s process %" PRIu64 ": %s %s:%u rank %d/%d",
          again ? "re-registered" : "registered", pr->id, r.role.c_str(), r.host.c_str(), r.pid, r.rank, r.world);
  if (again) {
    for (auto& e : engines_) Guarded("an engine's returning-process handler", [&] { e->OnProcessBack(*this, pr->id); });
  }
}

// The communicators of the process holding `rank`, in its creation order: a joiner's sandbox answers from them.
void Coordinator::ReplacedTable(int32_t rank, RegisterAck* a) {
  const ProcessRec* holder = FindProcessByRank(rank);
  const ProcessRec* lost = nullptr;  // else the newest lost one: a failed rank's replacement (docs/recovery.md)
  for (const auto& [id, pr] : procs_) {
    if (pr.state == ProcState::kLost && pr.info.role == "worker" && pr.info.rank == rank) lost = &pr;
  }
  if (!holder) holder = lost;
  if (!holder) return;
  a->has_table = 1;
  for (const auto& [key, c] : holder->comm_info) a->replaced_comms.push_back(c);
  std::sort(a->replaced_comms.begin(), a->replaced_comms.end(),
            [](const CommCreated& x, const CommCreated& y) { return x.lineage.index < y.lineage.index; });
}

void Coordinator::OnCommCreated(ProcessRec& pr, const CommCreated& c) {
  if (!c.Valid()) {  // refused, the process stays: its other reports are good
    TM_WARN(kLogControl, "coordinator: process %" PRIu64 " reports comm %s with rank %d of %d ranks; ignored", pr.id,
            Hex(c.comm_key).c_str(), c.rank, c.nranks);
    ++rejected_;
    return;
  }
  CommRec& cr = comms_[c.comm_key];
  if (cr.members.empty()) {
    cr.key = c.comm_key;
    cr.nranks = c.nranks;
    cr.lineage = c.lineage;
  } else if (cr.nranks != c.nranks) {
    TM_WARN(kLogControl, "coordinator: process %" PRIu64 " reports comm %s with %d ranks, others %d", pr.id,
            Hex(c.comm_key).c_str(), c.nranks, cr.nranks);
  }
  auto old = cr.members.find(c.rank);
  if (old != cr.members.end() && old->second != pr.id) {
    // A rank now held by another process (a reconnect with a new instance, or a joiner after a switch).
    if (ProcessRec* prev = FindProcess(old->second)) {
      prev->comms.erase(std::remove(prev->comms.begin(), prev->comms.end(), c.comm_key), prev->comms.end());
    }
  }
  cr.members[c.rank] = pr.id;
  pr.comm_info[c.comm_key] = c;
  if (std::find(pr.comms.begin(), pr.comms.end(), c.comm_key) == pr.comms.end()) pr.comms.push_back(c.comm_key);
  if (pr.info.rank < 0 && c.lineage.index == 0) {
    pr.info.rank = c.rank;
    pr.info.world = c.nranks;
  }
}

void Coordinator::OnCommDestroyed(ProcessRec& pr, uint64_t key) {
  auto it = comms_.find(key);
  pr.comms.erase(std::remove(pr.comms.begin(), pr.comms.end(), key), pr.comms.end());
  pr.comm_info.erase(key);
  if (it == comms_.end()) return;
  for (auto m = it->second.members.begin(); m != it->second.members.end();) {
    m = m->second == pr.id ? it->second.members.erase(m) : std::next(m);
  }
  if (it->second.members.empty()) comms_.erase(it);
}

void Coordinator::MarkReconnecting(ProcessRec& pr, const std::string& why) {
  pr.returning_by_ns = NowMonotonicNs() + ReturnGraceNs();
  pr.last_heartbeat_ns = NowMonotonicNs();  // heard: proof that this coordinator hears the job
  MarkLost(pr, "reconnecting (" + why + ")");
}

void Coordinator::MarkLost(ProcessRec& pr, const std::string& why) {
  pr.state = ProcState::kLost;
  pr.lost_reason = why;
  TM_WARN(kLogControl, "coordinator: process %" PRIu64 " (%s:%u rank %d) lost: %s", pr.id, pr.info.host.c_str(),
          pr.info.pid, pr.info.rank, why.c_str());
  for (auto& e : engines_) Guarded("an engine's lost-process handler", [&] { e->OnProcessLost(*this, pr.id); });
}

// How long a process that said it will reconnect has to register again: the heartbeat timeout, and at least what
// an agent's reconnection can take (its backoff peaks at 2 s, a connect attempt takes up to 1 s).
uint64_t Coordinator::ReturnGraceNs() const {
  return std::max<uint64_t>(static_cast<uint64_t>(opt_.heartbeat_timeout_ms), kMinReturnGraceMs) * 1000000ull;
}

void Coordinator::DeclareLost(uint64_t process, const std::string& why) {
  auto it = procs_.find(process);
  if (it == procs_.end()) return;
  ProcessRec& pr = it->second;
  if (pr.state == ProcState::kLost && pr.returning_by_ns) {  // it will not be waited for any longer
    pr.returning_by_ns = 0;
    return MarkLost(pr, why);
  }
  if (pr.state != ProcState::kAlive) return;
  MarkLost(pr, why);
  if (pr.conn_fd >= 0) {  // as for a heartbeat timeout: it re-registers if it comes back
    peers_.erase(pr.conn_fd);
    pr.conn_fd = -1;
  }
}

void Coordinator::SetMember(uint64_t key, int32_t rank, uint64_t process) {
  auto it = comms_.find(key);
  ProcessRec* pr = FindProcess(process);
  if (it == comms_.end() || !pr) return;
  auto old = it->second.members.find(rank);
  if (old != it->second.members.end() && old->second != process) {
    if (ProcessRec* prev = FindProcess(old->second)) {
      prev->comms.erase(std::remove(prev->comms.begin(), prev->comms.end(), key), prev->comms.end());
    }
  }
  it->second.members[rank] = process;
  if (std::find(pr->comms.begin(), pr->comms.end(), key) == pr->comms.end()) pr->comms.push_back(key);
}

void Coordinator::CheckHeartbeats() {
  uint64_t now = NowMonotonicNs();
  uint64_t interval = static_cast<uint64_t>(heartbeat_interval_ms()) * 1000000ull;
  uint64_t timeout = static_cast<uint64_t>(opt_.heartbeat_timeout_ms) * 1000000ull;
  // Silence is blamed on a process only with proof that the coordinator hears the job: another process heard after
  // the silent one's deadline. A coordinator cut off from every process (its host's link down) would otherwise
  // declare them all failed, one by one, and recoveries would kill live ranks; it declares nobody until someone is
  // heard (docs/reliability.md). Without another live process (nobody could give proof) none is needed.
  // The job's live members: alive, or lost for a moment because they said they reconnect (after a cut, most
  // processes are that first: their BYE "reconnect" is heard, and the last silent one is not the job's only one).
  auto member = [](const ProcessRec& pr) {
    return pr.info.role != node::kRole &&
           (pr.state == ProcState::kAlive || (pr.state == ProcState::kLost && pr.returning_by_ns));
  };
  uint64_t newest_heard = 0;
  int job_alive = 0;
  for (const auto& [id, pr] : procs_) {
    if (!member(pr)) continue;
    ++job_alive;
    newest_heard = std::max(newest_heard, pr.last_heartbeat_ns);
  }
  // A coordinator that did not run for a while (SIGSTOP, a paused VM, an overloaded host), or heard nobody for a
  // while (cut off), blames nobody for it: every silence counts from now, when it runs (hears) again. After a cut,
  // the processes' held frames arrive one connection at a time, and a reconnection takes up to a backoff.
  const uint64_t paused = last_check_ns_ && now - last_check_ns_ > interval ? now - last_check_ns_ : 0;
  const bool heard_again = isolated_since_ && newest_heard > isolated_since_;
  last_check_ns_ = now;
  if (paused || heard_again) {
    const std::string why = paused ? "did not run for " + std::to_string(paused / 1000000) + " ms"
                                   : "hears the job again after every process was silent";
    TM_WARN(kLogControl, "coordinator: %s; heartbeat ages count from now", why.c_str());
    for (auto& [id, pr] : procs_) {
      pr.last_heartbeat_ns = std::max(pr.last_heartbeat_ns, now - std::min(now, interval));
      if (pr.returning_by_ns) pr.returning_by_ns = std::max(pr.returning_by_ns, now + ReturnGraceNs());
      if (member(pr)) newest_heard = std::max(newest_heard, pr.last_heartbeat_ns);
    }
    isolated_since_ = 0;
    rejoined_ns_ = now;
  }
  auto proven = [&](const ProcessRec& pr, uint64_t deadline) {
    return newest_heard > deadline || job_alive - (member(pr) ? 1 : 0) <= 0;
  };
  int alive = 0;  // the job's processes still alive after this check (alive_processes(); node agents aside)
  int training = 0;
  for (auto& [id, pr] : procs_) {
    if (pr.state == ProcState::kLost && pr.returning_by_ns) {
      // It said it would register again and has not: now it is silent like any other (killed meanwhile, or its
      // host cut off), and the engines hear that it is lost for good.
      if (now > pr.returning_by_ns && proven(pr, pr.returning_by_ns)) {
        pr.returning_by_ns = 0;
        MarkLost(pr, "no heartbeat for " + std::to_string(ReturnGraceNs() / 1000000) +
                         " ms after it said it would reconnect");
      }
      alive += pr.returning_by_ns && pr.info.role != node::kRole;  // tmrun keeps serving it meanwhile
      continue;
    }
    if (pr.state != ProcState::kAlive) continue;
    uint64_t age = now - pr.last_heartbeat_ns;
    // A heartbeat is "missed" for every full interval beyond the first without one.
    uint64_t missed = age > interval ? age / interval - 1 : 0;
    if (missed > pr.missed_counted) {
      heartbeats_missed_ += missed - pr.missed_counted;
      pr.missed_counted = missed;
    }
    if (age > timeout && proven(pr, pr.last_heartbeat_ns + timeout)) {
      MarkLost(pr, "no heartbeat for " + std::to_string(age / 1000000) + " ms");
      if (pr.conn_fd >= 0) {
        int fd = pr.conn_fd;
        pr.conn_fd = -1;
        peers_.erase(fd);  // a stuck peer's connection goes too; it re-registers if it comes back
      }
    }
    alive += pr.state == ProcState::kAlive && pr.info.role != node::kRole;
    training += pr.state == ProcState::kAlive && pr.info.role == "worker" && pr.step >= 0;
  }
  // Nobody heard for a whole timeout while several processes are alive: the coordinator is the one cut off.
  if (!isolated_since_ && job_alive > 1 && now - newest_heard > timeout) {
    TM_WARN(kLogControl, "coordinator: no process was heard for the heartbeat timeout (%d ms): this coordinator may be "
            "the one cut off; nobody is declared failed until one is heard", opt_.heartbeat_timeout_ms);
    isolated_since_ = newest_heard;
  }
  alive_processes_.store(alive, std::memory_order_relaxed);
  workers_training_.store(training, std::memory_order_relaxed);
  int recovering = 0;
  for (const auto& [id, m] : migs_) recovering += m.kind == kKindRecover && !MigTerminal(m.state);
  recovering_.store(recovering, std::memory_order_relaxed);
  std::set<uint32_t> fenced;
  for (const auto& [id, pr] : procs_) {
    if (pr.fenced) fenced.insert(pr.info.pid);
  }
  std::lock_guard<std::mutex> lk(fenced_mu_);
  fenced_pids_ = std::move(fenced);
}

void Coordinator::AddEngine(std::unique_ptr<Engine> e) {
  for (auto& have : engines_) {
    if (std::string(have->kind()) == e->kind()) {
      have = std::move(e);
      return;
    }
  }
  engines_.push_back(std::move(e));
}

Engine* Coordinator::EngineOf(const std::string& kind) const {
  for (const auto& e : engines_) {
    if (kind == e->kind()) return e.get();
  }
  return nullptr;
}

// Records the request, then lets the engine of its kind validate and drive it; the reply says what became of
// it. The rules of what may be migrated are the engine's (Engine::Validate).
MigrateReply Coordinator::OnMigrate(const MigrateReq& q) {
  MigrateReply r;
  Migration m;
  m.id = next_mig_++;
  m.kind = kKindMigrate;
  m.rank = q.rank;
  m.host = q.host;
  m.spawn = q.spawn != 0;
  m.created_ns = NowRealtimeNs();
  m.ranks = {q.rank};
  m.ranks.insert(m.ranks.end(), q.more_ranks.begin(), q.more_ranks.end());
  if (ProcessRec* leaver = FindProcessByRank(q.rank)) m.leaver = leaver->id;
  Migration& rec = migs_[m.id] = std::move(m);
  r.id = rec.id;
  Engine* engine = EngineOf(rec.kind);
  std::string refuse = engine ? engine->Validate(*this, rec)
                              : "this coordinator has no engine for requests of kind '" + rec.kind +
                                    "' (its owner installs one with Coordinator::AddEngine)";
  if (!refuse.empty()) {
    SetMigState(rec, MigState::kRefused, refuse);
    r.accepted = 0;
    r.state = MigStateName(rec.state);
    r.message = "migration " + std::to_string(rec.id) + " refused: " + refuse;
    return r;
  }
  BeginPhase(rec, 0, "requested");
  engine->OnRequest(*this, rec);
  r.accepted = !MigTerminal(rec.state);
  r.message = r.accepted ? "migration " + std::to_string(rec.id) + " started" : rec.reason;
  if (!rec.joiner_log.empty()) r.message += "; joiner output: " + rec.joiner_log;
  // --to H names a host nothing has registered from (a typo, or a fresh host whose joiner is still to come): accepted,
  // since a joiner started there by hand is how a new host joins, but said, or the operator waits out the phase
  // timeout for a joiner that never comes.
  const bool known_host = std::any_of(procs_.begin(), procs_.end(),
                                      [&](const auto& kv) { return kv.second.info.host == rec.host; });
  if (r.accepted && !rec.host.empty() && !rec.spawn && !known_host) {
    r.message += "; no process or node agent has registered from host '" + rec.host +
                 "' yet: it waits for a joiner started there (up to TRAINMOVER_PHASE_TIMEOUT_MS)";
  }
  r.state = MigStateName(rec.state);
  return r;
}

Migration& Coordinator::NewMigration(const std::string& kind, int32_t rank) {
  Migration m;
  m.id = next_mig_++;
  m.kind = kind;
  m.rank = rank;
  m.ranks = {rank};
  m.created_ns = NowRealtimeNs();
  Migration& rec = migs_[m.id] = std::move(m);
  if (kind == kKindRecover) recovering_.fetch_add(1, std::memory_order_relaxed);  // before the loop's next count
  return rec;
}

CancelReply Coordinator::OnCancel(const CancelReq& q) {
  CancelReply r;
  Migration* m = nullptr;
  if (q.id) {
    m = FindMigration(q.id);
  } else {
    for (auto& [id, mg] : migs_) {
      if (!MigTerminal(mg.state)) m = &mg;
    }
  }
  if (!m) {
    r.message = q.id ? "no migration with id " + std::to_string(q.id) : "no active migration to cancel";
    return r;
  }
  if (MigTerminal(m->state)) {
    r.message = "migration " + std::to_string(m->id) + " already " + MigStateName(m->state);
    return r;
  }
  if (m->switch_sent) {
    r.message = "migration " + std::to_string(m->id) + " sent SWITCH: too late to cancel";
    return r;
  }
  if (Engine* e = EngineOf(m->kind)) e->OnCancel(*this, *m);
  if (!MigTerminal(m->state)) SetMigState(*m, MigState::kCancelled, "cancelled by the operator");
  r.ok = 1;
  r.message = "migration " + std::to_string(m->id) + " cancelled";
  return r;
}

void Coordinator::Observe(std::vector<uint64_t>& buckets, double& sum, uint64_t& count, double v) const {
  buckets.resize(kNumBuckets, 0);
  for (size_t i = 0; i < kNumBuckets; ++i) {
    if (v <= kBuckets[i]) ++buckets[i];
  }
  sum += v;
  ++count;
}

void Coordinator::SetMigState(Migration& m, MigState s, const std::string& reason) {
  if (MigTerminal(m.state)) return;  // terminal states are final
  TM_INFO(kLogControl, "coordinator: migration %" PRIu64 ": %s -> %s%s%s", m.id, MigStateName(m.state), MigStateName(s),
          reason.empty() ? "" : ": ", reason.c_str());
  m.state = s;
  if (!reason.empty()) m.reason = reason;
  if (MigTerminal(s)) {
    m.ended_ns = NowRealtimeNs();
    for (PhaseSpan& p : m.phases) {
      if (!p.end_ns) p.end_ns = m.ended_ns;
    }
    if (m.kind == kKindRecover) {
      ++recovery_outcomes_[MigStateName(s)];
      if (s == MigState::kDone) {
        Observe(recovery_downtime_buckets_, recovery_downtime_sum_, recovery_downtime_count_, m.downtime_ns / 1e9);
      }
    } else {
      ++mig_outcomes_[MigStateName(s)];
      if (s == MigState::kDone) Observe(downtime_buckets_, downtime_sum_, downtime_count_, m.downtime_ns / 1e9);
    }
  }
}

void Coordinator::BeginPhase(Migration& m, uint64_t process, const std::string& phase) {
  PhaseSpan p;
  p.process = process;
  p.phase = phase;
  p.start_ns = NowRealtimeNs();
  m.phases.push_back(std::move(p));
}

void Coordinator::EndPhase(Migration& m, uint64_t process, const std::string& phase) {
  for (auto it = m.phases.rbegin(); it != m.phases.rend(); ++it) {
    if (it->process == process && it->phase == phase && !it->end_ns) {
      it->end_ns = NowRealtimeNs();
      PhaseHist& h = phase_hist_[phase];
      Observe(h.buckets, h.sum, h.count, (it->end_ns - it->start_ns) / 1e9);
      return;
    }
  }
}

bool Coordinator::SendCommand(uint64_t process, const Command& cmd) {
  ProcessRec* pr = FindProcess(process);
  if (!pr || pr->conn_fd < 0) return false;
  auto it = peers_.find(pr->conn_fd);
  if (it == peers_.end()) return false;
  return it->second->conn->SendMsg(MsgType::kCommand, cmd);
}

ProcessRec* Coordinator::FindProcess(uint64_t id) {
  auto it = procs_.find(id);
  return it == procs_.end() ? nullptr : &it->second;
}

ProcessRec* Coordinator::FindProcessByRank(int32_t rank) {
  for (auto& [id, pr] : procs_) {
    if (pr.state == ProcState::kAlive && !pr.fenced && pr.info.role == "worker" && pr.info.rank == rank) return &pr;
  }
  return nullptr;
}

Migration* Coordinator::FindMigration(uint64_t id) {
  if (migs_.empty()) return nullptr;
  if (id == 0) return &migs_.rbegin()->second;
  auto it = migs_.find(id);
  return it == migs_.end() ? nullptr : &it->second;
}

std::string Coordinator::StatusJson() const {
  uint64_t now_mono = NowMonotonicNs();
  uint64_t now = NowRealtimeNs();
  std::string o = "{\"coordinator\":{\"address\":" + Q(address_) + ",\"epoch\":" + Q(Hex(epoch_)) +
                  ",\"uptime_ms\":" + std::to_string((now - start_ns_) / 1000000) +
                  ",\"heartbeat_timeout_ms\":" + std::to_string(opt_.heartbeat_timeout_ms) + "}" +
                  // What launchers ask (tmrun: embedded through the accessors, on other nodes through this).
                  ",\"job\":{\"processes_alive\":" + std::to_string(alive_processes()) +
                  ",\"workers_training\":" + std::to_string(workers_training()) +
                  ",\"recoveries_running\":" + std::to_string(recovering()) + "},\"processes\":[";
  bool first = true;
  for (const auto& [id, pr] : procs_) {
    if (!first) o += ",";
    first = false;
    o += "{\"id\":" + std::to_string(id) + ",\"host\":" + Q(pr.info.host) + ",\"pid\":" + std::to_string(pr.info.pid) +
         ",\"role\":" + Q(pr.info.role) + ",\"state\":" + Q(ProcStateName(pr.state)) +
         ",\"rank\":" + std::to_string(pr.info.rank) + ",\"world\":" + std::to_string(pr.info.world) +
         ",\"step\":" + std::to_string(pr.step) + ",\"safepoints\":" + std::to_string(pr.safepoints) +
         ",\"heartbeat_age_ms\":" + std::to_string((now_mono - pr.last_heartbeat_ns) / 1000000) +
         ",\"dropped_reports\":" + std::to_string(pr.dropped) + ",\"comms\":" + std::to_string(pr.comms.size()) +
         ",\"snapshot_step\":" + std::to_string(pr.snapshot_step) +
         ",\"snapshot_every\":" + std::to_string(pr.snapshot_every);
    if (pr.info.replace >= 0) o += ",\"replace\":" + std::to_string(pr.info.replace);
    if (pr.info.role == "standby") {
      o += std::string(",\"standby\":{\"warm_rank\":") + std::to_string(pr.info.replace) +
           ",\"ready\":" + (pr.standby.ready ? "true" : "false") +
           ",\"any_rank\":" + (pr.standby.any_rank ? "true" : "false") + "}";
    }
    if (!pr.lost_reason.empty() && pr.state == ProcState::kLost) o += ",\"lost_reason\":" + Q(pr.lost_reason);
    if (pr.fenced) o += ",\"fenced\":true";  // declared failed and replaced: its exit is expected
    o += stragglers_->ProcessJson(id);
    o += ",\"regions\":[";
    for (size_t i = 0; i < pr.regions.size(); ++i) {
      o += (i ? ",{\"name\":" : "{\"name\":") + Q(pr.regions[i].name) +
           ",\"bytes\":" + std::to_string(pr.regions[i].bytes) + "}";
    }
    o += "]}";
  }
  o += "],\"communicators\":[";
  first = true;
  for (const auto& [key, cr] : comms_) {
    if (!first) o += ",";
    first = false;
    o += "{\"key\":" + Q(Hex(key)) + ",\"nranks\":" + std::to_string(cr.nranks) +
         ",\"kind\":" + Q(LineageKindName(cr.lineage.kind)) + ",\"index\":" + std::to_string(cr.lineage.index) +
         ",\"complete\":" + (static_cast<int32_t>(cr.members.size()) == cr.nranks ? "true" : "false") +
         ",\"members\":[";
    bool f2 = true;
    for (const auto& [rank, pid] : cr.members) {
      auto it = procs_.find(pid);
      if (!f2) o += ",";
      f2 = false;
      o += "{\"rank\":" + std::to_string(rank) + ",\"process\":" + std::to_string(pid);
      if (it != procs_.end()) {
        o += ",\"host\":" + Q(it->second.info.host) + ",\"pid\":" + std::to_string(it->second.info.pid) +
             ",\"state\":" + Q(ProcStateName(it->second.state));
      }
      o += "}";
    }
    o += "]}";
  }
  o += "],\"migrations\":[";
  first = true;
  for (const auto& [id, m] : migs_) {
    if (!first) o += ",";
    first = false;
    std::string ranks;
    for (int32_t x : m.ranks) ranks += (ranks.empty() ? "" : ",") + std::to_string(x);
    o += "{\"id\":" + std::to_string(id) + ",\"kind\":" + Q(m.kind) + ",\"rank\":" + std::to_string(m.rank) +
         ",\"ranks\":[" + ranks + "]" +
         ",\"host\":" + Q(m.host) + ",\"spawn\":" + (m.spawn ? "true" : "false") +
         ",\"state\":" + Q(MigStateName(m.state)) + ",\"reason\":" + Q(m.reason) +
         ",\"leaver\":" + std::to_string(m.leaver) + ",\"joiner\":" + std::to_string(m.joiner) +
         ",\"switch_step\":" + std::to_string(m.switch_step) + ",\"bytes_total\":" + std::to_string(m.bytes_total) +
         ",\"bytes_done\":" + std::to_string(m.bytes_done) + ",\"downtime_ms\":" + std::to_string(m.downtime_ns / 1e6) +
         ",\"elapsed_ms\":" + std::to_string(((m.ended_ns ? m.ended_ns : now) - m.created_ns) / 1000000);
    if (m.kind == kKindRecover) {
      const RecoveryInfo& r = m.recovery;
      o += ",\"recovery\":{\"epoch\":" + std::to_string(r.epoch) + ",\"detected_by\":" + Q(r.detected_by) +
           ",\"detected_ms\":" + std::to_string(r.detected_ns / 1000000) +
           ",\"failed_at_step\":" + std::to_string(r.failed_at_step) +
           ",\"rollback_step\":" + std::to_string(r.rollback_step) +
           ",\"lost_steps\":" + std::to_string(r.lost_steps) +
           ",\"snapshot_every\":" + std::to_string(r.snapshot_every) + ",\"replacement\":" + Q(r.replacement) + "}";
    }
    o += ",\"phases\":[";
    for (size_t i = 0; i < m.phases.size(); ++i) {
      const PhaseSpan& p = m.phases[i];
      o += (i ? ",{" : "{") + std::string("\"process\":") + std::to_string(p.process) + ",\"phase\":" + Q(p.phase) +
           ",\"start_ms\":" + std::to_string((p.start_ns - m.created_ns) / 1e6) +
           ",\"end_ms\":" + (p.end_ns ? std::to_string((p.end_ns - m.created_ns) / 1e6) : "null") + "}";
    }
    o += "]}";
  }
  o += "],\"stragglers\":" + stragglers_->Json() + "}";
  return o;
}

std::string Coordinator::TimelineJson(const Migration& m) const {
  // Chrome trace event format: one complete ("X") event per phase span, one process row per process.
  std::string o = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"migration\":" + std::to_string(m.id) +
                  ",\"state\":" + Q(MigStateName(m.state)) + ",\"reason\":" + Q(m.reason) +
                  ",\"switch_step\":" + std::to_string(m.switch_step) + ",\"bytes\":" + std::to_string(m.bytes_done) +
                  ",\"downtime_ms\":" + std::to_string(m.downtime_ns / 1e6) + "},\"traceEvents\":[";
  std::vector<uint64_t> seen;
  bool first = true;
  uint64_t now = NowRealtimeNs();
  for (const PhaseSpan& p : m.phases) {
    if (std::find(seen.begin(), seen.end(), p.process) == seen.end()) {
      seen.push_back(p.process);
      std::string name = "coordinator";
      if (p.process) {
        auto it = procs_.find(p.process);
        name = it == procs_.end() ? "process " + std::to_string(p.process)
                                  : "rank " + std::to_string(it->second.info.rank) + " " + it->second.info.role + " " +
                                        it->second.info.host + ":" + std::to_string(it->second.info.pid);
      }
      if (!first) o += ",";
      first = false;
      o += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + std::to_string(p.process) +
           ",\"tid\":0,\"args\":{\"name\":" + Q(name) + "}}";
    }
    uint64_t end = p.end_ns ? p.end_ns : now;
    char ts[64];
    snprintf(ts, sizeof(ts), "%.3f,\"dur\":%.3f", (p.start_ns - m.created_ns) / 1e3, (end - p.start_ns) / 1e3);
    o += ",{\"name\":" + Q(p.phase) + ",\"cat\":\"migration\",\"ph\":\"X\",\"pid\":" + std::to_string(p.process) +
         ",\"tid\":0,\"ts\":" + ts + "}";
  }
  o += "]}";
  return o;
}

std::string Coordinator::MetricsText() const {
  std::string o;
  o += "# HELP trainmover_processes Processes known to the coordinator, by role and state.\n";
  o += "# TYPE trainmover_processes gauge\n";
  std::map<std::pair<std::string, std::string>, int> by;
  for (const char* role : {"worker", "joiner", "standby", "node"}) {
    for (ProcState s : {ProcState::kAlive, ProcState::kLost, ProcState::kExited}) by[{role, ProcStateName(s)}] = 0;
  }
  for (const auto& [id, pr] : procs_) ++by[{pr.info.role, ProcStateName(pr.state)}];
  for (const auto& [k, v] : by) {
    o += "trainmover_processes{role=" + PromLabel(k.first) + ",state=" + PromLabel(k.second) + "} " +
         std::to_string(v) + "\n";
  }
  o += "# HELP trainmover_communicators Virtual communicators known to the coordinator.\n";
  o += "# TYPE trainmover_communicators gauge\ntrainmover_communicators " + std::to_string(comms_.size()) + "\n";
  o += "# HELP trainmover_heartbeats_missed_total Heartbeat intervals that passed without a heartbeat.\n";
  o += "# TYPE trainmover_heartbeats_missed_total counter\ntrainmover_heartbeats_missed_total " +
       std::to_string(heartbeats_missed_) + "\n";
  o += "# HELP trainmover_rejected_total Connections or messages rejected (auth, malformed, order, size).\n";
  o += "# TYPE trainmover_rejected_total counter\ntrainmover_rejected_total " + std::to_string(rejected_) + "\n";
  o += "# HELP trainmover_migrations_total Migrations by outcome.\n# TYPE trainmover_migrations_total counter\n";
  for (const char* s : {"done", "cancelled", "failed", "refused"}) {
    auto it = mig_outcomes_.find(s);
    o += "trainmover_migrations_total{outcome=\"" + std::string(s) + "\"} " +
         std::to_string(it == mig_outcomes_.end() ? 0 : it->second) + "\n";
  }
  auto hist = [&](const std::string& name, const std::string& labels, const std::vector<uint64_t>& b, double sum,
                  uint64_t count) {
    std::string sep = labels.empty() ? "" : ",";
    for (size_t i = 0; i < kNumBuckets; ++i) {
      char le[32];
      snprintf(le, sizeof(le), "%g", kBuckets[i]);
      o += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(i < b.size() ? b[i] : 0) + "\n";
    }
    char s[64];
    snprintf(s, sizeof(s), "%.6f", sum);
    o += name + "_bucket{" + labels + sep + "le=\"+Inf\"} " + std::to_string(count) + "\n";
    o += name + "_sum" + (labels.empty() ? "" : "{" + labels + "}") + " " + s + "\n";
    o += name + "_count" + (labels.empty() ? "" : "{" + labels + "}") + " " + std::to_string(count) + "\n";
  };
  o += "# HELP trainmover_migration_downtime_seconds Downtime the stayers saw, per completed migration.\n";
  o += "# TYPE trainmover_migration_downtime_seconds histogram\n";
  hist("trainmover_migration_downtime_seconds", "", downtime_buckets_, downtime_sum_, downtime_count_);
  o += "# HELP trainmover_recoveries_total Failure recoveries by outcome.\n";
  o += "# TYPE trainmover_recoveries_total counter\n";
  for (const char* s : {"done", "failed"}) {
    auto it = recovery_outcomes_.find(s);
    o += "trainmover_recoveries_total{outcome=\"" + std::string(s) + "\"} " +
         std::to_string(it == recovery_outcomes_.end() ? 0 : it->second) + "\n";
  }
  o += "# HELP trainmover_recovery_downtime_seconds Failure to the last survivor resuming, per completed recovery.\n";
  o += "# TYPE trainmover_recovery_downtime_seconds histogram\n";
  hist("trainmover_recovery_downtime_seconds", "", recovery_downtime_buckets_, recovery_downtime_sum_,
       recovery_downtime_count_);
  o += "# HELP trainmover_migration_phase_seconds Duration of migration phases, per phase and process.\n";
  o += "# TYPE trainmover_migration_phase_seconds histogram\n";
  for (const auto& [phase, h] : phase_hist_) {
    hist("trainmover_migration_phase_seconds", "phase=" + PromLabel(phase), h.buckets, h.sum, h.count);
  }
  return o + stragglers_->MetricsText(procs_);
}

}  // namespace trainmover::control
