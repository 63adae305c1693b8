// SPDX-License-Identifier: Apache-2.0
#include "spawn_process.h"

#include <fcntl.h>
#include <spawn.h>

#include <algorithm>
#include <cctype>
#include <cstring>

extern char** environ;

namespace trainmover::base {

bool IsSecretEnvName(std::string_view name_or_kv) {
  std::string name(name_or_kv.substr(0, name_or_kv.find('=')));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::toupper(c); });
  for (const char* word : {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE_KEY", "API_KEY", "APIKEY",
                           "ACCESS_KEY"}) {
    if (name.find(word) != std::string::npos) return true;
  }
  return false;
}

Status SpawnProcess(const SpawnSpec& s, pid_t* pid) {
  if (s.argv.empty() || s.argv[0].empty()) return Status::Error("nothing to start: the command line is empty");
  std::vector<std::string> env = s.env;
  for (char** e = environ; e && *e; ++e) {
    const std::string_view kv(*e), name = kv.substr(0, kv.find('='));
    if (!IsSecretEnvName(name)) continue;
    const bool set = std::any_of(s.env.begin(), s.env.end(), [&](const std::string& have) {
      return have.size() > name.size() && have.compare(0, name.size(), name) == 0 && have[name.size()] == '=';
    });
    if (!set) env.emplace_back(kv);
  }
  std::vector<char*> argv, envp;
  for (const std::string& a : s.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (std::string& kv : env) envp.push_back(kv.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (!s.dir.empty()) posix_spawn_file_actions_addchdir_np(&fa, s.dir.c_str());
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, s.log.empty() ? "/dev/null" : s.log.c_str(),
                                   O_WRONLY | O_CREAT | (s.append ? O_APPEND : O_TRUNC), 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (s.new_session) posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  int rc = posix_spawnp(pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return Status::Error(s.argv[0] + ": " + strerror(rc));
  return Status::Ok();
}

}  // namespace trainmover::base
