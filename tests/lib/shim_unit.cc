// SPDX-License-Identifier: Apache-2.0
// Unit tests of libtrainmover's internals, with the shim linked into this program (its ncclX are the
// shim's) and nullnccl as the real library (TRAINMOVER_NCCL_LIBRARY, set by meson).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "base/config.h"
#include "core/binding.h"
#include "core/shim_state.h"
#include "nccl_dtype.h"
#include "sandbox/sandbox.h"

using namespace trainmover::shim;

extern "C" int64_t tmShimSafePoint(int64_t);
extern "C" int tmShimRegister(const char*, void*, size_t);
extern "C" int tmShimUnregister(const char*);
extern "C" int tmShimRank(int);

namespace {

ncclComm_t MakeComm(int nranks = 1, int rank = 0) {
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  ncclComm_t c = nullptr;
  REQUIRE(ncclCommInitRank(&c, nranks, id, rank) == ncclSuccess);
  return c;
}

const VCommInfo* Find(const std::vector<VCommInfo>& all, ncclComm_t c) {
  for (const auto& i : all) {
    if (AsHandle(i.vcomm) == c) return &i;
  }
  return nullptr;
}

// RAII: new root communicators are sandboxed while alive.
struct SandboxScope {
  SandboxScope() { SetProcessSandboxed(true); }
  ~SandboxScope() { SetProcessSandboxed(false); }
};

}  // namespace

// ------------------------------------------------------------------------------------------------
TEST_CASE("config: defaults, every valid value, and invalid values named with the accepted ones") {
  auto env = [](std::vector<std::pair<const char*, const char*>> kv) {
    return [kv](const char* n) -> const char* {
      for (auto& p : kv) {
        if (strcmp(p.first, n) == 0) return p.second;
      }
      return nullptr;
    };
  };
  Config c;
  REQUIRE(ConfigParse(env({}), &c).ok());
  CHECK(c.role == Role::kWorker);
  CHECK(c.shadow_iters == 1);
  CHECK(c.coordinator.empty());
  REQUIRE(ConfigParse(env({{"TRAINMOVER_ROLE", "joiner"},
                           {"TRAINMOVER_REPLACE", "3"},
                           {"TRAINMOVER_COORDINATOR", "127.0.0.1:4000"},
                           {"TRAINMOVER_DEBUG", "info"},
                           {"TRAINMOVER_SHADOW_ITERS", "2"},
                           {"TRAINMOVER_HEARTBEAT_MS", "50"},
                           {"TRAINMOVER_DEBUG_SUBSYS", "INIT,BIND"},
                           {"TRAINMOVER_TOKEN", "s3cret-0123456789"},
                           {"TRAINMOVER_ROLE", "joiner"},
                           {"TRAINMOVER_NCCL_LIBRARY", "/x/libnccl.so.2"},
                           {"TRAINMOVER_DEBUG_FILE", "/tmp/tm.%h.%p"}}),
                      &c)
              .ok());
  CHECK(c.role == Role::kJoiner);
  CHECK(c.replace == 3);
  CHECK(c.coordinator_host == "127.0.0.1");
  CHECK(c.coordinator_port == 4000);
  CHECK(c.debug == LogLevel::kInfo);
  CHECK(c.shadow_iters == 2);
  CHECK(c.heartbeat_ms == 50);
  CHECK(c.debug_subsys == (trainmover::base::kLogInit | trainmover::base::kLogBind));
  CHECK(c.snapshot_every == 1);
  CHECK(c.snapshot_budget == doctest::Approx(0.02));
  REQUIRE(ConfigParse(env({{"TRAINMOVER_SNAPSHOT_EVERY", "AUTO"}, {"TRAINMOVER_SNAPSHOT_BUDGET", "0.25"}}), &c).ok());
  CHECK(c.snapshot_every == 0);  // auto
  CHECK(c.snapshot_budget == doctest::Approx(0.25));
  REQUIRE(ConfigParse(env({{"TRAINMOVER_SNAPSHOT_EVERY", "8"}, {"TRAINMOVER_SNAPSHOT_BUDGET", "1"}}), &c).ok());
  CHECK(c.snapshot_every == 8);
  REQUIRE(ConfigParse(env({{"TRAINMOVER_HOLD_TIMEOUT_MS", "2592000000"}}), &c).ok());  // the upper bound itself: 30 days
  CHECK(c.hold_timeout_ms == 2592000000);
  struct Bad {
    const char* name;
    const char* value;
    const char* accepted;
  } bad[] = {
      {"TRAINMOVER_ROLE", "leader", "worker|joiner|standby"}, {"TRAINMOVER_SHADOW_ITERS", "0", "integer >= 1"},
      {"TRAINMOVER_SHADOW_ITERS", "2x", "integer >= 1"},      {"TRAINMOVER_REPLACE", "-1", "integer >= 0"},
      {"TRAINMOVER_COORDINATOR", "localhost", "host:port"},   {"TRAINMOVER_COORDINATOR", "h:70000", "host:port"},
      {"TRAINMOVER_DEBUG", "LOUD", "WARN|INFO|TRACE"},        {"TRAINMOVER_HEARTBEAT_MS", "fast", "integer >= 1 and <= 2592000000"},
      {"TRAINMOVER_DEBUG_SUBSYS", "INIT,NOPE", "INIT,BIND"},  {"TRAINMOVER_TOKEN", "s3cret", "at least 16 characters"},
      {"TRAINMOVER_SNAPSHOT_EVERY", "0", "integer >= 1, or auto"},
      {"TRAINMOVER_SNAPSHOT_EVERY", "often", "integer >= 1, or auto"},
      {"TRAINMOVER_SNAPSHOT_BUDGET", "0", "a number > 0 and <= 1"},
      {"TRAINMOVER_SNAPSHOT_BUDGET", "1.5", "a number > 0 and <= 1"},
      {"TRAINMOVER_SNAPSHOT_BUDGET", "2%", "a number > 0 and <= 1"},
      // "never time out" as a huge number: refused, since its deadline in nanoseconds would overflow and fire at once
      {"TRAINMOVER_HOLD_TIMEOUT_MS", "99999999999999", "integer >= 1000 and <= 2592000000"},
      {"TRAINMOVER_PHASE_TIMEOUT_MS", "2592000001", "integer >= 1000 and <= 2592000000"}};
  for (const Bad& b : bad) {
    CAPTURE(b.name);
    CAPTURE(b.value);
    const trainmover::base::Status st = ConfigParse(env({{b.name, b.value}}), &c);
    CHECK_FALSE(st.ok());
    const std::string& err = st.message();
    CHECK(err.find(b.name) != std::string::npos);
    CHECK(err.find(b.accepted) != std::string::npos);
  }
  // Every row of the registry is known to the parser (its default parses when given explicitly).
  for (const ParamSpec& p : ConfigParams()) {
    CAPTURE(p.name);
    CHECK(strlen(p.doc) > 10);
    if (p.default_value[0]) CHECK(ConfigParse(env({{p.name, p.default_value}}), &c).ok());
  }
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("dtype: every code of every small format decodes and encodes back to itself") {
  // common/nccl_dtype.h's round trips, over every code; its known values are in tests/hostnccl/hn_convert_test.
  using namespace trainmover::common;
  for (const SmallFloat* f : {&kHalf, &kBf16, &kE4m3, &kE5m2}) {
    uint32_t mismatches = 0, checked = 0;
    for (uint32_t b = 0; b < (1u << f->bits); ++b) {
      double d = Decode(*f, b);
      if (std::isnan(d)) continue;
      if (std::isinf(d) && f->saturate) continue;  // fp8 e5m2: infinity encodes as the largest finite value
      ++checked;
      if (Encode(*f, d) != b) ++mismatches;
    }
    CHECK(mismatches == 0);
    CHECK(checked > (1u << f->bits) - (1u << (f->bits - 4)));  // all but the NaN (and saturated) codes
  }
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("every handle kind is virtual and maps to the real one") {
  ncclComm_t c = MakeComm();
  auto all = SnapshotVComms();
  const VCommInfo* info = Find(all, c);
  REQUIRE(info != nullptr);
  CHECK(info->real != nullptr);
  CHECK(info->real != c);
  CHECK(GetBindInfo().method == "TRAINMOVER_NCCL_LIBRARY");

  float x = 1, y = 0;
  CHECK(ncclAllReduce(&x, &y, 1, ncclFloat32, ncclSum, c, nullptr) == ncclSuccess);
  int n = 0, r = -1;
  CHECK(ncclCommCount(c, &n) == ncclSuccess);
  CHECK(ncclCommUserRank(c, &r) == ncclSuccess);
  CHECK(n == 1);
  CHECK(r == 0);

  // PreMulSum: nullnccl returns ncclNumOps for every op; the application sees a shim value.
  float scalar = 0.5f;
  ncclRedOp_t op;
  REQUIRE(ncclRedOpCreatePreMulSum(&op, &scalar, ncclFloat32, ncclScalarHostImmediate, c) == ncclSuccess);
  CHECK(static_cast<int>(op) != static_cast<int>(ncclNumOps));
  CHECK(static_cast<int>(op) >= kVirtualOpBase);
  CHECK(ncclAllReduce(&x, &y, 1, ncclFloat32, op, c, nullptr) == ncclSuccess);
  CHECK(info->vcomm->ring[(info->vcomm->seq.load() - 1) % kOpRing].op == static_cast<int>(op));
  CHECK(ncclRedOpDestroy(op, c) == ncclSuccess);

  // Registration and window: nullnccl returns the buffer address as the real handle.
  std::vector<char> buf(4096);
  void* reg = nullptr;
  REQUIRE(ncclCommRegister(c, buf.data(), buf.size(), &reg) == ncclSuccess);
  CHECK(reg != buf.data());
  CHECK(static_cast<RegHandle*>(reg)->real == buf.data());
  ncclWindow_t win = nullptr;
  REQUIRE(ncclCommWindowRegister(c, buf.data(), buf.size(), &win, NCCL_WIN_COLL_SYMMETRIC) == ncclSuccess);
  CHECK(reinterpret_cast<void*>(win) != buf.data());
  CHECK(reinterpret_cast<WinHandle*>(win)->flags == NCCL_WIN_COLL_SYMMETRIC);
  {
    std::lock_guard<std::mutex> lock(info->vcomm->mu);
    CHECK(info->vcomm->regs.size() == 1);
    CHECK(info->vcomm->wins.size() == 1);
  }
  CHECK(ncclCommWindowDeregister(c, win) == ncclSuccess);
  CHECK(ncclCommDeregister(c, reg) == ncclSuccess);
  CHECK(ncclCommDestroy(c) == ncclSuccess);
  CHECK(AsVComm(c) == nullptr);  // dead: a stale handle is forwarded raw
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("lineage and comm_key for every creation path") {
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  memset(&id, 7, sizeof(id));
  ncclComm_t a = nullptr, b = nullptr, s = nullptr, all[3] = {};
  REQUIRE(ncclCommInitRank(&a, 4, id, 2) == ncclSuccess);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.commName = "model-parallel";
  cfg.blocking = 0;
  REQUIRE(ncclCommInitRankConfig(&b, 4, id, 2, &cfg) == ncclSuccess);
  ncclUniqueId ids[2];
  memset(ids, 3, sizeof(ids));
  REQUIRE(ncclCommInitRankScalable(&s, 4, 1, 2, ids, nullptr) == ncclSuccess);
  int devs[3] = {5, 6, 7};
  REQUIRE(ncclCommInitAll(all, 3, devs) == ncclSuccess);
  ncclComm_t sp1 = nullptr, sp2 = nullptr, none = reinterpret_cast<ncclComm_t>(1), sh = nullptr;
  REQUIRE(ncclCommSplit(a, 1, 9, &sp1, nullptr) == ncclSuccess);
  REQUIRE(ncclCommSplit(a, NCCL_SPLIT_NOCOLOR, 0, &none, nullptr) == ncclSuccess);
  CHECK(none == nullptr);
  REQUIRE(ncclCommSplit(a, 1, 9, &sp2, nullptr) == ncclSuccess);
  int excl[1] = {0};
  REQUIRE(ncclCommShrink(a, excl, 1, &sh, nullptr, NCCL_SHRINK_DEFAULT) == ncclSuccess);

  auto snap = SnapshotVComms();
  const VCommInfo *ia = Find(snap, a), *ib = Find(snap, b), *is = Find(snap, s), *i0 = Find(snap, all[0]),
                  *i2 = Find(snap, all[2]), *isp1 = Find(snap, sp1), *isp2 = Find(snap, sp2), *ish = Find(snap, sh);
  REQUIRE((ia && ib && is && i0 && i2 && isp1 && isp2 && ish));
  CHECK(ia->lineage.kind == CommKind::kInitRank);
  CHECK(ia->lineage.nranks == 4);
  CHECK(ia->lineage.rank == 2);
  CHECK(ib->lineage.kind == CommKind::kInitRankConfig);
  CHECK(ib->lineage.has_config);
  CHECK(ib->lineage.comm_name == "model-parallel");
  CHECK(ib->lineage.config.blocking == 0);
  CHECK(ia->comm_key == ib->comm_key);  // same unique id, same key
  CHECK(is->lineage.kind == CommKind::kInitRankScalable);
  CHECK(is->lineage.rank == 1);
  CHECK(is->comm_key != ia->comm_key);
  CHECK(i0->lineage.kind == CommKind::kInitAll);
  CHECK(i2->lineage.rank == 2);
  CHECK(i2->lineage.device == 7);
  CHECK(i0->comm_key != i2->comm_key);
  CHECK(isp1->lineage.kind == CommKind::kSplit);
  CHECK(isp1->lineage.parent_index == ia->lineage.index);
  CHECK(isp1->lineage.parent_key == ia->comm_key);
  CHECK(isp1->lineage.child_index == 0);
  CHECK(isp2->lineage.child_index == 2);  // the NOCOLOR split counted as index 1
  CHECK(isp1->lineage.color == 1);
  CHECK(isp1->lineage.key == 9);
  CHECK(isp1->lineage.nranks == 4);  // resolved from the real comm
  CHECK(isp1->comm_key != isp2->comm_key);
  CHECK(ish->lineage.kind == CommKind::kShrink);
  CHECK(ish->lineage.excluded == std::vector<int>{0});
  CHECK(ish->lineage.child_index == 3);
  CHECK(ish->lineage.nranks == 3);
  // Creation indices are in order.
  CHECK(ia->lineage.index < ib->lineage.index);
  CHECK(ib->lineage.index < is->lineage.index);
  CHECK(i0->lineage.index + 2 == i2->lineage.index);
  CHECK(i2->lineage.index < isp1->lineage.index);
  CHECK(isp2->lineage.index < ish->lineage.index);
  // comm_key is the documented function of the lineage.
  CHECK(CommKeyOf(ia->lineage, &id, sizeof(id)) == ia->comm_key);
  CHECK(CommKeyOf(isp2->lineage, nullptr, 0) == isp2->comm_key);
  for (ncclComm_t c : {sh, sp2, sp1, all[0], all[1], all[2], s, b, a}) CHECK(ncclCommDestroy(c) == ncclSuccess);
}

TEST_CASE("config copy never reads past config->size") {
  // A config whose declared size ends exactly at a page boundary followed by an inaccessible page.
  const long page = sysconf(_SC_PAGESIZE);
  char* mem = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(mem != MAP_FAILED);
  REQUIRE(mprotect(mem + page, page, PROT_NONE) == 0);
  // Rounded up to the struct's alignment, so the config is aligned (UBSan) and still ends at the page.
  const size_t small = (offsetof(ncclConfig_t, blocking) + sizeof(int) + alignof(ncclConfig_t) - 1) /
                       alignof(ncclConfig_t) * alignof(ncclConfig_t);
  auto* cfg = reinterpret_cast<ncclConfig_t*>(mem + page - small);
  ncclConfig_t init = NCCL_CONFIG_INITIALIZER;
  memcpy(cfg, &init, small);
  cfg->size = small;
  cfg->blocking = 1;
  ncclUniqueId id;
  memset(&id, 1, sizeof(id));
  ncclComm_t c = nullptr;
  REQUIRE(ncclCommInitRankConfig(&c, 1, id, 0, cfg) == ncclSuccess);
  auto snap = SnapshotVComms();
  const VCommInfo* i = Find(snap, c);
  REQUIRE(i);
  CHECK(i->lineage.config.blocking == 1);
  REQUIRE(offsetof(ncclConfig_t, minCTAs) >= small);
  CHECK(i->lineage.config.minCTAs == NCCL_CONFIG_UNDEF_INT);  // beyond size: the initializer's value
  CHECK(ncclCommDestroy(c) == ncclSuccess);
  munmap(mem, 2 * page);
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("many threads x many communicators, concurrently") {
  constexpr int kThreads = 8, kComms = 4, kOps = 20000;
  std::vector<std::vector<ncclComm_t>> comms(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kComms; ++i) comms[t].push_back(MakeComm());
      float x = 1, y;
      for (int k = 0; k < kOps; ++k) {
        ncclComm_t c = comms[t][k % kComms];
        if (ncclAllReduce(&x, &y, 1, ncclFloat32, ncclSum, c, nullptr) != ncclSuccess) break;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    for (ncclComm_t c : comms[t]) {
      VComm* v = AsVComm(c);
      REQUIRE(v);
      CHECK(v->seq.load() == kOps / kComms);
      auto ops = RecentOps(v);
      REQUIRE(ops.size() == kOpRing);
      CHECK(ops.back().seq == kOps / kComms);
      CHECK(ops.back().kind == OpKind::kAllReduce);
      CHECK(ops.front().seq == kOps / kComms - kOpRing + 1);
      CHECK(ncclCommDestroy(c) == ncclSuccess);
    }
  }
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("migration primitives: stage, rebind objects, switch") {
  ncclComm_t c = MakeComm();
  VComm* v = AsVComm(c);
  float scalar = 2.0f;
  ncclRedOp_t op;
  REQUIRE(ncclRedOpCreatePreMulSum(&op, &scalar, ncclFloat32, ncclScalarHostImmediate, c) == ncclSuccess);
  std::vector<char> buf(64);
  void* reg;
  REQUIRE(ncclCommRegister(c, buf.data(), buf.size(), &reg) == ncclSuccess);
  ncclComm_t next = nullptr;
  ncclUniqueId id{};
  REQUIRE(g_real.CommInitRank(&next, 1, id, 0) == ncclSuccess);
  ncclComm_t old = v->real.load();
  SetNextComm(v, next);
  REQUIRE(RebindObjects(v) == ncclSuccess);
  CHECK(SwitchToNext(v) == old);
  CHECK(v->real.load() == next);
  CHECK(v->next.load() == nullptr);
  CHECK(static_cast<RegHandle*>(reg)->real == buf.data());
  CHECK(g_real.CommDestroy(old) == ncclSuccess);
  float x = 1, y;
  CHECK(ncclAllReduce(&x, &y, 1, ncclFloat32, op, c, nullptr) == ncclSuccess);
  CHECK(InstallRealComm(v, nullptr) == next);  // into the sandbox
  CHECK(IsSandboxed(v));
  CHECK(InstallRealComm(v, next) == nullptr);
  CHECK(ncclCommDestroy(c) == ncclSuccess);
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("safe points, hook and registered regions") {
  static int hook_calls = 0;
  SetSafePointHook(
      [](void*, int64_t step) -> int64_t {
        ++hook_calls;
        return step == 7 ? 100 : step;
      },
      nullptr);
  CHECK(tmShimSafePoint(5) == 5);
  CHECK(tmShimSafePoint(7) == 100);
  SafePointRecord sp = GetSafePoint();
  CHECK(sp.step == 7);
  CHECK(sp.count == 2);
  CHECK(sp.time_ns > 0);
  CHECK(hook_calls == 2);
  SetSafePointHook(nullptr, nullptr);
  std::vector<float> w(10);
  CHECK(tmShimRegister("weights", w.data(), 40) == 0);
  CHECK(tmShimRegister("weights", w.data(), 40) == 2);
  CHECK(tmShimRegister("", w.data(), 40) == 1);
  CHECK(tmShimRegister("x", nullptr, 40) == 1);
  CHECK(tmShimRegister("x", w.data(), 0) == 1);
  CHECK(tmShimRegister(std::string(64, 'n').c_str(), w.data(), 4) == 1);
  auto regions = Regions();
  REQUIRE(regions.size() == 1);
  CHECK(regions[0].name == "weights");
  CHECK(regions[0].ptr == w.data());
  CHECK(regions[0].bytes == 40);
  CHECK(tmShimUnregister("weights") == 0);
  CHECK(tmShimUnregister("weights") == 3);
  CHECK(Regions().empty());
}

TEST_CASE("tmRank: the argument until a standby is assigned a rank; the program asking is noted") {
  CHECK_FALSE(RankFollowed());
  CHECK(tmShimRank(3) == 3);
  CHECK(RankFollowed());
  SetAssignedRank(1);  // what a standby's ASSIGN does (lib/migration/shim_world.cc)
  CHECK(tmShimRank(3) == 1);
  CHECK(tmShimRank(0) == 1);
  SetAssignedRank(-1);
  CHECK(tmShimRank(2) == 2);
}
