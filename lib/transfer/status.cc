// SPDX-License-Identifier: Apache-2.0
// Names of codes and paths; Status's text. Kept apart so that the descriptor codec links alone (the fuzzer).
#include "transfer.h"

namespace trainmover::transfer {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kMismatch:
      return "region mismatch";
    case Code::kChecksumMismatch:
      return "checksum mismatch";
    case Code::kPeerFailure:
      return "peer failure";
    case Code::kTimeout:
      return "timeout";
    case Code::kUnsupported:
      return "unsupported";
    case Code::kBadDescriptor:
      return "bad descriptor";
    case Code::kState:
      return "wrong state";
    case Code::kUcx:
      return "UCX error";
    case Code::kCuda:
      return "CUDA error";
  }
  return "unknown";
}

const char* FetchPathName(FetchPath path) {
  switch (path) {
    case FetchPath::kAuto:
      return "auto";
    case FetchPath::kUcx:
      return "ucx";
    case FetchPath::kCma:
      return "cma";
  }
  return "unknown";
}

std::string Status::ToString() const { return ok() ? "ok" : std::string(CodeName(code_)) + ": " + message_; }

}  // namespace trainmover::transfer
