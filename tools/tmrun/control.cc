// SPDX-License-Identifier: Apache-2.0
#include "control.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <thread>

#include "base/host.h"
#include "base/thread.h"
#include "common/json.h"
#include "control/client.h"
#include "control/coordinator.h"
#include "control/wire.h"
#include "migration/engine.h"
#include "migration/recovery_engine.h"

namespace tmrun {

using trainmover::base::Status;
using Clock = std::chrono::steady_clock;

constexpr int kRemotePollMs = 500;  // how often WorkersTraining asks a coordinator that is not embedded
constexpr int kRemoteAskMs = 2000;  // the deadline of one such question

struct ControlPlane::Embedded {
  std::unique_ptr<trainmover::control::Coordinator> coord;
  std::thread thread;
};

ControlPlane::ControlPlane() = default;

ControlPlane::~ControlPlane() {
  if (embedded_) {
    embedded_->coord->Stop();
    embedded_->thread.join();
  }
  if (!token_file_.empty() && !dir_.empty()) {
    unlink(token_file_.c_str());
    rmdir(dir_.c_str());
  }
}

int ControlPlane::JobProcesses() const { return embedded_ ? embedded_->coord->alive_processes() : 0; }

// A coordinator not embedded here (node K > 0, or tmrun --coordinator): one tool connection, kept while it works.
struct ControlPlane::Remote {
  trainmover::control::Client client;
  bool connected = false;
  Clock::time_point next_ask{};  // WorkersTraining asks no more often than kRemotePollMs
  int workers_training = 0;      // its last answer
};

bool ControlPlane::AskRemote(pid_t pid, Clock::time_point deadline, JobFigures* out) {
  const int left_ms = static_cast<int>(
      std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  const char* token = getenv("TRAINMOVER_TOKEN");  // Setup put the job's token there
  if (!remote_->connected &&
      !remote_->client.Connect(address_, token ? token : "", trainmover::control::kClientTool, left_ms).ok()) {
    return false;
  }
  remote_->connected = true;
  trainmover::control::JsonReply reply;
  tm_tools::Json doc;
  if (!remote_->client
           .Call(trainmover::control::MsgType::kStatusReq, trainmover::control::StatusReq{},
                 trainmover::control::MsgType::kStatusReply, &reply, left_ms)
           .ok() ||
      !reply.ok || !tm_tools::ParseJson(reply.json, &doc)) {
    remote_->connected = false;  // a new connection next time
    return false;
  }
  out->workers_training = static_cast<int>(doc["job"]["workers_training"].Int());
  out->recoveries_running = static_cast<int>(doc["job"]["recoveries_running"].Int());
  out->fenced = false;
  for (const tm_tools::Json& p : doc["processes"].arr) {
    out->fenced |= p["pid"].Int() == pid && p["host"].Str() == trainmover::base::HostName() && p["fenced"].Bool();
  }
  return true;
}

int ControlPlane::WorkersTraining() {
  if (embedded_) return embedded_->coord->workers_training();
  if (!remote_) return 0;
  const auto now = Clock::now();
  if (now >= remote_->next_ask) {
    remote_->next_ask = now + std::chrono::milliseconds(kRemotePollMs);
    JobFigures f;
    if (AskRemote(0, now + std::chrono::milliseconds(kRemoteAskMs), &f)) remote_->workers_training = f.workers_training;
  }
  return remote_->workers_training;
}

bool ControlPlane::Recovering(int wait_ms, pid_t pid) {
  if (!embedded_ && !remote_) return false;
  const auto deadline = Clock::now() + std::chrono::milliseconds(wait_ms);
  for (;;) {
    JobFigures f;
    const bool recovering =
        embedded_ ? embedded_->coord->recovering() > 0 || embedded_->coord->fenced_pid(static_cast<uint32_t>(pid))
                  : AskRemote(pid, deadline, &f) && (f.recoveries_running > 0 || f.fenced);
    if (recovering) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(embedded_ ? 5 : 50));
  }
}

std::string NewJobToken() {
  unsigned char raw[24];
  if (!trainmover::control::RandomBytes(raw, sizeof(raw))) return "";
  static const char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char c : raw) {
    token += kHex[c >> 4];
    token += kHex[c & 15];
  }
  return token;
}

Status ControlPlane::Setup(const std::string& coordinator, bool disabled, const std::string& job_coordinator,
                           const std::string& job_token_file, const std::string& listen_host) {
  const Status straggler_refused = Status::Error(
      "--straggler-* configure tmrun's embedded coordinator, and this job has none here (give them to its "
      "trainmoverd)");
  if (disabled) {
    if (straggler_given_) return straggler_refused;
    unsetenv("TRAINMOVER_COORDINATOR");
    return Status::Ok();
  }
  const char* env_coord = getenv("TRAINMOVER_COORDINATOR");
  const char* env_token = getenv("TRAINMOVER_TOKEN");
  std::string token = env_token ? env_token : "";
  if (!coordinator.empty() || (env_coord && *env_coord) || !job_coordinator.empty()) {
    if (straggler_given_) return straggler_refused;
    address_ = !coordinator.empty() ? coordinator : (env_coord && *env_coord) ? env_coord : job_coordinator;
    if (token.empty() && !job_token_file.empty()) {
      std::ifstream f(job_token_file, std::ios::binary);
      token.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
    if (token.empty()) {
      return Status::Error("the coordinator " + address_ + " needs the job's token: set TRAINMOVER_TOKEN");
    }
    setenv("TRAINMOVER_COORDINATOR", address_.c_str(), 1);
    setenv("TRAINMOVER_TOKEN", token.c_str(), 1);
    remote_ = std::make_unique<Remote>();  // asked through its status document (WorkersTraining, Recovering)
    return Status::Ok();
  }
  // Node K > 0 or a joiner of a job whose node 0 runs no coordinator: none here either.
  if (listen_host.empty()) {
    if (straggler_given_) return straggler_refused;
    unsetenv("TRAINMOVER_COORDINATOR");
    return Status::Ok();
  }
  // None given: an embedded coordinator with the job's token (tmrun made one when none was given), kept in a
  // private file for tmctl.
  if (token.empty()) {
    return Status::Error("no token for the embedded coordinator");
  }
  trainmover::control::Coordinator::Options o;
  o.listen = listen_host + ":0";
  o.token = token;
  o.heartbeat_timeout_ms = heartbeat_timeout_ms_;
  o.straggler = straggler_;
  embedded_ = std::make_unique<Embedded>();
  embedded_->coord = std::make_unique<trainmover::control::Coordinator>(o);
  trainmover::control::AddJobEngines(*embedded_->coord, straggler_.spare_hosts);
  if (Status st = embedded_->coord->Start(); !st.ok()) {
    embedded_.reset();
    return st;
  }
  address_ = embedded_->coord->address();
  Embedded* e = embedded_.get();
  e->thread = trainmover::base::StartThread("tm-coord", [e] { e->coord->Run(); });
  char tmpl[] = "/tmp/tmrun-XXXXXX";  // mkdtemp makes it 0700
  if (mkdtemp(tmpl)) {
    dir_ = tmpl;
    token_file_ = dir_ + "/token";
    int fd = open(token_file_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, token.data(), token.size()) != static_cast<ssize_t>(token.size())) token_file_.clear();
    if (fd >= 0) close(fd);
  }
  setenv("TRAINMOVER_COORDINATOR", address_.c_str(), 1);
  setenv("TRAINMOVER_TOKEN", token.c_str(), 1);
  return Status::Ok();
}

}  // namespace tmrun
