// SPDX-License-Identifier: Apache-2.0
// libraries.h: where tmrun finds the shim (libtrainmover.so) it preloads into the ranks, and hostnccl
// (--hostnccl). A tmrun run from its build tree uses that build's libraries; an installed tmrun
// (<prefix>/bin) the ones installed beside it (<prefix>/<libdir>). docs/tmrun.md, "The shim and hostnccl".
#ifndef TOOLS_TMRUN_LIBRARIES_H_
#define TOOLS_TMRUN_LIBRARIES_H_

#include <string>

namespace tmrun {

enum class Library { kShim, kHostnccl };

// The path of the library for this tmrun, or "" with *why set when it is not there.
std::string LocateLibrary(Library lib, std::string* why);

}  // namespace tmrun

#endif  // TOOLS_TMRUN_LIBRARIES_H_
