// SPDX-License-Identifier: Apache-2.0
#include "libraries.h"

#include <unistd.h>

#include <filesystem>
#include <system_error>

namespace tmrun {
namespace {

namespace fs = std::filesystem;

// Set by meson: this tmrun's path in the build tree, the libraries' paths there (empty when not built),
// and the library directory relative to the install prefix.
#ifndef TMRUN_BUILD_EXE
#error "TMRUN_BUILD_EXE must be defined by the build"
#endif

bool SameFile(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

}  // namespace

std::string LocateLibrary(Library lib, std::string* why) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  const char* name = lib == Library::kShim ? "libtrainmover.so" : "hostnccl's libnccl.so.2";
  fs::path path;
  if (!ec && SameFile(self, TMRUN_BUILD_EXE)) {
    path = lib == Library::kShim ? TMRUN_BUILD_SHIM : TMRUN_BUILD_HOSTNCCL;
  } else if (!ec) {
    path = self.parent_path().parent_path() / TMRUN_LIBDIR / (lib == Library::kShim ? "libtrainmover.so" : "libnccl.so.2");
  }
  if (path.empty() || !fs::exists(path, ec)) {
    *why = std::string(name) + " is not " + (path.empty() ? "built" : "at " + path.string());
    return "";
  }
  return path.string();
}

}  // namespace tmrun
