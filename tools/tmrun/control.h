// SPDX-License-Identifier: Apache-2.0
// control.h: tmrun's link to the control plane. The ranks get TRAINMOVER_COORDINATOR and
// TRAINMOVER_TOKEN: the coordinator given with --coordinator (or already in the environment), else one
// embedded in tmrun (a trainmoverd Coordinator on a thread of tmrun) with a random token.
#ifndef TRAINMOVER_TOOLS_TMRUN_CONTROL_H_
#define TRAINMOVER_TOOLS_TMRUN_CONTROL_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>

#include "base/status.h"
#include "control/straggler.h"

namespace tmrun {

// A random token for a job (48 hex digits); "" when the system has no randomness to give.
std::string NewJobToken();

class ControlPlane {
 public:
  ControlPlane();
  ~ControlPlane();  // stops the embedded coordinator, removes the token file
  // Sets TRAINMOVER_COORDINATOR/TRAINMOVER_TOKEN in tmrun's environment (the ranks inherit it).
  // `coordinator`: from --coordinator ("" = none given). `job_coordinator`/`job_token_file`: a joiner's
  // job's values from its store ("" = none). `listen_host`: where an embedded coordinator listens (node 0's
  // --master address; "" = none may be embedded here).
  trainmover::base::Status Setup(const std::string& coordinator, bool disabled, const std::string& job_coordinator,
                                 const std::string& job_token_file, const std::string& listen_host);
  // The embedded coordinator's heartbeat timeout (tmrun --heartbeat-timeout-ms); before Setup.
  void SetHeartbeatTimeout(int ms) { heartbeat_timeout_ms_ = ms; }
  // The embedded coordinator's straggler options (tmrun --straggler-*); before Setup. With `given`, Setup fails
  // when no coordinator is embedded here (they would be silently ignored).
  void SetStragglerOptions(const trainmover::control::StragglerOptions& o, bool given) {
    straggler_ = o;
    straggler_given_ = given;
  }
  const std::string& address() const { return address_; }        // "" when disabled
  const std::string& token_file() const { return token_file_; }  // "" unless embedded
  // Processes of the job alive at the embedded coordinator (0 when none is embedded here: only node 0 keeps
  // serving a job whose ranks moved away).
  int JobProcesses() const;
  // Workers alive that reached a safe point: the embedded coordinator's figure, else the coordinator's status
  // document ("job", docs/protocol.md; asked at most every kRemotePollMs); 0 when there is no coordinator or it
  // does not answer.
  int WorkersTraining();
  // Whether the coordinator recovers a failed rank (docs/recovery.md): waits up to `wait_ms` for a recovery to be
  // running (it declares the failure when the rank's connection closes, which may come just after tmrun saw the
  // exit), or for `pid` on this host to be one that a recovery declared failed and replaced (it was stopped and
  // ended when it woke up). The embedded coordinator is asked directly, another one (nodes K > 0, --coordinator)
  // through its status document. False without a coordinator, or when it does not answer within `wait_ms`.
  bool Recovering(int wait_ms, pid_t pid);

 private:
  struct Embedded;
  struct Remote;
  // The job's figures from the coordinator that is not embedded here (remote_); false when it cannot be asked by
  // `deadline`.
  struct JobFigures {
    int workers_training = 0;
    int recoveries_running = 0;
    bool fenced = false;  // the pid asked about, on this host
  };
  bool AskRemote(pid_t pid, std::chrono::steady_clock::time_point deadline, JobFigures* out);
  std::unique_ptr<Embedded> embedded_;
  std::unique_ptr<Remote> remote_;  // set by Setup for a coordinator given, not embedded
  std::string address_, token_file_, dir_;
  int heartbeat_timeout_ms_ = 10000;
  trainmover::control::StragglerOptions straggler_;
  bool straggler_given_ = false;
};

}  // namespace tmrun

#endif  // TRAINMOVER_TOOLS_TMRUN_CONTROL_H_
