// SPDX-License-Identifier: Apache-2.0
#include "control.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <chrono>
#include <thread>

#include "base/thread.h"
#include "control/coordinator.h"
#include "control/wire.h"
#include "migration/engine.h"
#include "migration/recovery_engine.h"

namespace tmrun {

using trainmover::base::Status;

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

int ControlPlane::WorkersTraining() const { return embedded_ ? embedded_->coord->workers_training() : 0; }

bool ControlPlane::Recovering(int wait_ms, pid_t pid) const {
  if (!embedded_) return false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  while (embedded_->coord->recovering() == 0 && !embedded_->coord->fenced_pid(static_cast<uint32_t>(pid))) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
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
  {
    // Node agents (tmrun --node) start joiners on the migration's target host; the directory sees their events.
    auto nodes = std::make_unique<trainmover::control::node::Directory>();
    auto* directory = nodes.get();
    embedded_->coord->AddEngine(std::move(nodes));
    embedded_->coord->AddEngine(trainmover::control::MakeMigrationEngine(
        trainmover::control::MakeNodeLauncher(directory, trainmover::control::MakeProcessLauncher())));
    // After the migration engine: a failure during a planned migration first aborts it, then is recovered.
    embedded_->coord->AddEngine(trainmover::control::MakeRecoveryEngine());
  }
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
