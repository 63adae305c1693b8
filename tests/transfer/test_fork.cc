// SPDX-License-Identifier: Apache-2.0
// Two processes: a forked leaver runs a StateServer, the parent fetches as the joiner. Round trips of
// one region and many (sizes 0, 1, odd, 64 MiB) compared bit for bit, a corruption after sealing, and the
// leaver killed in the middle of a transfer (an error within the timeout, never a hang). Each case
// forks before it creates any UCX object in the parent. TRANSFER_TEST_TLS selects UCX transports
// (e.g. "tcp" to exercise the cross-host path, where UCP emulates get over active messages);
// TRANSFER_TEST_PATH=ucx|cma forces the client's path (default: auto, which is cma on one host).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "test_pattern.h"
#include "test_support.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;
using transfer_test::Fill;
using transfer_test::SeedOf;

namespace {

std::string Transports() {
  const char* t = std::getenv("TRANSFER_TEST_TLS");
  return t ? t : "";
}

// TRANSFER_TEST_PATH=ucx|cma forces a path; unset: auto (cma on this host when permitted).
tt::FetchOptions Opts() {
  tt::FetchOptions o;
  const char* p = std::getenv("TRANSFER_TEST_PATH");
  std::string path = p ? p : "";
  o.path = path == "ucx" ? tt::FetchPath::kUcx : path == "cma" ? tt::FetchPath::kCma : tt::FetchPath::kAuto;
  return o;
}

// The corruption case changes a region's byte after Expose on purpose. Over the UCX path the leaver's own
// progress thread copies that byte out for the joiner (UCX's software get, rma_sw.c), ordered after the change
// only through the joiner's process, which ThreadSanitizer cannot see: it reports the change as a data race. Under
// ThreadSanitizer that case runs on the cma path only (transfer_fork); the ASan build runs it on every path.
#if defined(__SANITIZE_THREAD__)
const bool kTsanUcxPath = Opts().path == tt::FetchPath::kUcx;
#else
const bool kTsanUcxPath = false;
#endif

using transfer_test::ReadAll;
using transfer_test::WriteAll;

// kSealOnRequest: the migration's order; the leaver seals only when a byte arrives on g_seal_fd (after the
// joiner prepared).
enum class Mode { kNormal, kCorruptAfterSeal, kNeverSeal, kSealOnRequest };
int g_seal_fd = -1;
const char kKey[] = "the job's token in this test";  // read end, in the leaver, of the pipe that asks it to seal

struct Spec {
  std::string name;
  size_t size;
};

// The leaver: fills its regions, exposes them, seals (unless told not to), sends the descriptor, serves until
// the parent closes `release` (the joiner never writes into the leaver: the parent is its coordinator). Exit
// status: 0 as expected, 1 otherwise. Never returns.
[[noreturn]] void Leaver(const std::vector<Spec>& specs, Mode mode, int fd, int release) {
  std::vector<std::vector<unsigned char>> bufs(specs.size());
  std::vector<tt::Region> regions;
  for (size_t i = 0; i < specs.size(); ++i) {
    bufs[i].resize(specs[i].size);
    Fill(&bufs[i], SeedOf(specs[i].name));
    regions.push_back({specs[i].name, bufs[i].data(), bufs[i].size()});
  }
  std::unique_ptr<tt::StateServer> server;
  tt::ServerOptions so;
  so.transports = Transports();
  so.auth_key = kKey;
  if (!tt::StateServer::Create(so, &server).ok() || !server->Expose(regions).ok()) _exit(1);
  if ((mode == Mode::kNormal || mode == Mode::kCorruptAfterSeal) && !server->Seal().ok()) _exit(1);
  if (mode == Mode::kCorruptAfterSeal) {
    for (auto& b : bufs) {
      if (!b.empty()) {
        b[b.size() / 2] ^= 0x10;
        break;
      }
    }
  }
  const auto& d = server->Descriptor();
  uint64_t n = d.size();
  if (!WriteAll(fd, &n, sizeof(n)) || !WriteAll(fd, d.data(), d.size())) _exit(1);
  if (mode == Mode::kNeverSeal) {
    for (;;) pause();
  }
  if (mode == Mode::kSealOnRequest) {
    char c;
    if (read(g_seal_fd, &c, 1) != 1 || !server->Seal().ok()) _exit(1);
  }
  char c;
  while (read(release, &c, 1) > 0) {
  }
  server->Close();
  _exit(0);
}

struct Child {
  pid_t pid = -1;
  int release = -1;  // closing it ends the leaver
  std::vector<uint8_t> descriptor;
};

Child StartLeaver(const std::vector<Spec>& specs, Mode mode) {
  int fds[2], rel[2];
  REQUIRE(pipe(fds) == 0);
  REQUIRE(pipe(rel) == 0);
  Child c;
  c.pid = fork();
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    close(fds[0]);
    close(rel[1]);
    Leaver(specs, mode, fds[1], rel[0]);
  }
  close(fds[1]);
  close(rel[0]);
  c.release = rel[1];
  uint64_t n = 0;
  REQUIRE(ReadAll(fds[0], &n, sizeof(n)));
  REQUIRE(n <= tt::kMaxDescriptorBytes);
  c.descriptor.resize(n);
  REQUIRE(ReadAll(fds[0], c.descriptor.data(), n));
  close(fds[0]);
  return c;
}

int WaitExit(pid_t pid) {
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Tells the leaver the joiner is done, and returns its exit status.
int Release(Child& c) {
  close(c.release);
  return WaitExit(c.pid);
}

std::unique_ptr<tt::StateClient> MakeClient() {
  std::unique_ptr<tt::StateClient> client;
  tt::ClientOptions co;
  co.transports = Transports();
  co.auth_key = kKey;
  tt::Status s = tt::StateClient::Create(co, &client);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return client;
}

// The joiner's regions for `specs`, filled with a byte the leaver never writes everywhere.
std::vector<tt::Region> JoinerRegions(const std::vector<Spec>& specs, std::vector<std::vector<unsigned char>>* dst) {
  dst->assign(specs.size(), {});
  std::vector<tt::Region> local;
  for (size_t i = 0; i < specs.size(); ++i) {
    (*dst)[i].assign(specs[i].size, 0xA5);
    local.push_back({specs[i].name, (*dst)[i].data(), (*dst)[i].size()});
  }
  return local;
}

// Regions whose bytes differ from the leaver's pattern (compared whole, bit for bit).
size_t WrongRegions(const std::vector<Spec>& specs, const std::vector<std::vector<unsigned char>>& dst) {
  size_t wrong = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<unsigned char> expect(specs[i].size);
    Fill(&expect, SeedOf(specs[i].name));
    wrong += expect != dst[i];
  }
  return wrong;
}

void RoundTrip(const std::vector<Spec>& specs, size_t chunk, int outstanding) {
  Child c = StartLeaver(specs, Mode::kNormal);
  auto client = MakeClient();
  std::vector<std::vector<unsigned char>> dst;
  std::vector<tt::Region> local = JoinerRegions(specs, &dst);
  tt::FetchOptions o = Opts();
  o.chunk_bytes = chunk;
  o.max_outstanding = outstanding;
  o.timeout_ms = 30000;
  o.leaver_pid = static_cast<uint32_t>(c.pid);
  tt::FetchResult r;
  tt::Status s = client->Fetch(c.descriptor, local, o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(r.verified);
  MESSAGE("path " << std::string(tt::FetchPathName(r.path)) << ", " << r.bytes << " bytes, " << r.gbps << " GB/s");
  if (o.path != tt::FetchPath::kAuto) CHECK(r.path == o.path);
  CHECK(WrongRegions(specs, dst) == 0);
  CHECK(Release(c) == 0);
}

}  // namespace

TEST_CASE("one region of 64 MiB, 1 MiB chunks, 16 outstanding") { RoundTrip({{"state", 64u << 20}}, 1 << 20, 16); }

TEST_CASE("many regions of sizes 0, 1, odd and large, odd chunk size") {
  std::vector<Spec> specs;
  const size_t sizes[] = {0, 1, 3, 8, 4095, 65537, 999999, 3u << 20, 0, 17};
  for (size_t i = 0; i < std::size(sizes); ++i) specs.push_back({"param." + std::to_string(i), sizes[i]});
  RoundTrip(specs, 100003, 7);
}

TEST_CASE("a single region of size 0 and one request at a time") { RoundTrip({{"nothing", 0}}, 1, 1); }

TEST_CASE("corruption after the leaver hashed is detected" * doctest::skip(kTsanUcxPath)) {
  std::vector<Spec> specs = {{"a", 1000}, {"b", 2u << 20}};
  Child c = StartLeaver(specs, Mode::kCorruptAfterSeal);
  auto client = MakeClient();
  std::vector<unsigned char> a(1000), b(2u << 20);
  tt::FetchResult r;
  tt::Status s = client->Fetch(c.descriptor, {{"a", a.data(), a.size()}, {"b", b.data(), b.size()}}, Opts(), &r);
  CHECK(s.code() == tt::Code::kChecksumMismatch);
  CHECK(s.message().find("'a'") != std::string::npos);
  CHECK_FALSE(r.verified);
  CHECK(Release(c) == 0);
}

TEST_CASE("a descriptor naming another pid than the leaver's, or of another key, is refused") {
  Child c = StartLeaver({{"a", 4096}}, Mode::kNormal);
  std::vector<unsigned char> a(4096);
  tt::FetchOptions o = Opts();
  o.leaver_pid = static_cast<uint32_t>(c.pid) + 1;  // the coordinator says the leaver is another process
  tt::FetchResult r;
  tt::Status s = MakeClient()->Fetch(c.descriptor, {{"a", a.data(), a.size()}}, o, &r);
  CHECK(s.code() == tt::Code::kBadDescriptor);
  CHECK(s.message().find("pid") != std::string::npos);
  std::unique_ptr<tt::StateClient> other;
  tt::ClientOptions co;
  co.transports = Transports();
  co.auth_key = "another job's token, 32 bytes..";
  REQUIRE(tt::StateClient::Create(co, &other).ok());
  o.leaver_pid = static_cast<uint32_t>(c.pid);
  CHECK(other->Fetch(c.descriptor, {{"a", a.data(), a.size()}}, o, &r).code() == tt::Code::kBadDescriptor);
  // Neither refusal read a byte; the right pid and key still work.
  s = MakeClient()->Fetch(c.descriptor, {{"a", a.data(), a.size()}}, o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(WrongRegions({{"a", 4096}}, {a}) == 0);
  CHECK(Release(c) == 0);
}

TEST_CASE("size mismatch with a live leaver is refused") {
  Child c = StartLeaver({{"a", 4096}}, Mode::kNeverSeal);
  auto client = MakeClient();
  std::vector<unsigned char> a(4097);
  tt::FetchResult r;
  CHECK(client->Fetch(c.descriptor, {{"a", a.data(), a.size()}}, Opts(), &r).code() == tt::Code::kMismatch);
  CHECK(client->Fetch(c.descriptor, {{"A", a.data(), 4096}}, Opts(), &r).code() == tt::Code::kMismatch);
  kill(c.pid, SIGKILL);
  CHECK(Release(c) == 128 + SIGKILL);
}

TEST_CASE("the leaver killed in the middle of a transfer gives an error, not a hang") {
  const size_t size = 256u << 20;
  Child c = StartLeaver({{"big", size}}, Mode::kNeverSeal);
  auto client = MakeClient();
  std::vector<unsigned char> dst(size);
  tt::FetchOptions o = Opts();
  o.chunk_bytes = 64 << 10;
  o.max_outstanding = 1;
  o.timeout_ms = 20000;
  bool killed = false;
  o.progress = [&](uint64_t done, uint64_t) {
    if (!killed && done >= size / 8) {
      kill(c.pid, SIGKILL);
      killed = true;
    }
  };
  tt::FetchResult r;
  auto t0 = std::chrono::steady_clock::now();
  tt::Status s = client->Fetch(c.descriptor, {{"big", dst.data(), size}}, o, &r);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(killed);
  CHECK_FALSE(s.ok());
  CHECK((s.code() == tt::Code::kPeerFailure || s.code() == tt::Code::kTimeout));
  // The same-host path reads with process_vm_readv itself (no UCX inside to abort the reader): the lanes' reads
  // of the dying leaver fail with ESRCH or EFAULT, an error at once, never a timeout.
  if (r.path == tt::FetchPath::kCma) CHECK(s.code() == tt::Code::kPeerFailure);
  MESSAGE("after kill (" << (r.path == tt::FetchPath::kCma ? "cma" : "ucx") << "): " << s.ToString() << " in " << secs
                         << " s");
  CHECK(secs < 25);
  CHECK(Release(c) == 128 + SIGKILL);
}

TEST_CASE("a leaver that is already gone gives an error, not a hang") {
  Child c = StartLeaver({{"a", 1u << 20}}, Mode::kNeverSeal);
  kill(c.pid, SIGKILL);
  CHECK(Release(c) == 128 + SIGKILL);
  auto client = MakeClient();
  std::vector<unsigned char> a(1u << 20);
  tt::FetchOptions o = Opts();
  o.timeout_ms = 10000;
  tt::FetchResult r;
  auto t0 = std::chrono::steady_clock::now();
  tt::Status s = client->Fetch(c.descriptor, {{"a", a.data(), a.size()}}, o, &r);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("dead leaver: " << s.ToString() << " in " << secs << " s");
  CHECK((s.code() == tt::Code::kPeerFailure || s.code() == tt::Code::kTimeout));
  CHECK(secs < 15);
}

// The migration's order across two processes: the joiner prepares (connection, rkeys, registrations, lanes)
// while the leaver still runs unsealed, then asks it to seal and reads. Then the same with the leaver killed
// between Prepare and Read: Read reports the dead peer, within the timeout, instead of hanging.
TEST_CASE("prepare before the leaver seals, read after; a leaver killed after Prepare fails the Read") {
  for (bool kill_it : {false, true}) {
    CAPTURE(kill_it);
    int seal[2];
    REQUIRE(pipe(seal) == 0);
    g_seal_fd = seal[0];
    const std::vector<Spec> specs = {{"w", (5u << 20) + 11}, {"b", 4096}};
    Child c = StartLeaver(specs, Mode::kSealOnRequest);
    close(seal[0]);
    auto client = MakeClient();
    std::vector<std::vector<unsigned char>> dst;
    std::vector<tt::Region> local = JoinerRegions(specs, &dst);
    tt::FetchOptions o = Opts();
    o.timeout_ms = 10000;
    std::unique_ptr<tt::PreparedFetch> prepared;
    tt::Status s = client->Prepare(c.descriptor, local, o, &prepared);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    if (o.path != tt::FetchPath::kAuto) CHECK(prepared->path() == o.path);
    if (kill_it) {
      kill(c.pid, SIGKILL);
      CHECK(Release(c) == 128 + SIGKILL);
    } else {
      REQUIRE(write(seal[1], "s", 1) == 1);
    }
    tt::FetchResult r;
    auto t0 = std::chrono::steady_clock::now();
    s = prepared->Read(o, &r);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    close(seal[1]);
    if (kill_it) {
      MESSAGE("dead after Prepare: " << s.ToString() << " in " << secs << " s");
      CHECK((s.code() == tt::Code::kPeerFailure || s.code() == tt::Code::kTimeout));
      CHECK(secs < 12);
      continue;
    }
    CHECK_MESSAGE(s.ok(), s.ToString());
    CHECK(r.verified);
    CHECK(WrongRegions(specs, dst) == 0);
    prepared.reset();
    CHECK(Release(c) == 0);
  }
}

// A leaver frozen (SIGSTOP: a paused VM; to the joiner, like a host cut off) while the joiner connects: Prepare
// fails within its timeout, and neither that nor the client's teardown hangs or aborts the joiner, though requests
// to the frozen leaver may still be in flight inside UCX (reader.h, WorkerWedged). A connection the same client
// prepared to a live leaver before still reads, bit for bit (its worker is that leaver's, not the frozen one's),
// and so does a new one. Over tcp the wire-up and the get need the leaver's progress, so Prepare must fail; over
// shared memory or cma a frozen process's memory may still be read.
TEST_CASE("a leaver frozen while the joiner connects: an error; the client's other connections still read") {
  // Both forked before the client creates any UCX object; the live one second, so that no other child holds its
  // `release` pipe open.
  Child frozen = StartLeaver({{"a", 1u << 20}}, Mode::kNeverSeal);
  const std::vector<Spec> specs = {{"b", (3u << 20) + 5}};
  Child live = StartLeaver(specs, Mode::kNormal);
  auto client = MakeClient();
  tt::FetchOptions o = Opts();
  o.timeout_ms = 20000;
  o.leaver_pid = static_cast<uint32_t>(live.pid);
  std::vector<std::vector<unsigned char>> dst;
  std::unique_ptr<tt::PreparedFetch> kept;
  tt::Status s = client->Prepare(live.descriptor, JoinerRegions(specs, &dst), o, &kept);
  REQUIRE_MESSAGE(s.ok(), s.ToString());

  REQUIRE(kill(frozen.pid, SIGSTOP) == 0);
  std::vector<unsigned char> a(1u << 20);
  tt::FetchOptions fo = Opts();
  fo.timeout_ms = 1000;
  std::unique_ptr<tt::PreparedFetch> prepared;
  auto t0 = std::chrono::steady_clock::now();
  s = client->Prepare(frozen.descriptor, {{"a", a.data(), a.size()}}, fo, &prepared);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("frozen leaver: " << (s.ok() ? std::string("prepared") : s.ToString()) << " in " << secs << " s");
  if (Transports() == "tcp") CHECK(s.code() == tt::Code::kTimeout);
  CHECK(secs < 10);  // the 1 s timeout, then at most the teardown's 2 s bound (and a worker's set-up), when busy
  prepared.reset();

  tt::FetchResult r;
  s = kept->Read(o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(r.verified);
  CHECK(WrongRegions(specs, dst) == 0);
  kept.reset();
  std::vector<tt::Region> local = JoinerRegions(specs, &dst);
  s = client->Fetch(live.descriptor, local, o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(r.verified);
  CHECK(WrongRegions(specs, dst) == 0);
  CHECK(Release(live) == 0);
  client.reset();  // a process that aborted here never reaches the next line
  CHECK(kill(frozen.pid, SIGKILL) == 0);
  CHECK(Release(frozen) == 128 + SIGKILL);
}
