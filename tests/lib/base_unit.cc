// SPDX-License-Identifier: Apache-2.0
// Unit tests of lib/base: Status and TM_CHECK, the host:port parser, named threads, the logger's sink and
// rank, the libcudart lookup without a libcudart, the parameter list's generated table, and the host's memory.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>

#include <string>
#include <vector>

#include "base/config.h"
#include "base/cudart.h"
#include "base/host.h"
#include "base/hostport.h"
#include "base/launcher.h"
#include "base/log.h"
#include "base/status.h"
#include "base/thread.h"

using namespace trainmover::base;

namespace {
Status Fails() { return Status::Errorf("step %d failed", 3); }
Status Passes() { return Status::Ok(); }
Status Chain(bool fail, int* reached) {
  TM_CHECK(Passes());
  *reached = 1;
  if (fail) TM_CHECK(Fails());
  *reached = 2;
  return Status::Ok();
}

std::vector<std::string> g_lines;  // filled by the sink (this test's thread only)
void Capture(const LogRecord& r) { g_lines.push_back(std::string(r.line) + "|" + r.message); }
}  // namespace

TEST_CASE("Status and TM_CHECK") {
  CHECK(Status::Ok().ok());
  CHECK(Status().ok());
  Status e = Status::Error("boom");
  CHECK_FALSE(e.ok());
  CHECK(e.message() == "boom");
  CHECK(e.Prefixed("ctx").message() == "ctx: boom");
  CHECK(Status::Ok().Prefixed("ctx").ok());
  int reached = 0;
  CHECK(Chain(false, &reached).ok());
  CHECK(reached == 2);
  Status st = Chain(true, &reached);
  CHECK(reached == 1);
  CHECK(st.message() == "step 3 failed");
}

TEST_CASE("ParseHostPort") {
  std::string h;
  uint16_t p = 0;
  CHECK(ParseHostPort("127.0.0.1:80", &h, &p).ok());
  CHECK(h == "127.0.0.1");
  CHECK(p == 80);
  CHECK(ParseHostPort("[::1]:4000", &h, &p).ok());
  CHECK(h == "::1");
  CHECK(p == 4000);
  CHECK(ParseHostPort("h:0", &h, &p).ok());  // listen on any port
  CHECK(p == 0);
  for (const char* bad : {"127.0.0.1", ":80", "h:", "h:65536", "h:8x", "h:-1", "[::1:80", "[]:80"}) {
    CAPTURE(bad);
    Status st = ParseHostPort(bad, &h, &p);
    CHECK_FALSE(st.ok());
    CHECK(st.message().find(bad) != std::string::npos);  // the error quotes the text
  }
}

TEST_CASE("StartThread names the thread and the owner joins it") {
  char name[32] = "";
  std::thread t =
      StartThread("tm-test-a-very-long-name", [&name] { pthread_getname_np(pthread_self(), name, sizeof(name)); });
  t.join();
  CHECK(std::string(name) == "tm-test-a-very-");  // cut to the kernel's 15 characters
  int sum = 0;
  std::thread u = StartThread(
      "tm-args", [](int* out, int a, int b) { *out = a + b; }, &sum, 2, 3);
  u.join();
  CHECK(sum == 5);
}

TEST_CASE("the logger: level before formatting, sink, rank") {
  LogSetSink(Capture);
  LogConfigure(LogLevel::kInfo, kLogAll, nullptr);
  g_lines.clear();
  TM_TRACE(kLogControl, "not shown %d", 1);
  TM_INFO(kLogControl, "shown %d", 2);
  LogSetRank(5);
  LogSetRank(6);  // only the first rank counts
  TM_WARN(kLogMigration, "warned");
  LogConfigure(LogLevel::kTrace, kLogState, nullptr);
  TM_TRACE(kLogControl, "other subsystem");
  TM_TRACE(kLogState, "traced");
  LogSetSink(nullptr);
  LogConfigure(LogLevel::kWarn, kLogAll & ~kLogColl, nullptr);
  REQUIRE(g_lines.size() == 3);
  CHECK(g_lines[0].find("[-1] TRAINMOVER INFO shown 2|shown 2") != std::string::npos);
  CHECK(g_lines[1].find("[5] TRAINMOVER WARN warned|warned") != std::string::npos);
  CHECK(g_lines[2].find("TRAINMOVER TRACE base_unit.cc:") != std::string::npos);
}

TEST_CASE("no libcudart in this process: CudartIfLoaded does not load one") {
  CHECK(CudartIfLoaded() == nullptr);
  CHECK_FALSE(IsDevicePointer(CudartIfLoaded(), &g_lines));
}

TEST_CASE("the parameter table has one row per parameter, every default parses") {
  const std::string t = trainmover::shim::ConfigMarkdownTable();
  for (const auto& p : trainmover::shim::ConfigParams()) {
    CAPTURE(p.name);
    CHECK(t.find(std::string("| `") + p.name + "` |") != std::string::npos);
  }
  trainmover::shim::Config c;  // defaults come from the same list
  CHECK(c.heartbeat_ms == 1000);
  CHECK(c.replace == -1);
  CHECK(c.tape_max_bytes == 67108864);
  CHECK(c.seal_overlap == "auto");
  CHECK(c.debug_subsys == (kLogAll & ~kLogColl));
}

TEST_CASE("launcher identity: torchrun's RANK and WORLD_SIZE, tmrun's, or nothing; invalid values ignored") {
  using trainmover::base::LauncherFromEnv;
  for (const char* v : {"RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "TMRUN_STORE"}) unsetenv(v);
  CHECK(LauncherFromEnv().rank == -1);
  setenv("RANK", "5", 1);
  setenv("WORLD_SIZE", "8", 1);
  CHECK(LauncherFromEnv().launcher == "env");
  setenv("TORCHELASTIC_RUN_ID", "job42", 1);
  auto id = LauncherFromEnv();
  CHECK(id.rank == 5);
  CHECK(id.world == 8);
  CHECK(id.launcher == "torchrun");
  for (const char* bad : {"8", "-1", "x", ""}) {
    setenv("RANK", bad, 1);
    CHECK(LauncherFromEnv().rank == -1);
    CHECK(LauncherFromEnv().world == -1);
  }
  for (const char* v : {"RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"}) unsetenv(v);
}

TEST_CASE("LocalWorldFromEnv: LOCAL_WORLD_SIZE when it is a count, else 1") {
  unsetenv("LOCAL_WORLD_SIZE");
  CHECK(LocalWorldFromEnv() == 1);
  setenv("LOCAL_WORLD_SIZE", "8", 1);
  CHECK(LocalWorldFromEnv() == 8);
  for (const char* bad : {"0", "-2", "8x", ""}) {
    setenv("LOCAL_WORLD_SIZE", bad, 1);
    CHECK(LocalWorldFromEnv() == 1);
  }
  unsetenv("LOCAL_WORLD_SIZE");
}

// TRAINMOVER_SNAPSHOT_MEMORY's base: MemTotal, or the lowest cgroup limit when lower (v2 memory.max, v1
// memory.limit_in_bytes, whose "no limit" is a huge number; the cgroup's own and its ancestors'); 0 when nothing
// can be read.
TEST_CASE("HostMemoryBytes: MemTotal, or the cgroup v1/v2 limit when lower") {
  char tmpl[] = "/tmp/tm-hostmem-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string d = tmpl;
  auto write = [](const std::string& path, const std::string& text) { std::ofstream(path) << text; };
  write(d + "/meminfo", "MemFree:         100 kB\nMemTotal:        2048 kB\nMemAvailable:    1000 kB\n");
  REQUIRE(mkdir((d + "/job").c_str(), 0700) == 0);
  REQUIRE(mkdir((d + "/memory").c_str(), 0700) == 0);
  REQUIRE(mkdir((d + "/memory/job").c_str(), 0700) == 0);
  write(d + "/v2", "0::/job\n");
  write(d + "/v1", "4:memory:/job\n1:cpu,cpuacct:/\n");
  write(d + "/none", "");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/none", d) == 2048 * 1024);
  write(d + "/job/memory.max", "max\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v2", d) == 2048 * 1024);
  write(d + "/job/memory.max", "1048576\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v2", d) == 1048576);
  write(d + "/memory/job/memory.limit_in_bytes", "9223372036854771712\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v1", d) == 2048 * 1024);
  write(d + "/memory/job/memory.limit_in_bytes", "524288\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v1", d) == 524288);
  CHECK(HostMemoryBytes(d + "/missing", d + "/none", d) == 0);
  CHECK(HostMemoryBytes(d + "/missing", d + "/v1", d) == 524288);
  // A cgroup below /job that does not exist here (a container's view without a cgroup namespace): /job's limit,
  // then the root's when lower; the v1 line with several controllers is read too.
  write(d + "/v2deep", "0::/job/inner\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v2deep", d) == 1048576);
  write(d + "/memory.max", "4096\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v2deep", d) == 4096);
  write(d + "/v1both", "7:cpu,memory:/job\n");
  CHECK(HostMemoryBytes(d + "/meminfo", d + "/v1both", d) == 524288);
  CHECK(HostMemoryBytes() > 0);  // this machine's
  (void)std::system(("rm -rf " + d).c_str());
}
