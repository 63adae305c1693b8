// SPDX-License-Identifier: Apache-2.0
// tmrun: starts N local ranks (or one joiner) in the manner of torchrun and serves their key-value store.
// See docs/tmrun.md.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "base/config.h"
#include "base/host.h"
#include "base/hostport.h"
#include "common/kv_store.h"
#include "control.h"
#include "node_agent.h"
#include "options.h"

namespace {

// A joining tmrun waits this long for the job's store (to answer, then for each launch fact in it); the job's
// own tmrun connects to the store it has just started.
constexpr int kJobStoreTimeoutMs = 10000;
constexpr int kOwnStoreConnectTimeoutMs = 5000;
// How long a failed rank's exit waits for the embedded coordinator to declare the failure and start recovering it
// (it sees the rank's connection close within milliseconds); otherwise the job stops as before.
constexpr int kRecoveryNoticeMs = 2000;

using Clock = std::chrono::steady_clock;

int g_sig_pipe[2] = {-1, -1};

void OnSignal(int signo) {
  int saved = errno;
  char c = static_cast<char>(signo);
  (void)!write(g_sig_pipe[1], &c, 1);
  errno = saved;
}

// Where one output stream of a rank goes when tmrun relays it: complete lines, prefixed.
struct Stream {
  int fd = -1;  // read end of the pipe, -1 once at EOF
  int out = 1;  // tmrun's fd it is relayed to
  std::string partial;
};

struct Rank {
  int rank = 0;
  int standby = -1;  // >= 0: standby number `standby`, warming up as `rank` (tmrun --standby)
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  Stream streams[2];
  // How its output lines and its log are named: the rank, or s<K> for standby K.
  std::string Label() const { return standby >= 0 ? "s" + std::to_string(standby) : std::to_string(rank); }
};

void WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = write(fd, s.data() + off, s.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += static_cast<size_t>(w);
  }
}

// Reads what is available; relays complete lines. Returns false at EOF (after flushing a partial line).
void Relay(Stream* s, const std::string& prefix) {
  char buf[65536];
  ssize_t n = read(s->fd, buf, sizeof(buf));
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    if (!s->partial.empty()) WriteAll(s->out, prefix + s->partial + "\n");
    s->partial.clear();
    close(s->fd);
    s->fd = -1;
    return;
  }
  s->partial.append(buf, static_cast<size_t>(n));
  std::string out;
  size_t start = 0;
  for (size_t nl; (nl = s->partial.find('\n', start)) != std::string::npos; start = nl + 1) {
    out += prefix;
    out.append(s->partial, start, nl + 1 - start);
  }
  s->partial.erase(0, start);
  if (!out.empty()) WriteAll(s->out, out);
}

// A free TCP port for MASTER_PORT (for frameworks that run their own rendezvous there).
// A port that is free on `host` now (for MASTER_PORT: frameworks run their own rendezvous there).
uint16_t FreePort(const std::string& host) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(a);
  uint16_t port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

bool Spawn(const tmrun::Config& cfg, const tmrun::JobInfo& job, Rank* r) {
  int pipes[2][2] = {{-1, -1}, {-1, -1}};
  int log_fd = -1;
  const bool relay = cfg.output_dir.empty() && !cfg.no_prefix;
  if (!cfg.output_dir.empty()) {
    std::string path = cfg.output_dir + (r->standby >= 0 ? "/standby-" : "/rank-") +
                       std::to_string(r->standby >= 0 ? r->standby : r->rank) + ".log";
    log_fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      fprintf(stderr, "tmrun: cannot open %s: %s\n", path.c_str(), strerror(errno));
      return false;
    }
  } else if (relay) {
    for (auto& p : pipes) {
      if (pipe2(p, O_CLOEXEC) != 0) {
        fprintf(stderr, "tmrun: pipe: %s\n", strerror(errno));
        return false;
      }
    }
  }
  std::vector<std::string> env = tmrun::ChildEnv(cfg, job, r->rank, r->standby >= 0);
  std::vector<char*> envp, argv;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> cmd = cfg.command;
  for (auto& a : cmd) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "tmrun: fork: %s\n", strerror(errno));
    return false;
  }
  if (pid == 0) {
    // Own process group, so that signals reach everything the rank started (a shell's children too) and a
    // terminal's Ctrl-C reaches the rank once, through tmrun.
    setpgid(0, 0);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) sigaction(s, &dfl, nullptr);
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    } else if (relay) {
      dup2(pipes[0][1], 1);
      dup2(pipes[1][1], 2);
    }
    execvpe(argv[0], argv.data(), envp.data());
    fprintf(stderr, "tmrun: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so that a signal sent right after fork finds the group
  r->pid = pid;
  r->running = true;
  if (log_fd >= 0) close(log_fd);
  if (relay) {
    for (int k = 0; k < 2; ++k) {
      close(pipes[k][1]);
      fcntl(pipes[k][0], F_SETFL, O_NONBLOCK);
      r->streams[k].fd = pipes[k][0];
      r->streams[k].out = k == 0 ? 1 : 2;
    }
  }
  return true;
}

// tmrun's line about a rank that ended (its status, r.status), with `then` after it.
void SayEnded(const Rank& r, const char* then = "") {
  fprintf(stderr, "tmrun: rank %d (pid %d) %s%s\n", r.rank, r.pid, tmrun::DescribeStatus(r.status).c_str(), then);
}

// A rank that exited in error may have failed because a peer was killed: its collective saw the peer's sockets close
// while the peer's exit was still under way (a process's files are closed before it becomes a zombie), so tmrun can
// reap it first. The root cause is the job's status: another rank killed by a signal within kPeerDeathWindowMs of
// this reap is reported and counted instead (tm_train_fail: rank 2 killed, ranks 0 and 1 exit 1 on their
// AllReduce; tmrun used to exit 1 at load). Ranks reaped here that exited otherwise are printed and kept as reaped.
constexpr int kPeerDeathWindowMs = 200;
const Rank* KilledPeer(std::vector<Rank>& ranks, const Rank& failed) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kPeerDeathWindowMs);
  do {
    for (Rank& p : ranks) {
      int status = 0;
      if (&p == &failed || !p.running || waitpid(p.pid, &status, WNOHANG) != p.pid) continue;
      p.running = false;
      p.status = status;
      if (WIFSIGNALED(status)) return &p;
      if (WEXITSTATUS(status) != 0) SayEnded(p);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } while (std::chrono::steady_clock::now() < until);
  return nullptr;
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// Whether this process has a child that has not been reaped (without reaping it).
bool OtherChildrenAlive() {
  siginfo_t info{};
  return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

void SignalAll(std::vector<Rank>& ranks, int signo) {
  for (Rank& r : ranks) {
    if (r.running) kill(-r.pid, signo);
  }
}

// How long a node K > 0 or a joiner waits for node 0's store to answer and publish the job (node 0 may
// start later than the others, as with torchrun).
constexpr int kJoinJobTimeoutMs = 120000;

// Reads the job's layout from node 0's store at `addr` into `job`; checks -n against it. 0, or an exit code.
int ReadJob(const tmrun::Config& cfg, const std::string& addr, tmrun::JobInfo* job, std::string* coordinator,
            std::string* token_file) {
  tm_tools::KvClient kv;
  std::string err, world, per_node, maddr, mport;
  auto connect = [&] {
    trainmover::base::Status st = kv.Connect(addr, 2000, job->token);
    err = st.message();
    return st.ok();
  };
  const auto deadline = Clock::now() + std::chrono::milliseconds(kJoinJobTimeoutMs);
  while (!connect()) {
    if (err.find("refused the token") != std::string::npos) {
      fprintf(stderr, "tmrun: %s\n", err.c_str());
      return 1;
    }
    if (Clock::now() > deadline) {
      fprintf(stderr, "tmrun: no store at %s after %d s: %s\n", addr.c_str(), kJoinJobTimeoutMs / 1000, err.c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (kv.Get("tmrun/world_size", kJoinJobTimeoutMs, &world) != tm_tools::KvStatus::kOk ||
      kv.Get("tmrun/nproc_per_node", 10000, &per_node) != tm_tools::KvStatus::kOk ||
      kv.Get("tmrun/master_addr", 10000, &maddr) != tm_tools::KvStatus::kOk ||
      kv.Get("tmrun/master_port", 10000, &mport) != tm_tools::KvStatus::kOk) {
    fprintf(stderr, "tmrun: %s is not a tmrun store (no tmrun/world_size)\n", addr.c_str());
    return 1;
  }
  // Read, whatever comes of it: node 0 serves the store until every node got this far.
  if (!cfg.join && !cfg.node) kv.Add("tmrun/nodes_joined", 1, nullptr);
  job->world = atoi(world.c_str());
  job->nproc_per_node = atoi(per_node.c_str());
  if (job->world <= 0 || job->nproc_per_node <= 0) {
    fprintf(stderr, "tmrun: the store at %s holds no valid job layout\n", addr.c_str());
    return 1;
  }
  if (cfg.join && cfg.nproc > 0 && cfg.nproc != job->world) {
    fprintf(stderr, "tmrun: -n %d but the job at %s has %d ranks\n", cfg.nproc, addr.c_str(), job->world);
    return 2;
  }
  if (cfg.join && cfg.replace >= job->world) {
    fprintf(stderr, "tmrun: --replace %d but the job at %s has %d ranks\n", cfg.replace, addr.c_str(), job->world);
    return 2;
  }
  if (!cfg.join && !cfg.node && cfg.nproc * cfg.nnodes != job->world) {
    fprintf(stderr, "tmrun: --nnodes %d x -n %d but node 0 of the job at %s started %d ranks in all\n", cfg.nnodes,
            cfg.nproc, addr.c_str(), job->world);
    return 2;
  }
  job->master_addr = maddr;
  job->master_port = static_cast<uint16_t>(atoi(mport.c_str()));
  kv.Get("tmrun/coordinator", 2000, coordinator);  // empty when the job runs without one
  kv.Get("tmrun/token_file", 2000, token_file);    // only readable on node 0's machine
  return 0;
}

// --node: a node agent and nothing else (node_agent.h). It runs until SIGINT or SIGTERM; what it started keeps
// running after it (they are the job's processes).
int RunNodeAgent(const tmrun::JobInfo& job, const std::string& coordinator) {
  if (coordinator.empty()) {
    fprintf(stderr, "tmrun: --node: the job runs without a coordinator; nothing could ask this node anything\n");
    return 2;
  }
  tmrun::NodeAgent agent;
  agent.Start(coordinator, job.token, job.world);
  for (;;) {
    pollfd p{g_sig_pipe[0], POLLIN, 0};
    if (poll(&p, 1, 1000) < 0 && errno != EINTR) break;
    char sigs[64];
    ssize_t k = (p.revents & POLLIN) ? read(g_sig_pipe[0], sigs, sizeof(sigs)) : 0;
    bool stop = false;
    for (ssize_t j = 0; j < k; ++j) stop |= sigs[j] == SIGINT || sigs[j] == SIGTERM;
    for (;;) {
      int status = 0;
      pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      agent.Reaped(pid, status);
    }
    if (stop) break;
  }
  agent.Stop();
  return 0;
}

}  // namespace

// The job's token: node 0 takes it from --token-file or the environment, or makes one; every other node and a
// joiner must be given it. 0, or an exit code.
int ResolveToken(const tmrun::Config& cfg, bool serves, tmrun::JobInfo* job) {
  // The job's token authenticates the store and the coordinator. Node 0 takes TRAINMOVER_TOKEN or makes one;
  // every other node and a joiner must be given it (--token-file, TRAINMOVER_TOKEN or TMRUN_STORE_TOKEN).
  if (!cfg.token_file.empty()) {
    std::ifstream f(cfg.token_file, std::ios::binary);
    if (!f) {
      fprintf(stderr, "tmrun: cannot read --token-file %s\n", cfg.token_file.c_str());
      return 2;
    }
    job->token.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    while (!job->token.empty() && (job->token.back() == '\n' || job->token.back() == '\r')) job->token.pop_back();
  } else {
    job->token = tm_tools::StoreTokenFromEnv();
  }
  if (job->token.empty() && serves && cfg.nnodes > 1) {
    fprintf(stderr,
            "tmrun: --nnodes > 1 needs the job's token, the same on every node: set TRAINMOVER_TOKEN or "
            "pass --token-file FILE\n");
    return 2;
  }
  if (job->token.empty() && serves) job->token = tmrun::NewJobToken();
  if (job->token.size() < tm_tools::kKvMinTokenBytes) {
    fprintf(stderr,
            "tmrun: the job's token %s: set TRAINMOVER_TOKEN (at least %zu characters) or pass --token-file "
            "FILE (node 0 prints its token file)\n",
            job->token.empty() ? "is needed" : "is too short", tm_tools::kKvMinTokenBytes);
    return 2;
  }
  setenv("TRAINMOVER_TOKEN", job->token.c_str(), 1);
  return 0;
}

// Node 0: serves the store on --master (or 127.0.0.1), starts or joins the coordinator, publishes the job's
// layout. 0, or an exit code.
int ServeJob(const tmrun::Config& cfg, tmrun::JobInfo* job, tm_tools::KvServer* store, tmrun::ControlPlane* control) {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  if (!cfg.master.empty() && !trainmover::base::ParseHostPort(cfg.master, &listen_host, &listen_port).ok()) {
    fprintf(stderr, "tmrun: malformed --master '%s'\n", cfg.master.c_str());
    return 2;
  }
  if (trainmover::base::Status st = store->Start(listen_host, listen_port, job->token); !st.ok()) {
    fprintf(stderr, "tmrun: store: %s\n", st.message().c_str());
    return 1;
  }
  job->world = cfg.nproc * cfg.nnodes;
  job->nproc_per_node = cfg.nproc;
  job->store_host = listen_host;
  job->store_port = store->port();
  job->master_addr = listen_host;
  job->master_port = FreePort(listen_host);
  control->SetHeartbeatTimeout(cfg.heartbeat_timeout_ms);
  if (trainmover::base::Status st = control->Setup(cfg.coordinator, cfg.no_coordinator, "", "", listen_host);
      !st.ok()) {
    fprintf(stderr, "tmrun: %s\n", st.message().c_str());
    return 1;
  }
  tm_tools::KvClient kv;
  const std::string self = listen_host + ":" + std::to_string(store->port());
  if (!kv.Connect(self, kJobStoreTimeoutMs, job->token).ok() ||
      kv.Set("tmrun/world_size", std::to_string(job->world)) != tm_tools::KvStatus::kOk ||
      kv.Set("tmrun/nproc_per_node", std::to_string(job->nproc_per_node)) != tm_tools::KvStatus::kOk ||
      kv.Set("tmrun/master_addr", job->master_addr) != tm_tools::KvStatus::kOk ||
      kv.Set("tmrun/master_port", std::to_string(job->master_port)) != tm_tools::KvStatus::kOk ||
      kv.Set("tmrun/coordinator", control->address()) != tm_tools::KvStatus::kOk ||
      kv.Set("tmrun/token_file", control->token_file()) != tm_tools::KvStatus::kOk) {
    fprintf(stderr, "tmrun: cannot initialise the store\n");
    return 1;
  }
  if (cfg.nnodes > 1) {
    fprintf(stderr, "tmrun: node 0 of %d, %d ranks, store %s\n", cfg.nnodes, cfg.nproc, self.c_str());
  } else {
    fprintf(stderr, "tmrun: %d ranks, store %s\n", cfg.nproc, self.c_str());
  }
  if (!control->token_file().empty()) {
    fprintf(stderr, "tmrun: coordinator %s (tmctl --coordinator %s --token-file %s status)\n",
            control->address().c_str(), control->address().c_str(), control->token_file().c_str());
  } else if (!control->address().empty()) {
    fprintf(stderr, "tmrun: coordinator %s\n", control->address().c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  tmrun::Config cfg;
  if (int rc = tmrun::ParseArgs(argc, argv, &cfg); rc >= 0) return rc;
  // The embedded coordinator logs as TRAINMOVER_DEBUG says; an invalid value is the ranks' to report.
  (void)trainmover::shim::LogConfigureFromEnv(trainmover::base::LogLevel::kWarn);

  if (!cfg.output_dir.empty() && mkdir(cfg.output_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "tmrun: cannot create %s: %s\n", cfg.output_dir.c_str(), strerror(errno));
    return 1;
  }

  // Signals arrive through a pipe so the main loop handles them in order with the children's output.
  if (pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return 1;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGCHLD}) sigaction(s, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  tmrun::JobInfo job;
  tm_tools::KvServer store;
  tmrun::ControlPlane control;  // TRAINMOVER_COORDINATOR/TOKEN for the ranks (tools/tmrun/control.h)
  tmrun::NodeAgent node_agent;  // node K > 0: this host's node agent (node_agent.h)
  control.SetStragglerOptions(cfg.straggler, cfg.straggler_given);
  const bool serves = !cfg.join && !cfg.node && cfg.node_rank == 0;  // node 0 serves the store and the coordinator
  // The job's token authenticates the store and the coordinator.
  if (int rc = ResolveToken(cfg, serves, &job); rc != 0) return rc;
  if (!serves) {
    // A joiner, or node K > 0: the job's node 0 publishes its launch facts in its store.
    const std::string& addr = cfg.join ? cfg.store : cfg.master;  // --node: --master too
    if (!trainmover::base::ParseHostPort(addr, &job.store_host, &job.store_port).ok() || job.store_port == 0) {
      fprintf(stderr, "tmrun: malformed store address '%s'\n", addr.c_str());
      return 2;
    }
    std::string jcoord, jtoken;
    if (int rc = ReadJob(cfg, addr, &job, &jcoord, &jtoken); rc != 0) return rc;
    if (cfg.node) return RunNodeAgent(job, cfg.coordinator.empty() ? jcoord : cfg.coordinator);
    if (trainmover::base::Status st = control.Setup(cfg.coordinator, cfg.no_coordinator, jcoord, jtoken, "");
        !st.ok()) {
      fprintf(stderr, "tmrun: %s\n", st.message().c_str());
      return 1;
    }
    if (!cfg.join)
      fprintf(stderr, "tmrun: node %d of %d, %d ranks, store %s\n", cfg.node_rank, cfg.nnodes, cfg.nproc, addr.c_str());
    // Node K > 0 is its host's node agent too: the coordinator (on node 0's host, or elsewhere) can start a failed
    // rank's replacement, or a migration's joiner, here (docs/recovery.md, "Where a spawned replacement runs").
    if (!cfg.join && !control.address().empty()) node_agent.Start(control.address(), job.token, job.world);
  } else if (int rc = ServeJob(cfg, &job, &store, &control); rc != 0) {
    return rc;
  }

  std::vector<Rank> ranks;
  if (cfg.join) {
    ranks.push_back(Rank{});
    ranks.back().rank = cfg.replace;
  } else {
    ranks.resize(static_cast<size_t>(cfg.nproc));
    for (int r = 0; r < cfg.nproc; ++r) ranks[static_cast<size_t>(r)].rank = cfg.node_rank * cfg.nproc + r;
  }
  // Standbys (docs/recovery.md, "Standbys"): standby K warms up as this node's rank K mod --nproc. They start once
  // every rank of the job trains (reached a safe point at the coordinator, embedded or asked): before that, one
  // warming up as a rank that publishes a unique id in the store could publish its sandboxed one first. Started, they
  // are children like the ranks (their output relayed as [sK]), stopped with them; one that exits never stops the job
  // (one that held a rank is recovered, or the survivors end saying why); the coordinator dismisses those still
  // waiting when the job ends.
  if (cfg.standby > 0 && control.address().empty()) {
    fprintf(stderr, "tmrun: --standby needs a coordinator, and this job has none (node 0 runs --no-coordinator)\n");
    return 2;
  }
  std::vector<Rank> standbys(static_cast<size_t>(cfg.standby));
  for (int k = 0; k < cfg.standby; ++k) {
    standbys[static_cast<size_t>(k)].standby = k;
    standbys[static_cast<size_t>(k)].rank = cfg.node_rank * cfg.nproc + k % cfg.nproc;
  }
  bool standbys_started = cfg.standby == 0;

  int exit_code = 0;
  bool stopping = false;  // SIGTERM sent to the ranks; SIGKILL at kill_at
  Clock::time_point kill_at{};
  auto stop_all = [&](int signo) {
    SignalAll(ranks, signo);
    SignalAll(standbys, signo);
    node_agent.SignalAll(signo);
    if (!stopping) kill_at = Clock::now() + std::chrono::milliseconds(cfg.grace_ms);
    stopping = true;
  };

  for (Rank& r : ranks) {
    if (!Spawn(cfg, job, &r)) {
      exit_code = 1;
      stop_all(SIGTERM);
      break;
    }
  }

  for (;;) {
    bool any_running = false, any_stream = false;
    for (const Rank& r : ranks) any_running |= r.running;
    if (!standbys_started && !stopping && any_running && control.WorkersTraining() >= job.world) {
      standbys_started = true;
      for (Rank& s : standbys) {
        if (Spawn(cfg, job, &s)) fprintf(stderr, "tmrun: standby %d (pid %d) warms up as rank %d\n", s.standby, s.pid, s.rank);
      }
    }
    for (const std::vector<Rank>* group : {&ranks, &standbys}) {
      for (const Rank& r : *group) {
        any_running |= r.running;
        for (const Stream& s : r.streams) any_stream |= s.fd >= 0;
      }
    }
    // Joiners that the embedded coordinator spawned (tmctl migrate --spawn), and what this host's node agent started
    // (a replacement, a joiner), are children too: once they hold ranks, the job is not over until they exit (unless
    // the job is being stopped). So are ranks that moved
    // to another host: while the embedded coordinator sees processes of the job, node 0 keeps serving it.
    // A node agent whose own ranks are gone (one recovered elsewhere, or its replacement not started here yet) stays
    // while the coordinator recovers one: the replacement may be on its way to this host.
    const bool joiners = !stopping && (OtherChildrenAlive() || control.JobProcesses() > 0 ||
                                       (!any_running && node_agent.started() && control.Recovering(500, 0)));
    if (!any_running && !any_stream && !joiners) break;

    std::vector<pollfd> pfds = {{g_sig_pipe[0], POLLIN, 0}};
    std::vector<std::pair<Rank*, Stream*>> owners = {{nullptr, nullptr}};
    for (std::vector<Rank>* group : {&ranks, &standbys}) {
      for (Rank& r : *group) {
        for (Stream& s : r.streams) {
          if (s.fd >= 0) {
            pfds.push_back({s.fd, POLLIN, 0});
            owners.push_back({&r, &s});
          }
        }
      }
    }
    int timeout = -1;
    if (stopping && any_running) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - Clock::now()).count();
      timeout = static_cast<int>(std::max<int64_t>(0, left));
    } else if (!any_running) {
      timeout = joiners ? 100 : 2000;  // ranks are gone; a descendant still holding the pipe gets 2 s to finish
    } else if (!standbys_started) {
      timeout = 100;  // to start the standbys once the ranks train
    }
    int n = poll(pfds.data(), pfds.size(), timeout);
    if (n < 0 && errno != EINTR) break;
    if (n == 0) {
      if (!any_running && !joiners) break;
      if (stopping) {
        fprintf(stderr, "tmrun: ranks still running %d ms after SIGTERM; sending SIGKILL\n", cfg.grace_ms);
        SignalAll(ranks, SIGKILL);
        SignalAll(standbys, SIGKILL);
        node_agent.SignalAll(SIGKILL);
        kill_at = Clock::now() + std::chrono::hours(24);
      }
      continue;
    }
    for (size_t i = 1; i < pfds.size(); ++i) {
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        Relay(owners[i].second, "[" + owners[i].first->Label() + "] ");
      }
    }
    if (pfds[0].revents & POLLIN) {
      char sigs[64];
      ssize_t k = read(g_sig_pipe[0], sigs, sizeof(sigs));
      for (ssize_t j = 0; j < k; ++j) {
        int signo = sigs[j];
        if (signo == SIGCHLD) continue;
        fprintf(stderr, "tmrun: got %s; forwarding to the ranks\n", strsignal(signo));
        if (exit_code == 0) exit_code = 128 + signo;
        if (stopping) {
          SignalAll(ranks, signo == SIGINT ? SIGKILL : signo);  // a second Ctrl-C kills
          SignalAll(standbys, signo == SIGINT ? SIGKILL : signo);
          node_agent.SignalAll(signo == SIGINT ? SIGKILL : signo);
        } else {
          stop_all(signo);
        }
      }
      for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        if (node_agent.Reaped(pid, status)) continue;  // a replacement or joiner this host's node agent started
        for (Rank& s : standbys) {
          if (s.pid != pid) continue;
          s.running = false;
          s.status = status;
          fprintf(stderr, "tmrun: standby %d (pid %d) %s\n", s.standby, pid, tmrun::DescribeStatus(status).c_str());
        }
        for (Rank& r : ranks) {
          if (r.pid != pid) continue;
          r.running = false;
          r.status = status;
          bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
          if (failed && !stopping && control.Recovering(kRecoveryNoticeMs, pid)) {
            SayEnded(r, "; the coordinator recovers it (tmctl status)");
          } else if (failed && !stopping) {
            const Rank* killed = WIFEXITED(status) ? KilledPeer(ranks, r) : nullptr;
            const Rank& cause = killed ? *killed : r;
            SayEnded(cause, "; stopping the other ranks");
            if (killed) SayEnded(r);
            exit_code = ExitCodeOf(cause.status);
            stop_all(SIGTERM);
          } else if (failed) {
            SayEnded(r);
          }
        }
      }
    }
  }
  // Node 0 keeps the store until every other node has read the job from it (bounded: a node that never came
  // has failed the job already).
  if (serves && cfg.nnodes > 1) {
    tm_tools::KvClient kv;
    std::string joined;
    const std::string self = job.store_host + ":" + std::to_string(job.store_port);
    const auto deadline = Clock::now() + std::chrono::milliseconds(kJoinJobTimeoutMs);
    if (kv.Connect(self, kJobStoreTimeoutMs, job.token).ok()) {
      while (Clock::now() < deadline && (kv.Get("tmrun/nodes_joined", 0, &joined) != tm_tools::KvStatus::kOk ||
                                         atoi(joined.c_str()) < cfg.nnodes - 1)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }
  node_agent.Stop();
  store.Stop();
  return exit_code;
}
