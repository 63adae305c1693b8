// SPDX-License-Identifier: Apache-2.0
// Unit tests of tm-train's deterministic pieces: RNG, data, model gradient, Adam, extra state, checkpoint.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "model.h"
#include "state.h"

using namespace tm_train;

TEST_CASE("Mix64 is splitmix64") {
  // The first outputs of splitmix64 seeded with 0 (state advances by the golden gamma).
  CHECK(Mix64(0) == 0xe220a8397b1dcdafull);
  CHECK(Mix64(0x9e3779b97f4a7c15ull) == 0x6e789e6aa1b965f4ull);
}

TEST_CASE("UnitFloat is in [-1, 1) and exact") {
  CHECK(UnitFloat(0) == -1.0f);
  CHECK(UnitFloat(~0ull) == 1.0f - 1.0f / (1 << 23));
  CHECK(UnitFloat(1ull << 63) == 0.0f);
}

TEST_CASE("Batch is a pure function of (seed, rank, step)") {
  Dims d = DimsForParams(5000);
  Task a(d, 7), b(d, 7), c(d, 8);
  size_t nx = static_cast<size_t>(d.batch * d.in), ny = static_cast<size_t>(d.batch * d.out);
  std::vector<float> x1(nx), y1(ny), x2(nx), y2(ny);
  a.Batch(1, 5, x1.data(), y1.data());
  b.Batch(1, 5, x2.data(), y2.data());
  CHECK(memcmp(x1.data(), x2.data(), nx * 4) == 0);
  CHECK(memcmp(y1.data(), y2.data(), ny * 4) == 0);
  b.Batch(2, 5, x2.data(), y2.data());
  CHECK(memcmp(x1.data(), x2.data(), nx * 4) != 0);
  b.Batch(1, 6, x2.data(), y2.data());
  CHECK(memcmp(x1.data(), x2.data(), nx * 4) != 0);
  c.Batch(1, 5, x2.data(), y2.data());
  CHECK(memcmp(x1.data(), x2.data(), nx * 4) != 0);  // inputs and teacher both depend on the seed
  CHECK(memcmp(y1.data(), y2.data(), ny * 4) != 0);
}

TEST_CASE("DimsForParams stays within the request") {
  for (int64_t p : {1, 100, 10000, 123457, 10000000}) {
    Dims d = DimsForParams(p);
    CHECK(d.hidden >= 1);
    if (p >= 49) {
      CHECK(d.NumParams() <= p);
      CHECK(d.NumParams() > p - (d.in + 1 + d.out));
    }
  }
}

TEST_CASE("InitParams is deterministic and seed dependent") {
  Dims d = DimsForParams(2000);
  size_t n = static_cast<size_t>(d.NumParams());
  std::vector<float> a(n), b(n), c(n);
  InitParams(d, 3, a.data());
  InitParams(d, 3, b.data());
  InitParams(d, 4, c.data());
  CHECK(memcmp(a.data(), b.data(), n * 4) == 0);
  CHECK(memcmp(a.data(), c.data(), n * 4) != 0);
}

TEST_CASE("ForwardBackward gradient matches finite differences") {
  Dims d{4, 3, 2, 5};
  Task task(d, 11);
  size_t n = static_cast<size_t>(d.NumParams());
  std::vector<float> p(n), g(n), scratch(ScratchFloats(d)), x(20), y(10), gtmp(n);
  InitParams(d, 11, p.data());
  for (size_t i = 0; i < n; ++i) p[i] += 0.05f * UnitFloat(Mix64(i));  // non-zero biases too
  task.Batch(0, 0, x.data(), y.data());
  float loss = ForwardBackward(d, p.data(), x.data(), y.data(), g.data(), scratch.data());
  CHECK(loss > 0.0f);
  int bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float h = 1e-2f;
    std::vector<float> q = p;
    q[i] = p[i] + h;
    float lp = ForwardBackward(d, q.data(), x.data(), y.data(), gtmp.data(), scratch.data());
    q[i] = p[i] - h;
    float lm = ForwardBackward(d, q.data(), x.data(), y.data(), gtmp.data(), scratch.data());
    float fd = (lp - lm) / (2 * h);
    if (std::fabs(fd - g[i]) > 2e-3f + 2e-2f * std::fabs(g[i])) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("Adam step against hand-computed values") {
  AdamConfig cfg;
  cfg.lr = 0.1f;
  cfg.warmup = 0;
  float p[2] = {1.0f, -2.0f}, m[2] = {0, 0}, v[2] = {0, 0};
  const float g1[2] = {0.5f, -0.25f};
  AdamStep(cfg, 0, 2, g1, p, m, v);
  // t=1: m = 0.1 g, v = 0.001 g^2, m^ = g, v^ = g^2, p -= lr * g / (|g| + eps) = lr * sign(g) (to 1e-7).
  CHECK(m[0] == doctest::Approx(0.05).epsilon(1e-6));
  CHECK(v[0] == doctest::Approx(0.00025).epsilon(1e-6));
  CHECK(p[0] == doctest::Approx(0.9).epsilon(1e-6));
  CHECK(p[1] == doctest::Approx(-1.9).epsilon(1e-6));
  // t=2 with g = 1.0 for parameter 0:
  //   m = 0.9*0.05 + 0.1*1 = 0.145; v = 0.999*0.00025 + 0.001*1 = 0.00124975
  //   m^ = 0.145 / (1 - 0.81) = 0.763157895; v^ = 0.00124975 / (1 - 0.998001) = 0.625187594
  //   p = 0.9 - 0.1 * 0.763157895 / (0.790688050 + 1e-8) = 0.9 - 0.096517820 = 0.803482180
  const float g2[2] = {1.0f, 0.0f};
  AdamStep(cfg, 1, 2, g2, p, m, v);
  CHECK(m[0] == doctest::Approx(0.145).epsilon(1e-6));
  CHECK(v[0] == doctest::Approx(0.00124975).epsilon(1e-5));
  CHECK(p[0] == doctest::Approx(0.803482180).epsilon(1e-5));
}

TEST_CASE("Learning-rate warm-up is a function of the step") {
  AdamConfig cfg;
  cfg.lr = 1.0f;
  cfg.warmup = 4;
  CHECK(LearningRate(cfg, 0) == 0.25f);
  CHECK(LearningRate(cfg, 3) == 1.0f);
  CHECK(LearningRate(cfg, 100) == 1.0f);
}

TEST_CASE("Extra state touches one word per 4 KiB page") {
  std::vector<uint64_t> a(3 * kExtraWordsPerPage), b;
  InitExtraState(5, a.data(), a.size());
  b = a;
  UpdateExtraState(5, 0, a.data(), a.size());
  int changed = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) {
      ++changed;
      CHECK(i % kExtraWordsPerPage == 0);
    }
  }
  CHECK(changed == 3);
}

TEST_CASE("Checkpoint round trip, corruption and mismatch") {
  char dir_tmpl[] = "/tmp/tm-ckpt-XXXXXX";
  REQUIRE(mkdtemp(dir_tmpl) != nullptr);
  std::string dir = dir_tmpl, path = CheckpointPath(dir, 3), err;
  std::vector<float> pa(100), ma(100);
  std::vector<uint64_t> xa(600);
  for (size_t i = 0; i < 100; ++i) pa[i] = UnitFloat(Mix64(i)), ma[i] = UnitFloat(Mix64(i + 1000));
  InitExtraState(9, xa.data(), xa.size());
  std::vector<Region> src = {{"params", pa.data(), 400}, {"adam_m", ma.data(), 400}, {"extra", xa.data(), 4800}};
  CheckpointMeta meta{9, 100, 3, 4};
  REQUIRE(SaveCheckpoint(path, meta, 42, src).ok());
  CHECK(access((path + ".tmp." + std::to_string(getpid())).c_str(), F_OK) != 0);  // renamed away

  std::vector<float> pb(100), mb(100);
  std::vector<uint64_t> xb(600);
  std::vector<Region> dst = {{"params", pb.data(), 400}, {"adam_m", mb.data(), 400}, {"extra", xb.data(), 4800}};
  int64_t step = -1;
  REQUIRE(LoadCheckpoint(path, meta, dst, &step).ok());
  CHECK(step == 42);
  CHECK(StateDigest(src) == StateDigest(dst));
  CHECK(memcmp(pa.data(), pb.data(), 400) == 0);

  CheckpointMeta other = meta;
  other.seed = 10;
  err = LoadCheckpoint(path, other, dst, &step).message();
  CHECK_FALSE(err.empty());
  std::vector<Region> wrong = {{"params", pb.data(), 400}, {"adam_v", mb.data(), 400}, {"extra", xb.data(), 4800}};
  err = LoadCheckpoint(path, meta, wrong, &step).message();
  CHECK_FALSE(err.empty());
  CHECK(err.find("adam_v") != std::string::npos);

  {  // flip one byte in the data
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0;
    f.seekg(200);
    f.read(&c, 1);
    c ^= 1;
    f.seekp(200);
    f.write(&c, 1);
  }
  err = LoadCheckpoint(path, meta, dst, &step).message();
  CHECK_FALSE(err.empty());
  CHECK(err.find("checksum") != std::string::npos);
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST_CASE("StateDigest is SHA-256 of the concatenation") {
  char abc[] = "abc";
  CHECK(StateDigest({{"a", abc, 1}, {"b", abc + 1, 2}}) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
