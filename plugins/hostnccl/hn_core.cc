// SPDX-License-Identifier: Apache-2.0
// Environment, logging, errors, bootstrap (rendezvous through the unique id), liveness and UCX transport.
#include "hn_core.h"

#include "hn_bootstrap.h"
#include "ucx_tcp_connect.h"
#include "wall_clock.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <set>
#include <sstream>

namespace hn {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------------------------------------
// Environment
namespace {

std::mutex g_err_mu;
std::string g_last_error;
std::atomic<int> g_debug_level{-1};  // -1: not read yet

ncclResult_t ParseInt(const char* name, int64_t min, int64_t* out) {
  const char* v = getenv(name);
  if (!v) return ncclSuccess;
  char* end = nullptr;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end != '\0' || x < min) {
    return Fail(ncclInvalidArgument, "%s=\"%s\" is not an integer >= %lld", name, v, static_cast<long long>(min));
  }
  *out = x;
  return ncclSuccess;
}

int ParseDebug(const char* v, bool* ok) {
  *ok = true;
  if (!v || !*v) return 0;
  std::string s(v);
  for (auto& ch : s) ch = static_cast<char>(toupper(ch));
  if (s == "NONE") return 0;
  if (s == "VERSION" || s == "WARN") return kWarn;
  if (s == "INFO") return kInfo;
  if (s == "TRACE") return kTrace;
  *ok = false;
  return 0;
}

int DebugLevel() {
  int l = g_debug_level.load(std::memory_order_relaxed);
  if (l >= 0) return l;
  bool ok;
  l = ParseDebug(getenv("HOSTNCCL_DEBUG"), &ok);
  g_debug_level.store(l);
  return l;
}

}  // namespace

ncclResult_t LoadEnv(Env* env) {
  bool ok;
  const char* dbg = getenv("HOSTNCCL_DEBUG");
  env->debug_level = ParseDebug(dbg, &ok);
  if (!ok) return Fail(ncclInvalidArgument, "HOSTNCCL_DEBUG=\"%s\" is not one of NONE, WARN, INFO, TRACE", dbg);
  HN_CHECK(ParseInt("HOSTNCCL_TIMEOUT_MS", 1, &env->timeout_ms));
  HN_CHECK(ParseInt("HOSTNCCL_INIT_DELAY_MS", 0, &env->init_delay_ms));
  HN_CHECK(ParseInt("HOSTNCCL_DRAIN_MS", 0, &env->drain_ms));
  HN_CHECK(ParseInt("HOSTNCCL_CHUNK_BYTES", kMinChunkBytes, &env->chunk_bytes));
  if (env->chunk_bytes > kMaxChunkBytes) {
    return Fail(ncclInvalidArgument, "HOSTNCCL_CHUNK_BYTES=\"%s\" is larger than %lld", getenv("HOSTNCCL_CHUNK_BYTES"),
                static_cast<long long>(kMaxChunkBytes));
  }
  env->algo = kAlgoAuto;
  if (const char* a = getenv("HOSTNCCL_ALGO")) {
    std::string v(a);
    for (auto& ch : v) ch = static_cast<char>(tolower(ch));
    if (v == "ring")
      env->algo = kAlgoRing;
    else if (v == "direct")
      env->algo = kAlgoDirect;
    else if (v != "auto" && !v.empty())
      return Fail(ncclInvalidArgument, "HOSTNCCL_ALGO=\"%s\" is not one of auto, ring, direct", a);
  }
  env->ifaddr = 0;
  if (const char* a = getenv("HOSTNCCL_CONNECT")) {
    if (strcasecmp(a, "eager") != 0 && strcasecmp(a, "lazy") != 0) {
      return Fail(ncclInvalidArgument, "HOSTNCCL_CONNECT=\"%s\" is not one of eager, lazy", a);
    }
    env->eager_connect = strcasecmp(a, "eager") == 0;
  }
  if (const char* a = getenv("HOSTNCCL_UCX")) {
    if (strcasecmp(a, "lean") != 0 && strcasecmp(a, "ucx") != 0) {
      return Fail(ncclInvalidArgument, "HOSTNCCL_UCX=\"%s\" is not one of lean, ucx", a);
    }
    env->lean_ucx = strcasecmp(a, "lean") == 0;
  }
  if (const char* a = getenv("HOSTNCCL_PEER_ERRORS")) {
    if (strcasecmp(a, "remote") == 0)
      env->peer_errors = kPeerErrorsRemote;
    else if (strcasecmp(a, "all") == 0)
      env->peer_errors = kPeerErrorsAll;
    else if (strcasecmp(a, "none") == 0)
      env->peer_errors = kPeerErrorsNone;
    else
      return Fail(ncclInvalidArgument, "HOSTNCCL_PEER_ERRORS=\"%s\" is not one of remote, all, none", a);
  }
  if (const char* a = getenv("HOSTNCCL_WAIT")) {
    if (strcasecmp(a, "spin") == 0)
      env->wait = kWaitSpin;
    else if (strcasecmp(a, "block") == 0)
      env->wait = kWaitBlock;
    else
      return Fail(ncclInvalidArgument, "HOSTNCCL_WAIT=\"%s\" is not one of spin, block", a);
  }
  if (const char* a = getenv("HOSTNCCL_SOCKET_IFADDR")) {
    in_addr in{};
    if (inet_pton(AF_INET, a, &in) != 1) {
      return Fail(ncclInvalidArgument, "HOSTNCCL_SOCKET_IFADDR=\"%s\" is not an IPv4 address", a);
    }
    env->ifaddr = in.s_addr;
  }
  return ncclSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// Logging and errors
void Log(int level, int rank, const char* fmt, ...) {
  if (DebugLevel() < level) return;
  static const char* kNames[] = {"", "WARN", "INFO", "TRACE"};
  char host[64] = "?";
  gethostname(host, sizeof(host) - 1);
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  char stamp[32] = "";
  if (DebugLevel() >= kTrace) trainmover::common::WallClockStamp(stamp, sizeof(stamp));  // one timeline
  fprintf(stderr, "%s:%d:%ld [%d] HOSTNCCL %s %s%s\n", host, static_cast<int>(getpid()),
          static_cast<long>(syscall(SYS_gettid)), rank, kNames[level], stamp, msg);
}

ncclResult_t Fail(ncclResult_t code, const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  {
    std::lock_guard<std::mutex> lk(g_err_mu);
    g_last_error = msg;
  }
  Log(kWarn, -1, "%s", msg);
  return code;
}

const char* LastError() {
  // The string lives until the next error, like NCCL's static buffer.
  static thread_local std::string copy;
  std::lock_guard<std::mutex> lk(g_err_mu);
  copy = g_last_error;
  return copy.c_str();
}

void ResetDebug() { g_debug_level.store(-1); }

// ---------------------------------------------------------------------------------------------------------
// Registry of live communicators
namespace {
std::mutex g_comms_mu;
std::set<Comm*>* g_comms = nullptr;  // created on first use, never at load time
}  // namespace

void RegisterComm(Comm* c, bool add) {
  std::lock_guard<std::mutex> lk(g_comms_mu);
  if (!g_comms) g_comms = new std::set<Comm*>();
  if (add)
    g_comms->insert(c);
  else
    g_comms->erase(c);
}

ncclResult_t CheckComm(ncclComm_t comm, const char* opname) {
  if (!comm) return Fail(ncclInvalidArgument, "%s : comm argument is NULL", opname);
  Comm* c = AsComm(comm);
  {
    std::lock_guard<std::mutex> lk(g_comms_mu);
    if (!g_comms || !g_comms->count(c)) {
      return Fail(ncclInvalidArgument, "%s : invalid or destroyed communicator %p", opname, static_cast<void*>(c));
    }
  }
  if (c->magic != kCommMagic) return Fail(ncclInvalidArgument, "Error: corrupted comm object detected");
  return ncclSuccess;
}

Comm* AsComm(ncclComm_t comm) { return reinterpret_cast<Comm*>(comm); }

// ---------------------------------------------------------------------------------------------------------
// Sockets
namespace {

constexpr uint64_t kIdMagic = 0x31444943434e4e48ull;  // "HNNCCID1"

struct IdLayout {
  uint64_t magic;
  uint32_t addr;  // IPv4, network order
  uint16_t port;  // network order
  uint16_t pad;
  uint64_t nonce;
};
static_assert(sizeof(IdLayout) <= NCCL_UNIQUE_ID_BYTES);

uint32_t DefaultRouteAddr() {
  std::ifstream route("/proc/net/route");
  std::string line, ifname;
  std::getline(route, line);
  while (std::getline(route, line)) {
    std::istringstream ss(line);
    std::string name, dest;
    ss >> name >> dest;
    if (dest == "00000000") {
      ifname = name;
      break;
    }
  }
  uint32_t result = htonl(INADDR_LOOPBACK);
  if (ifname.empty()) return result;
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return result;
  for (ifaddrs* i = ifs; i; i = i->ifa_next) {
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && ifname == i->ifa_name) {
      result = reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr;
      break;
    }
  }
  freeifaddrs(ifs);
  return result;
}

uint32_t AdvertiseAddr(const Env& env) { return env.ifaddr ? env.ifaddr : DefaultRouteAddr(); }

// Listening socket on all interfaces, port chosen by the kernel.
ncclResult_t Listen(int backlog, int* fd_out, uint16_t* port_out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Fail(ncclSystemError, "socket: %s", strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = 0;
  socklen_t len = sizeof(sa);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(fd, backlog) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    close(fd);
    return Fail(ncclSystemError, "bind/listen: %s", strerror(errno));
  }
  *fd_out = fd;
  *port_out = sa.sin_port;
  return ncclSuccess;
}

// Waits for fd to be readable (or writable) until deadline_ms; false on timeout or error.
bool WaitFd(int fd, short events, int64_t deadline_ms, const std::atomic<bool>* abort_flag) {
  for (;;) {
    if (abort_flag && abort_flag->load()) return false;
    int64_t left = deadline_ms - NowMs();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 100)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

bool SendAll(int fd, const void* buf, size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool RecvAll(int fd, void* buf, size_t len, int64_t deadline_ms, const std::atomic<bool>* abort_flag) {
  char* p = static_cast<char*>(buf);
  while (len) {
    if (!WaitFd(fd, POLLIN, deadline_ms, abort_flag)) return false;
    ssize_t n = recv(fd, p, len, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

ncclResult_t Connect(uint32_t addr, uint16_t port, int64_t deadline_ms, const std::atomic<bool>* abort_flag,
                     int* fd_out) {
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Fail(ncclSystemError, "socket: %s", strerror(errno));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = addr;
    sa.sin_port = port;
    // Non-blocking, so that a peer whose host is cut off (SYNs unanswered: a blocking connect would wait for
    // the kernel's retries, minutes) costs no more than the deadline, and an abort ends the wait at once.
    int err = 0;
    const int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        socklen_t len = sizeof(err);
        if (!WaitFd(fd, POLLOUT, deadline_ms, abort_flag)) {
          err = ETIMEDOUT;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err == 0) {
      fcntl(fd, F_SETFL, flags);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      *fd_out = fd;
      return ncclSuccess;
    }
    close(fd);
    if ((abort_flag && abort_flag->load()) || NowMs() >= deadline_ms) {
      char a[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &addr, a, sizeof(a));
      return Fail(ncclRemoteError, "bootstrap: cannot connect to %s:%d: %s", a, ntohs(port), strerror(err));
    }
    usleep(20000);
  }
}

// The rendezvous thread started by ncclGetUniqueId: collects every rank's Hello, answers all of them with the
// full table, and exits. It gives up (closing every connection, which the ranks see) when no rank has shown up
// for timeout_ms.
void Rendezvous(int listen_fd, uint64_t nonce, int64_t timeout_ms, std::shared_ptr<std::promise<void>> started) {
  started->set_value();  // from here on the thread sits in poll() until a rank connects
  std::vector<int> fds;
  std::vector<RankInfo> infos;
  std::vector<int> fd_of_rank;
  int nranks = -1, joined = 0;
  int64_t deadline = NowMs() + timeout_ms;
  bool failed = false;
  while (!failed && (nranks < 0 || joined < nranks)) {
    if (!WaitFd(listen_fd, POLLIN, deadline, nullptr)) {
      Log(kWarn, -1, "bootstrap: rendezvous gave up after %lld ms with %d of %d ranks",
          static_cast<long long>(timeout_ms), joined, nranks);
      failed = true;
      break;
    }
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    fds.push_back(fd);
    Hello h{};
    if (!RecvAll(fd, &h, sizeof(h), NowMs() + timeout_ms, nullptr) || h.magic != kHelloMagic || h.nonce != nonce) {
      Log(kWarn, -1, "bootstrap: rendezvous got a bad hello; ignoring it");
      continue;
    }
    // A hello for this id that does not fit it (out of bounds, another nranks, a rank given twice) is a broken
    // job: the rendezvous gives up, and every rank sees it.
    std::string why = CheckHello(h, nonce, nranks);
    if (why.empty() && nranks >= 0 && fd_of_rank[h.rank] >= 0) why = "rank " + std::to_string(h.rank) + " given twice";
    if (!why.empty()) {
      Log(kWarn, -1, "bootstrap: rank %d/%d does not fit this id: %s", h.rank, h.nranks, why.c_str());
      failed = true;
      break;
    }
    if (nranks < 0) {
      nranks = h.nranks;
      infos.resize(nranks);
      fd_of_rank.assign(nranks, -1);
    }
    RankInfo& ri = infos[h.rank];
    ri.live_addr = h.live_addr;
    ri.live_port = h.live_port;
    ri.ucx_addr.resize(h.addr_len);
    if (!RecvAll(fd, ri.ucx_addr.data(), h.addr_len, NowMs() + timeout_ms, nullptr)) {
      failed = true;
      break;
    }
    fd_of_rank[h.rank] = fd;
    ++joined;
    deadline = NowMs() + timeout_ms;
  }
  if (!failed) {
    const std::vector<char> table = EncodeTable(infos);
    uint64_t size = table.size();
    for (int fd : fd_of_rank) {
      if (!SendAll(fd, &size, sizeof(size)) || !SendAll(fd, table.data(), table.size())) {
        Log(kWarn, -1, "bootstrap: rendezvous could not answer a rank");
      }
    }
  }
  for (int fd : fds) close(fd);
  close(listen_fd);
}

// One UCX context per process, created on first use.
std::mutex g_ctx_mu;
ucp_context_h g_ctx = nullptr;

// A child forked after the parent used UCX must not touch the parent's context: it creates its own.
void ForgetContextInChild() {
  new (&g_ctx_mu) std::mutex();
  g_ctx = nullptr;
}

// HOSTNCCL_UCX=lean (docs/hostnccl.md, "What a worker costs"): a UCX worker's set-up and destroy are mostly the
// shared-memory receive pools (512 segments of 8 KiB for each of posix and sysv, faulted in at create, unmapped
// at destroy), so hostnccl asks for pools that grow by 64 segments and for one shared-memory transport. Each
// setting is left out when the environment sets one of the UCX variables it would override, and both when it
// sets UCX_TLS (a pool setting for transports the user left out would make UCX warn at every worker create).
// The pool's variables (UCX 1.13, `ucx_info -c`): UCX_MM_RX_BUFS_GROW (the very setting below: posix and sysv both),
// UCX_POSIX_RX_BUFS_GROW, UCX_SYSV_RX_BUFS_GROW; UCX_RX_BUFS_GROW is not one (it sets neither transport's pool).
struct UcxSetting {
  const char* key;  // ucp_config_modify's name
  const char* value;
  const char* env[4];  // the UCX variables that, when set, win
};
constexpr UcxSetting kLeanUcx[] = {
    {"MM_RX_BUFS_GROW", "64", {"UCX_TLS", "UCX_MM_RX_BUFS_GROW", "UCX_POSIX_RX_BUFS_GROW", "UCX_SYSV_RX_BUFS_GROW"}},
    {"TLS", "^sysv", {"UCX_TLS", nullptr, nullptr, nullptr}},
};

ncclResult_t Context(bool lean, ucp_context_h* out) {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  if (!g_ctx) {
    static std::once_flag atfork_once;
    std::call_once(atfork_once, [] { pthread_atfork(nullptr, nullptr, ForgetContextInChild); });
    ucp_config_t* cfg = nullptr;
    if (ucp_config_read(nullptr, nullptr, &cfg) != UCS_OK) return Fail(ncclSystemError, "UCX: config read failed");
    // A cut-off peer costs HOSTNCCL_TIMEOUT_MS, not the 2 minutes of a blocking connect() (ucx_tcp_connect.h).
    if (trainmover::common::PreferNonBlockingTcpConnect(cfg) != UCS_OK) Log(kWarn, -1, "UCX: cannot set TCP_CONN_NB=y");
    for (const UcxSetting& s : kLeanUcx) {
      if (!lean || std::any_of(std::begin(s.env), std::end(s.env), [](const char* e) { return e && getenv(e); })) {
        continue;
      }
      if (ucp_config_modify(cfg, s.key, s.value) != UCS_OK) Log(kWarn, -1, "UCX: cannot set %s=%s", s.key, s.value);
    }
    ucp_params_t p{};
    p.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    // WAKEUP gives each worker an event fd to sleep on (HOSTNCCL_WAIT=block); it costs nothing until a wait arms
    // the worker, so every context has it and each communicator chooses.
    p.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
    p.mt_workers_shared = 1;
    ucs_status_t st = ucp_init(&p, cfg, &g_ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
      g_ctx = nullptr;
      return Fail(ncclSystemError, "UCX: ucp_init failed: %s", ucs_status_string(st));
    }
  }
  *out = g_ctx;
  return ncclSuccess;
}

}  // namespace

ncclResult_t CreateUniqueId(ncclUniqueId* id, int64_t timeout_ms) {
  Env env;
  HN_CHECK(LoadEnv(&env));
  if (timeout_ms <= 0) timeout_ms = env.timeout_ms;
  int fd;
  uint16_t port;
  HN_CHECK(Listen(1024, &fd, &port));
  IdLayout l{};
  l.magic = kIdMagic;
  l.addr = AdvertiseAddr(env);
  l.port = port;
  std::random_device rd;
  l.nonce = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(NowMs());
  memset(id, 0, sizeof(*id));
  memcpy(id->internal, &l, sizeof(l));
  try {
    // Returns once the thread is running, so a caller that forks right after (one process per rank) does
    // not fork while the new thread is still being set up.
    auto started = std::make_shared<std::promise<void>>();
    std::future<void> ready = started->get_future();
    std::thread(Rendezvous, fd, l.nonce, timeout_ms, started).detach();
    ready.wait();
  } catch (...) {
    close(fd);
    return Fail(ncclSystemError, "ncclGetUniqueId: cannot start the rendezvous thread");
  }
  char a[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &l.addr, a, sizeof(a));
  Log(kInfo, -1, "Bootstrap : rendezvous listening, advertised as %s:%d", a, ntohs(port));
  return ncclSuccess;
}

namespace {

// Posts what `post(peer, &reqs)` posts for every other rank, then waits for all of it; when a post fails, what was
// posted is cancelled (CancelPending) and that error returned. Init's exchanges over the endpoints.
template <typename Post>
ncclResult_t ExchangeWithEveryPeer(Comm* c, Post post) {
  std::vector<Pending> reqs;
  ncclResult_t res = ncclSuccess;
  for (int r = 0; r < c->nranks && res == ncclSuccess; ++r) {
    if (r != c->rank) res = post(r, &reqs);
  }
  if (res != ncclSuccess) {
    CancelPending(c, &reqs);
    return res;
  }
  return WaitAll(c, &reqs);
}

// HOSTNCCL_CONNECT=eager (docs/hostnccl.md, "Eager connection"): UCX wires a lane up on its first use (the
// shared-memory segment attached, the rendezvous protocol's first get), which would otherwise fall on the first
// operation. One eager-sized and one rendezvous-sized message to every peer and back, under tags of their own:
// no collective, no counter of the operations moves, so nothing the application does is reordered.
ncclResult_t ConnectLanes(Comm* c) {
  constexpr size_t kSmall = 8, kLarge = size_t{256} << 10;  // below and above UCX's rendezvous threshold
  const int n = c->nranks, me = c->rank;
  if (n == 1) return ncclSuccess;
  // One buffer: the outgoing message, then one incoming slot per peer. It stays in the comm until Teardown when
  // the exchange fails, so a peer still reading it never reads unmapped memory (CancelPending's bound passed).
  c->lanes_buf.assign(kLarge + static_cast<size_t>(n) * (kSmall + kLarge), 0);
  uint8_t* out = c->lanes_buf.data();
  HN_CHECK(ExchangeWithEveryPeer(c, [&](int r, std::vector<Pending>* reqs) {
    uint8_t* at = out + kLarge + static_cast<size_t>(r) * (kSmall + kLarge);
    ncclResult_t res = PostRecv(c, r, MakeTag(kTagConnect, r, 0), at, kSmall, reqs);
    if (res == ncclSuccess) res = PostRecv(c, r, MakeTag(kTagConnect, r, 1), at + kSmall, kLarge, reqs);
    if (res == ncclSuccess) res = PostSend(c, r, MakeTag(kTagConnect, me, 0), out, kSmall, reqs);
    if (res == ncclSuccess) res = PostSend(c, r, MakeTag(kTagConnect, me, 1), out, kLarge, reqs);
    return res;
  }));
  std::vector<uint8_t>().swap(c->lanes_buf);
  return ncclSuccess;
}

// Finishes every endpoint's connection set-up while nothing else uses it, so that a peer cut off or gone at any
// later moment cannot abort this process inside UCX. UCX 1.13 aborts (ucp_request.c:684, "got REQ message"; removed
// in UCX 1.14) when an endpoint fails with a WIREUP request or reply still queued on a bare transport endpoint:
// ucp_ep_set_failed purges its lanes' pending queues and that assertion allows only EP_REMOVED, EP_CHECK and ACK
// there. The only request and reply of an endpoint's life are the exchange of endpoint ids that its first
// rendezvous or synchronous send starts (ucp_ep_resolve_remote_id); ucp_wireup_connect_remote wraps the sending
// lane in a wireup proxy but sends the request on the endpoint's WIREUP lane, which can be another, bare one (tcp
// only, two ranks on one host: the NIC for messages, lo for WIREUP). A message is queued instead of written only
// while its tcp connection is not established yet (non-blocking since UCX_TCP_CONN_NB; it needs the peer to
// progress) or is still writing an earlier message. So: (1) flush every endpoint, which completes only once all
// its lanes are connected, then send each peer a byte (a peer's byte received means its endpoint to this rank is
// connected too), and (2) only then a synchronous send to every peer and back, which makes every pair exchange its
// ids over connected, idle connections. Afterwards no operation sends a request or reply again (both sides know
// the ids), and a failure purges only operations, which UCX completes with the error. Costs two round trips per
// peer. hostnccl_peer_leaves_connecting: the abort, every run, without this.
ncclResult_t ConnectEndpoints(Comm* c) {
  const int n = c->nranks, me = c->rank;
  if (n == 1) return ncclSuccess;
  HN_CHECK(ExchangeWithEveryPeer(c, [&](int r, std::vector<Pending>* out) {
    ucp_request_param_t p{};
    void* f = ucp_ep_flush_nbx(c->eps[r], &p);
    if (UCS_PTR_IS_ERR(f)) {
      return Fail(ncclRemoteError, "rank %d: connection to rank %d failed: %s", me, r,
                  ucs_status_string(UCS_PTR_STATUS(f)));
    }
    out->push_back(Pending{f, r, false, 0, 0});
    return ncclSuccess;
  }));
  c->lanes_buf.assign(4 * static_cast<size_t>(n), 0);  // per peer and phase: a byte in, a byte out
  for (int phase = 0; phase < 2; ++phase) {
    HN_CHECK(ExchangeWithEveryPeer(c, [&](int r, std::vector<Pending>* out) {
      uint8_t* at = c->lanes_buf.data() + 4 * static_cast<size_t>(r) + 2 * phase;
      ncclResult_t res = PostRecv(c, r, MakeTag(kTagConnect, r, 2 + phase), at, 1, out);
      const bool sync = phase == 1;
      if (res == ncclSuccess) res = PostSend(c, r, MakeTag(kTagConnect, me, 2 + phase), at + 1, 1, out, 0, sync);
      return res;
    }));
  }
  std::vector<uint8_t>().swap(c->lanes_buf);
  return ncclSuccess;
}

}  // namespace

// UCX's error callback of every endpoint (runs inside ucp_worker_progress, on the waiting thread): its presence
// is what keeps UCX from aborting the process on a transport error (Bootstrap). Only a log line: UCX completes
// the endpoint's requests with the error, which Wait reports, and a death is told apart from a peer that destroyed
// its communicator (which may also close the connection) by the liveness sockets, as for every other endpoint.
void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  const EpFailure* f = static_cast<const EpFailure*>(arg);
  Log(kInfo, f->comm->rank, "rank %d: UCX endpoint to rank %d failed: %s", f->comm->rank, f->peer,
      ucs_status_string(status));
}

ncclResult_t Bootstrap(Comm* c, const ncclUniqueId& id) {
  IdLayout l;
  memcpy(&l, id.internal, sizeof(l));
  if (l.magic != kIdMagic) return Fail(ncclInvalidArgument, "ncclUniqueId was not made by ncclGetUniqueId");
  const int n = c->nranks, me = c->rank;
  const int64_t deadline = NowMs() + c->env.timeout_ms;
  c->eps.assign(n, nullptr);
  c->live_fd.assign(n, -1);
  c->peer_state.assign(n, 0);
  c->peer_gone_ms.assign(n, 0);
  c->send_seq.assign(n, 0);
  c->recv_seq.assign(n, 0);
  c->ctrl_send_seq.assign(n, 0);
  c->ctrl_recv_seq.assign(n, 0);

  ucp_context_h ctx = nullptr;
  HN_CHECK(Context(c->env.lean_ucx, &ctx));
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  const int64_t create_t0 = NowMs();
  ucs_status_t st = ucp_worker_create(ctx, &wp, &c->worker);
  if (st != UCS_OK) return Fail(ncclSystemError, "UCX: worker create failed: %s", ucs_status_string(st));
  Log(kTrace, me, "init: worker create %lld ms", static_cast<long long>(NowMs() - create_t0));
  // Without an event fd (UCX gave none) HOSTNCCL_WAIT=block waits as spin does: slower to hand the core over, correct.
  if (ucp_worker_get_efd(c->worker, &c->worker_efd) != UCS_OK) c->worker_efd = -1;
  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(c->worker, &addr, &addr_len);
  if (st != UCS_OK) return Fail(ncclSystemError, "UCX: worker address failed: %s", ucs_status_string(st));

  int live_listen = -1;
  uint16_t live_port = 0;
  ncclResult_t res = Listen(n + 8, &live_listen, &live_port);
  if (res != ncclSuccess) {
    ucp_worker_release_address(c->worker, addr);
    return res;
  }
  int fd = -1;
  std::vector<char> table;
  res = Connect(l.addr, l.port, deadline, &c->abort_flag, &fd);
  if (res == ncclSuccess) {
    Hello h{kHelloMagic, l.nonce, n, me, AdvertiseAddr(c->env), live_port, 0, static_cast<uint32_t>(addr_len)};
    uint64_t size = 0;
    if (!SendAll(fd, &h, sizeof(h)) || !SendAll(fd, addr, addr_len) ||
        !RecvAll(fd, &size, sizeof(size), deadline, &c->abort_flag) || size > MaxTableBytes(n)) {
      res = Fail(ncclRemoteError, "bootstrap: rank %d/%d: rendezvous failed or timed out (HOSTNCCL_TIMEOUT_MS=%lld)",
                 me, n, static_cast<long long>(c->env.timeout_ms));
    } else {
      table.resize(size);
      if (!RecvAll(fd, table.data(), size, deadline, &c->abort_flag)) {
        res = Fail(ncclRemoteError, "bootstrap: rank %d/%d: rendezvous table truncated", me, n);
      }
    }
    close(fd);
  }
  ucp_worker_release_address(c->worker, addr);
  if (res != ncclSuccess) {
    close(live_listen);
    return res;
  }
  // Parse the table, connect UCX endpoints.
  std::vector<RankInfo> infos;
  std::string why;
  if (!DecodeTable(table.data(), table.size(), n, &infos, &why)) {
    close(live_listen);
    return Fail(ncclRemoteError, "bootstrap: rank %d/%d: malformed rendezvous table: %s", me, n, why.c_str());
  }
  c->one_host = true;
  for (int r = 0; r < n; ++r) c->one_host = c->one_host && infos[r].live_addr == infos[0].live_addr;
  c->ep_failure.resize(n);
  for (int r = 0; r < n && res == ncclSuccess; ++r) {  // self included: a rank may send to itself
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    // A transport error on an endpoint without an error callback is fatal inside UCX (it aborts the process):
    // on one host, cma's read of a peer that was killed (ESRCH) or freed its buffer (EFAULT). With the callback
    // UCX fails the endpoint and its requests instead, whatever the endpoint's mode (ucp_ep_set_failed), so every
    // endpoint has one unless HOSTNCCL_PEER_ERRORS=none. UCX's peer-failure mode adds detection (keepalive, a
    // flush that gives up) but in UCX 1.13 excludes the shared-memory transports (posix, sysv, cma: all over
    // tcp loopback then, 2-7x slower), so by default it is on for peers on other hosts only (docs/hostnccl.md,
    // "Transport").
    const bool remote = infos[r].live_addr != infos[me].live_addr;
    if (c->env.peer_errors != kPeerErrorsNone) {
      c->ep_failure[r] = EpFailure{c, r};
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_handler.cb = OnEndpointError;
      ep.err_handler.arg = &c->ep_failure[r];
    }
    if (c->env.peer_errors == kPeerErrorsAll || (c->env.peer_errors == kPeerErrorsRemote && remote)) {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    }
    ep.address = reinterpret_cast<const ucp_address_t*>(infos[r].ucx_addr.data());
    st = ucp_ep_create(c->worker, &ep, &c->eps[r]);
    if (st != UCS_OK) res = Fail(ncclSystemError, "UCX: endpoint to rank %d failed: %s", r, ucs_status_string(st));
  }
  // Liveness mesh, which is also the end-of-init barrier. Every rank connects to every higher rank and sends
  // its rank, accepts every lower rank and answers with an ack byte, then waits for the acks of the higher
  // ranks. Both the hello and the ack are sent only after the sender has created all its UCX endpoints, so
  // when Bootstrap returns every peer holds its endpoints to this rank's worker. Without the ack, a rank that
  // accepts nobody (rank 0) could return, destroy the communicator and with it its worker's shared-memory
  // segment while a slower peer was still about to attach it in ucp_ep_create ("shmat: Invalid argument").
  // The acks are read before any operation runs, so the only byte a peer sends later is its bye.
  constexpr char kAck = 'A';
  for (int r = me + 1; r < n && res == ncclSuccess; ++r) {
    res = Connect(infos[r].live_addr, infos[r].live_port, deadline, &c->abort_flag, &c->live_fd[r]);
    int32_t my = me;
    if (res == ncclSuccess && !SendAll(c->live_fd[r], &my, sizeof(my))) {
      res = Fail(ncclRemoteError, "bootstrap: liveness connection to rank %d failed", r);
    }
  }
  for (int k = 0; k < me && res == ncclSuccess; ++k) {
    if (!WaitFd(live_listen, POLLIN, deadline, &c->abort_flag)) {
      res = Fail(ncclRemoteError, "bootstrap: rank %d/%d: peers did not connect within %lld ms", me, n,
                 static_cast<long long>(c->env.timeout_ms));
      break;
    }
    int afd = accept4(live_listen, nullptr, nullptr, SOCK_CLOEXEC);
    int32_t who = -1;
    if (afd < 0 || !RecvAll(afd, &who, sizeof(who), deadline, &c->abort_flag) || who < 0 || who >= me ||
        c->live_fd[who] >= 0 || !SendAll(afd, &kAck, 1)) {
      if (afd >= 0) close(afd);
      res = Fail(ncclRemoteError, "bootstrap: bad liveness connection");
      break;
    }
    c->live_fd[who] = afd;
  }
  for (int r = me + 1; r < n && res == ncclSuccess; ++r) {
    char ack = 0;
    if (!RecvAll(c->live_fd[r], &ack, 1, deadline, &c->abort_flag) || ack != kAck) {
      res = Fail(ncclRemoteError, "bootstrap: rank %d/%d: rank %d did not complete its init within %lld ms", me, n, r,
                 static_cast<long long>(c->env.timeout_ms));
    }
  }
  close(live_listen);
  if (res != ncclSuccess) return res;
  // After the mesh: every peer's endpoints exist (the ack), a failure is seen on the liveness sockets as well, and
  // every rank progresses its worker from here on, which the peers' tcp connections to it need to complete.
  HN_CHECK(ConnectEndpoints(c));
  if (c->env.eager_connect) HN_CHECK(ConnectLanes(c));
  if (c->env.init_delay_ms > 0) usleep(static_cast<useconds_t>(c->env.init_delay_ms * 1000));
  Log(kInfo, me, "comm %p rank %d nranks %d - Init COMPLETE", static_cast<void*>(c), me, n);
  return ncclSuccess;
}

namespace {

// How an operation's wait idles (docs/hostnccl.md, "Waiting"). spin: yield the core on every idle pass after
// kYieldPasses, sleep 100 us at a time after kSleepPasses. block: the same for the communicator's spin budget
// (Comm::spin_ns), then sleep on the worker's event fd and the liveness sockets, kSleepSliceMs at most, so that an
// abort from another thread, a peer's grace period and the timeout are still checked. The budget adapts as an adaptive
// mutex's spin does: an idle stretch that ended within it (a completion found while spinning) doubles it, one that
// outlasted it (the wait went to sleep) halves it; so ranks that answer each other within microseconds keep the spin,
// and a rank that waits for milliseconds (a slower peer, a shared core) sleeps almost at once.
constexpr int kYieldPasses = 64, kSleepPasses = 50000;
constexpr int64_t kMinSpinNs = 2000, kFirstSpinNs = 50000, kMaxSpinNs = 200000;
constexpr int kSleepSliceMs = 10;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Sleeps until the worker has an event to progress (with liveness: or a liveness socket has news), or max_ms passed;
// call it only after ucp_worker_progress found nothing. False when it did not sleep: something arrived before the
// worker was armed (progress it). Without an event fd, or when arming fails, it sleeps 100 us instead. Liveness
// sockets may be watched only by a loop that reads them (PollLiveness): one at EOF stays readable.
bool SleepOnEvents(Comm* c, int max_ms, bool liveness) {
  const ucs_status_t st = c->worker_efd >= 0 ? ucp_worker_arm(c->worker) : UCS_ERR_UNSUPPORTED;
  if (st == UCS_ERR_BUSY) return false;
  if (st != UCS_OK) {
    usleep(100);
    return true;
  }
  std::vector<pollfd> pf{pollfd{c->worker_efd, POLLIN, 0}};
  for (int r = 0; liveness && r < c->nranks; ++r) {
    if (c->live_fd[r] >= 0 && c->peer_state[r] != 2) pf.push_back(pollfd{c->live_fd[r], POLLIN, 0});
  }
  (void)poll(pf.data(), pf.size(), max_ms);
  return true;
}

}  // namespace

void Teardown(Comm* c, bool graceful) {
  const int n = static_cast<int>(c->live_fd.size());
  for (int r = 0; r < n; ++r) {
    if (c->live_fd[r] >= 0 && graceful) {
      char bye = 'B';
      (void)!send(c->live_fd[r], &bye, 1, MSG_NOSIGNAL);
    }
  }
  if (c->worker) {
    // Graceful: make every send of ours complete at its destination, then drop the endpoints without a
    // close handshake (a peer that already left would never answer one). Bounded either way.
    // Without spinning: a flush towards a peer that already left waits out its deadline, and a destroy may run
    // on a background thread next to the application's operations on other communicators (a migration retires
    // the old ones that way, during the first step on the replacements), so an idle pass sleeps on the event fd.
    auto wait = [c](void* r, int64_t deadline) {
      if (!UCS_PTR_IS_PTR(r)) return;
      while (ucp_request_check_status(r) == UCS_INPROGRESS && NowMs() < deadline) {
        if (ucp_worker_progress(c->worker) == 0) SleepOnEvents(c, kSleepSliceMs, false);
      }
      ucp_request_free(r);
    };
    const int64_t t0 = NowMs();
    if (graceful) {
      ucp_request_param_t p{};
      wait(ucp_worker_flush_nbx(c->worker, &p), NowMs() + 1000);
    }
    std::vector<void*> closing;
    for (auto& ep : c->eps) {
      if (!ep) continue;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      closing.push_back(ucp_ep_close_nbx(ep, &p));
      ep = nullptr;
    }
    int64_t deadline = NowMs() + 200;
    for (void* r : closing) wait(r, deadline);
    const int64_t t1 = NowMs();
    timespec cpu0{}, cpu1{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0);
    ucp_worker_destroy(c->worker);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1);
    const double cpu_ms = (cpu1.tv_sec - cpu0.tv_sec) * 1e3 + (cpu1.tv_nsec - cpu0.tv_nsec) / 1e6;
    Log(kTrace, c->rank, "teardown: flush and endpoint close %lld ms, worker destroy %lld ms (%.1f ms of CPU)",
        static_cast<long long>(t1 - t0), static_cast<long long>(NowMs() - t1), cpu_ms);
    c->worker = nullptr;
    c->worker_efd = -1;
  }
  for (int r = 0; r < n; ++r) {
    if (c->live_fd[r] >= 0) close(c->live_fd[r]);
    c->live_fd[r] = -1;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Transport
ncclResult_t PostSend(Comm* c, int peer, uint64_t tag, const void* buf, size_t len, std::vector<Pending>* out,
                      uint64_t id, bool sync) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE;
  p.datatype = ucp_dt_make_contig(1);
  void* r = sync ? ucp_tag_send_sync_nbx(c->eps[peer], buf, len, tag, &p)
                 : ucp_tag_send_nbx(c->eps[peer], buf, len, tag, &p);
  if (UCS_PTR_IS_ERR(r)) {
    return Fail(ncclRemoteError, "rank %d: send to rank %d failed: %s", c->rank, peer,
                ucs_status_string(UCS_PTR_STATUS(r)));
  }
  out->push_back(Pending{r, peer, false, len, id});
  return ncclSuccess;
}

ncclResult_t PostRecv(Comm* c, int peer, uint64_t tag, void* buf, size_t len, std::vector<Pending>* out, uint64_t id) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE;
  p.datatype = ucp_dt_make_contig(1);
  void* r = ucp_tag_recv_nbx(c->worker, buf, len, tag, ~0ull, &p);
  if (UCS_PTR_IS_ERR(r)) {
    return Fail(ncclSystemError, "rank %d: receive from rank %d failed: %s", c->rank, peer,
                ucs_status_string(UCS_PTR_STATUS(r)));
  }
  out->push_back(Pending{r, peer, true, len, id});
  return ncclSuccess;
}

namespace {
void PollLiveness(Comm* c);
}  // namespace

ncclResult_t CheckPeers(Comm* c) {
  if (c->live_fd.empty()) return ncclSuccess;
  PollLiveness(c);
  for (int r = 0; r < c->nranks; ++r) {
    if (c->peer_state[r] == 2) {
      int expected = ncclSuccess;
      c->async_error.compare_exchange_strong(expected, ncclRemoteError);
      return ncclRemoteError;
    }
  }
  return ncclSuccess;
}

namespace {

// Reads the liveness sockets: a bye byte marks a peer departed, EOF without one marks it dead.
void PollLiveness(Comm* c) {
  std::vector<pollfd> pf;
  std::vector<int> who;
  for (int r = 0; r < c->nranks; ++r) {
    if (c->live_fd[r] >= 0 && c->peer_state[r] != 2) {
      pf.push_back(pollfd{c->live_fd[r], POLLIN, 0});
      who.push_back(r);
    }
  }
  if (pf.empty() || poll(pf.data(), pf.size(), 0) <= 0) return;
  for (size_t i = 0; i < pf.size(); ++i) {
    if (!pf[i].revents) continue;
    int r = who[i];
    char buf[16];
    ssize_t k = recv(pf[i].fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (k > 0) {
      if (c->peer_state[r] == 0) {
        c->peer_state[r] = 1;
        c->peer_gone_ms[r] = NowMs();
      }
    } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
      if (c->peer_state[r] != 1) {
        c->peer_state[r] = 2;
        c->peer_gone_ms[r] = NowMs();
        Log(kWarn, c->rank, "rank %d: peer rank %d closed its liveness connection (process died or aborted)", c->rank,
            r);
      } else {
        close(c->live_fd[r]);
        c->live_fd[r] = -1;
      }
    }
  }
}

void CancelAll(Comm* c, std::vector<Pending>* reqs) {
  for (Pending& p : *reqs) {
    if (p.req && ucp_request_check_status(p.req) == UCS_INPROGRESS) ucp_request_cancel(c->worker, p.req);
  }
  // Drain (see CancelPending in hn_core.h): what is still in progress towards a live peer is a send or a matched
  // receive that peer's transport may be working on. Idle passes sleep: the peer needs the core.
  const int64_t deadline = NowMs() + c->env.drain_ms;
  for (bool busy = true; busy;) {
    busy = false;
    PollLiveness(c);
    for (const Pending& p : *reqs) {
      busy = busy || (p.req && p.peer != c->rank && c->peer_state[p.peer] == 0 &&
                      ucp_request_check_status(p.req) == UCS_INPROGRESS);
    }
    if (busy && NowMs() >= deadline) {
      Log(kWarn, c->rank, "rank %d: requests to live peers still in flight after HOSTNCCL_DRAIN_MS=%lld; freed",
          c->rank, static_cast<long long>(c->env.drain_ms));
      break;
    }
    if (busy && ucp_worker_progress(c->worker) == 0) SleepOnEvents(c, 1, true);
  }
  for (Pending& p : *reqs) {
    if (p.req) ucp_request_free(p.req);
    p.req = nullptr;
  }
  reqs->clear();
  for (int i = 0; i < 16; ++i) ucp_worker_progress(c->worker);  // lets the cancelled requests complete
}

// The one wait loop: progresses the worker until every request of reqs completed (some == nullptr) or, when
// some is given, until at least one did (their ids are appended to *some and they are removed from reqs).
// Fails on a transfer error, abort, a dead or departed peer, or no progress for the timeout. Progress is a
// request of reqs completing, never the worker's own activity: ucp_worker_progress keeps finding work towards a
// peer that is dying (its TCP connections not closed yet) or that keeps sending other messages, so counting its
// events let an operation wait forever (docs/hostnccl.md, "Liveness and timeouts"). Time this process itself did
// not run (a pass of the loop that took over kStalledMs: descheduled, stopped, a paused VM) is not counted either,
// up to twice the timeout per wait: the peers had no chance to be heard meanwhile, and the wait stays bounded by
// three times the timeout even if passes were that slow for another reason. Idle passes spin, yield or sleep as
// HOSTNCCL_WAIT says (above); a sleep ends early on any event of the worker or of a liveness socket, and the pass
// after it reads the liveness sockets.
ncclResult_t Wait(Comm* c, std::vector<Pending>* reqs, bool only_peers, std::vector<uint64_t>* some) {
  constexpr int64_t kGraceMs = 300;     // messages a peer sent before leaving may still be in flight
  constexpr int64_t kStalledMs = 1000;  // a pass this long means this process was not running
  const bool block = c->env.wait == kWaitBlock && c->worker_efd >= 0;
  if (block && c->spin_ns == 0) c->spin_ns = kFirstSpinNs;
  int64_t last_completion = NowMs(), last_pass = last_completion, excused = 0;
  int idle = 0;
  int64_t idle_since_ns = 0;  // block: when the current idle stretch began
  bool slept = false;         // block: the current idle stretch went to sleep
  size_t done = 0;
  for (Pending& p : *reqs)
    if (!p.req) ++done;
  for (unsigned iter = 0;; ++iter) {
    bool busy = ucp_worker_progress(c->worker) > 0;  // only decides whether to idle
    bool completed = false;
    for (Pending& p : *reqs) {
      if (!p.req) continue;
      ucs_status_t st = ucp_request_check_status(p.req);
      if (st == UCS_INPROGRESS) continue;
      if (st == UCS_OK && p.is_recv) {
        ucp_tag_recv_info_t info{};
        ucp_tag_recv_request_test(p.req, &info);
        if (info.length != p.expect) st = UCS_ERR_MESSAGE_TRUNCATED;
      }
      ucp_request_free(p.req);
      p.req = nullptr;
      ++done;
      completed = true;
      if (st != UCS_OK) {
        CancelAll(c, reqs);
        c->async_error = ncclRemoteError;
        const bool truncated = st == UCS_ERR_MESSAGE_TRUNCATED;
        return Fail(truncated ? ncclInvalidUsage : ncclRemoteError, "rank %d: transfer with rank %d failed: %s (%s)",
                    c->rank, p.peer, ucs_status_string(st),
                    truncated ? "mismatched counts between ranks?" : "the peer died or its buffer went away");
      }
    }
    if (completed && block && idle_since_ns != 0 && !slept) c->spin_ns = std::min(kMaxSpinNs, 2 * c->spin_ns);
    if (some && done > 0) {
      // Hand back what completed, keep the rest (order of the remaining requests does not matter).
      size_t w = 0;
      for (size_t i = 0; i < reqs->size(); ++i) {
        if ((*reqs)[i].req)
          (*reqs)[w++] = (*reqs)[i];
        else
          some->push_back((*reqs)[i].id);
      }
      reqs->resize(w);
      return ncclSuccess;
    }
    if (done == reqs->size()) {
      reqs->clear();
      return ncclSuccess;
    }
    int64_t now = NowMs();
    if (now - last_pass > kStalledMs) {
      int64_t gap = std::min(now - last_pass, 2 * c->env.timeout_ms - excused);
      last_completion += gap;
      excused += gap;
    }
    last_pass = now;
    if (completed) last_completion = now;
    if (busy || completed) {
      idle = 0;
      idle_since_ns = 0;
      slept = false;
    }
    if (c->abort_flag.load()) {
      CancelAll(c, reqs);
      return Fail(ncclInvalidUsage, "rank %d: communicator aborted while an operation was waiting", c->rank);
    }
    if ((iter & 63) == 0) {
      PollLiveness(c);
      for (const Pending& p : *reqs) {
        if (!p.req) continue;
        for (int r = 0; r < c->nranks; ++r) {
          if (only_peers && r != p.peer) continue;
          if (c->peer_state[r] == 0 || now - c->peer_gone_ms[r] < kGraceMs) continue;
          CancelAll(c, reqs);
          c->async_error = ncclRemoteError;
          return Fail(ncclRemoteError, "rank %d: peer rank %d %s while an operation was waiting on it", c->rank, r,
                      c->peer_state[r] == 2 ? "died or aborted" : "destroyed its communicator");
        }
      }
    }
    if (now - last_completion > c->env.timeout_ms) {
      const size_t outstanding = reqs->size() - done;
      CancelAll(c, reqs);
      c->async_error = ncclRemoteError;
      return Fail(ncclRemoteError,
                  "rank %d: no progress for %lld ms (HOSTNCCL_TIMEOUT_MS: none of the operation's %zu outstanding "
                  "requests completed); peer unreachable, frozen or dying",
                  c->rank, static_cast<long long>(c->env.timeout_ms), outstanding);
    }
    if (busy || completed) continue;
    ++idle;
    if (block) {
      const int64_t t = NowNs();
      if (idle_since_ns == 0) idle_since_ns = t;
      if (t - idle_since_ns >= c->spin_ns) {
        if (!slept) c->spin_ns = std::max(kMinSpinNs, c->spin_ns / 2);
        slept = true;
        if (SleepOnEvents(c, kSleepSliceMs, true)) iter = ~0u;  // the next pass (iter 0) reads the liveness sockets
        continue;
      }
    }
    // Oversubscribed hosts (more ranks than cores) need the peer to run: yield early, sleep only when long idle.
    if (idle > kSleepPasses)
      usleep(100);
    else if (idle > kYieldPasses)
      sched_yield();
  }
}

}  // namespace

ncclResult_t WaitAll(Comm* c, std::vector<Pending>* reqs, bool only_peers) {
  return Wait(c, reqs, only_peers, nullptr);
}

void CancelPending(Comm* c, std::vector<Pending>* reqs) { CancelAll(c, reqs); }

ncclResult_t WaitSome(Comm* c, std::vector<Pending>* reqs, std::vector<uint64_t>* completed) {
  if (reqs->empty()) return Fail(ncclInternalError, "rank %d: waiting on no request (pipeline stalled)", c->rank);
  return Wait(c, reqs, false, completed);
}

}  // namespace hn
