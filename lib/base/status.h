// SPDX-License-Identifier: Apache-2.0
// The one error type below the NCCL boundary (the exported NCCL surface keeps ncclResult_t; hostnccl keeps
// its own HN_CHECK as a self-contained plugin). A Status is ok or carries a human message that names what
// failed; callers add context and pass it up with TM_CHECK.
#pragma once

#include <string>
#include <utility>

#include "base/log.h"

namespace trainmover::base {

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  static Status Ok() { return Status(); }
  static Status Error(std::string msg) { return Status(std::move(msg), true); }
  static Status Errorf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }
  // "context: message"; an ok status stays ok.
  Status Prefixed(const std::string& context) const { return ok() ? *this : Status::Error(context + ": " + message_); }

 private:
  Status(std::string msg, bool failed) : message_(std::move(msg)), failed_(failed) {}
  std::string message_;
  bool failed_ = false;
};

}  // namespace trainmover::base

// Evaluates `expr` (a Status) and returns it from the calling function when it is not ok, noting the place
// at TRACE so a failure can be followed up the stack.
#define TM_CHECK(expr)                                                                                   \
  do {                                                                                                   \
    ::trainmover::base::Status tm_check_status_ = (expr);                                                \
    if (!tm_check_status_.ok()) {                                                                        \
      TM_TRACE(::trainmover::base::kLogAll, "%s failed: %s", #expr, tm_check_status_.message().c_str()); \
      return tm_check_status_;                                                                           \
    }                                                                                                    \
  } while (0)
