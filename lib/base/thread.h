// SPDX-License-Identifier: Apache-2.0
// Every thread of libtrainmover and the tools is started here and named, so that it shows in `top -H`,
// /proc/PID/task/*/comm and debuggers (tm-agent, tm-build, tm-fetch, ...). The returned std::thread is
// owned and joined by its starter.
#pragma once

#include <pthread.h>

#include <functional>
#include <thread>
#include <utility>

namespace trainmover::base {

// Sets the calling thread's name; names longer than 15 characters (the kernel's limit) are cut.
inline void SetThreadName(const char* name) {
  char cut[16];
  size_t i = 0;
  for (; name[i] != '\0' && i < sizeof(cut) - 1; ++i) cut[i] = name[i];
  cut[i] = '\0';
  pthread_setname_np(pthread_self(), cut);
}

// std::thread(fn, args...) whose thread is named `name` (a string literal) before fn runs. The arguments
// are copied or moved into the thread as std::thread does.
template <typename F, typename... Args>
std::thread StartThread(const char* name, F&& fn, Args&&... args) {
  return std::thread(
      [name](auto f, auto... a) {
        SetThreadName(name);
        std::invoke(std::move(f), std::move(a)...);
      },
      std::forward<F>(fn), std::forward<Args>(args)...);
}

}  // namespace trainmover::base
