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
#include <cstring>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/hostport.h"
#include "common/kv_store.h"
#include "control.h"
#include "options.h"

namespace {

// A joining tmrun waits this long for the job's store (to answer, then for each launch fact in it); the job's
// own tmrun connects to the store it has just started.
constexpr int kJobStoreTimeoutMs = 10000;
constexpr int kOwnStoreConnectTimeoutMs = 5000;

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
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  Stream streams[2];
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
uint16_t FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
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
    std::string path = cfg.output_dir + "/rank-" + std::to_string(r->rank) + ".log";
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
  std::vector<std::string> env = tmrun::ChildEnv(cfg, job, r->rank);
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

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
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

}  // namespace

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
  if (cfg.join) {
    // The job's own tmrun published its launch facts in its store.
    if (trainmover::base::Status st = trainmover::base::ParseHostPort(cfg.store, &job.store_host, &job.store_port);
        !st.ok() || job.store_port == 0) {
      fprintf(stderr, "tmrun: malformed --store '%s': %s\n", cfg.store.c_str(),
              st.ok() ? "port 0" : st.message().c_str());
      return 2;
    }
    tm_tools::KvClient kv;
    std::string world, maddr, mport;
    if (trainmover::base::Status st = kv.Connect(cfg.store, kJobStoreTimeoutMs); !st.ok()) {
      fprintf(stderr, "tmrun: %s\n", st.message().c_str());
      return 1;
    }
    if (kv.Get("tmrun/world_size", kJobStoreTimeoutMs, &world) != tm_tools::KvStatus::kOk ||
        kv.Get("tmrun/master_addr", kJobStoreTimeoutMs, &maddr) != tm_tools::KvStatus::kOk ||
        kv.Get("tmrun/master_port", kJobStoreTimeoutMs, &mport) != tm_tools::KvStatus::kOk) {
      fprintf(stderr, "tmrun: %s is not a tmrun store (no tmrun/world_size)\n", cfg.store.c_str());
      return 1;
    }
    if (world != std::to_string(cfg.nproc)) {
      fprintf(stderr, "tmrun: -n %d but the job at %s has %s ranks\n", cfg.nproc, cfg.store.c_str(), world.c_str());
      return 2;
    }
    job.master_addr = maddr;
    job.master_port = static_cast<uint16_t>(atoi(mport.c_str()));
    std::string jcoord, jtoken;  // the job's coordinator (empty when it runs without one)
    kv.Get("tmrun/coordinator", 2000, &jcoord);
    kv.Get("tmrun/token_file", 2000, &jtoken);
    if (trainmover::base::Status st = control.Setup(cfg.coordinator, cfg.no_coordinator, jcoord, jtoken); !st.ok()) {
      fprintf(stderr, "tmrun: %s\n", st.message().c_str());
      return 1;
    }
  } else {
    if (trainmover::base::Status st = store.Start("127.0.0.1", 0); !st.ok()) {
      fprintf(stderr, "tmrun: store: %s\n", st.message().c_str());
      return 1;
    }
    job.store_host = "127.0.0.1";
    job.store_port = store.port();
    job.master_addr = "127.0.0.1";
    job.master_port = FreePort();
    if (trainmover::base::Status st = control.Setup(cfg.coordinator, cfg.no_coordinator, "", ""); !st.ok()) {
      fprintf(stderr, "tmrun: %s\n", st.message().c_str());
      return 1;
    }
    tm_tools::KvClient kv;
    const std::string self = "127.0.0.1:" + std::to_string(store.port());
    if (!kv.Connect(self, kOwnStoreConnectTimeoutMs).ok() ||
        kv.Set("tmrun/world_size", std::to_string(cfg.nproc)) != tm_tools::KvStatus::kOk ||
        kv.Set("tmrun/master_addr", job.master_addr) != tm_tools::KvStatus::kOk ||
        kv.Set("tmrun/master_port", std::to_string(job.master_port)) != tm_tools::KvStatus::kOk ||
        kv.Set("tmrun/coordinator", control.address()) != tm_tools::KvStatus::kOk ||
        kv.Set("tmrun/token_file", control.token_file()) != tm_tools::KvStatus::kOk) {
      fprintf(stderr, "tmrun: cannot initialise the store\n");
      return 1;
    }
    fprintf(stderr, "tmrun: %d ranks, store %s\n", cfg.nproc, self.c_str());
    if (!control.token_file().empty()) {
      fprintf(stderr, "tmrun: coordinator %s (tmctl --coordinator %s --token-file %s status)\n",
              control.address().c_str(), control.address().c_str(), control.token_file().c_str());
    } else if (!control.address().empty()) {
      fprintf(stderr, "tmrun: coordinator %s\n", control.address().c_str());
    }
  }

  std::vector<Rank> ranks;
  if (cfg.join) {
    ranks.push_back(Rank{});
    ranks.back().rank = cfg.replace;
  } else {
    ranks.resize(static_cast<size_t>(cfg.nproc));
    for (int r = 0; r < cfg.nproc; ++r) ranks[static_cast<size_t>(r)].rank = r;
  }

  int exit_code = 0;
  bool stopping = false;  // SIGTERM sent to the ranks; SIGKILL at kill_at
  Clock::time_point kill_at{};
  auto stop_all = [&](int signo) {
    SignalAll(ranks, signo);
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
    for (const Rank& r : ranks) {
      any_running |= r.running;
      for (const Stream& s : r.streams) any_stream |= s.fd >= 0;
    }
    // Joiners that the embedded coordinator spawned (tmctl migrate --spawn) are children too: once they hold
    // ranks, the job is not over until they exit (unless the job is being stopped).
    const bool joiners = !stopping && OtherChildrenAlive();
    if (!any_running && !any_stream && !joiners) break;

    std::vector<pollfd> pfds = {{g_sig_pipe[0], POLLIN, 0}};
    std::vector<std::pair<Rank*, Stream*>> owners = {{nullptr, nullptr}};
    for (Rank& r : ranks) {
      for (Stream& s : r.streams) {
        if (s.fd >= 0) {
          pfds.push_back({s.fd, POLLIN, 0});
          owners.push_back({&r, &s});
        }
      }
    }
    int timeout = -1;
    if (stopping && any_running) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - Clock::now()).count();
      timeout = static_cast<int>(std::max<int64_t>(0, left));
    } else if (!any_running) {
      timeout = joiners ? 100 : 2000;  // ranks are gone; a descendant still holding the pipe gets 2 s to finish
    }
    int n = poll(pfds.data(), pfds.size(), timeout);
    if (n < 0 && errno != EINTR) break;
    if (n == 0) {
      if (!any_running && !joiners) break;
      if (stopping) {
        fprintf(stderr, "tmrun: ranks still running %d ms after SIGTERM; sending SIGKILL\n", cfg.grace_ms);
        SignalAll(ranks, SIGKILL);
        kill_at = Clock::now() + std::chrono::hours(24);
      }
      continue;
    }
    for (size_t i = 1; i < pfds.size(); ++i) {
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        Relay(owners[i].second, "[" + std::to_string(owners[i].first->rank) + "] ");
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
        if (stopping)
          SignalAll(ranks, signo == SIGINT ? SIGKILL : signo);  // a second Ctrl-C kills
        else
          stop_all(signo);
      }
      for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        for (Rank& r : ranks) {
          if (r.pid != pid) continue;
          r.running = false;
          r.status = status;
          bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
          if (failed && !stopping) {
            fprintf(stderr, "tmrun: rank %d (pid %d) %s; stopping the other ranks\n", r.rank, pid,
                    Describe(status).c_str());
            exit_code = ExitCodeOf(status);
            stop_all(SIGTERM);
          } else if (failed) {
            fprintf(stderr, "tmrun: rank %d (pid %d) %s\n", r.rank, pid, Describe(status).c_str());
          }
        }
      }
    }
  }
  store.Stop();
  return exit_code;
}
