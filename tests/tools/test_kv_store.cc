// SPDX-License-Identifier: Apache-2.0
// Unit tests of the tmrun key-value store: protocol, blocking GET, timeouts, bounds.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <string>
#include <thread>

#include "base/hostport.h"
#include "common/kv_store.h"

using namespace tm_tools;

namespace {
const std::string kToken = "kv-test-token-0123456789";

struct Fixture {
  KvServer server;
  std::string addr;
  Fixture() {
    REQUIRE(server.Start("127.0.0.1", 0, kToken).ok());
    REQUIRE(server.port() != 0);
    addr = "127.0.0.1:" + std::to_string(server.port());
  }
  void Connect(KvClient* c) { REQUIRE(c->Connect(addr, 2000, kToken).ok()); }
};
}  // namespace

TEST_CASE_FIXTURE(Fixture, "SET then GET, binary values, overwrite") {
  KvClient c;
  Connect(&c);
  std::string bin("a\0b\xff", 4), v;
  CHECK(c.Set("k", bin) == KvStatus::kOk);
  CHECK(c.Get("k", 0, &v) == KvStatus::kOk);
  CHECK(v == bin);
  CHECK(c.Set("k", "") == KvStatus::kOk);
  CHECK(c.Get("k", 0, &v) == KvStatus::kOk);
  CHECK(v.empty());
}

TEST_CASE_FIXTURE(Fixture, "GET of a missing key times out") {
  KvClient c;
  Connect(&c);
  std::string v = "untouched";
  auto t0 = std::chrono::steady_clock::now();
  CHECK(c.Get("missing", 100, &v) == KvStatus::kTimeout);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(100));
  // The connection is still usable afterwards.
  CHECK(c.Set("x", "1") == KvStatus::kOk);
}

TEST_CASE_FIXTURE(Fixture, "a blocked GET is woken by a SET from another client") {
  KvClient waiter, setter;
  Connect(&waiter);
  Connect(&setter);
  std::string v;
  KvStatus st = KvStatus::kIoError;
  std::thread t([&] { st = waiter.Get("id", 10000, &v); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(setter.Set("id", "hello") == KvStatus::kOk);
  t.join();
  CHECK(st == KvStatus::kOk);
  CHECK(v == "hello");
}

TEST_CASE_FIXTURE(Fixture, "ADD counts, and refuses non-numbers") {
  KvClient c;
  Connect(&c);
  int64_t r = 0;
  CHECK(c.Add("n", 5, &r) == KvStatus::kOk);
  CHECK(r == 5);
  CHECK(c.Add("n", -7, &r) == KvStatus::kOk);
  CHECK(r == -2);
  std::string v;
  CHECK(c.Get("n", 0, &v) == KvStatus::kOk);
  CHECK(v == "-2");
  CHECK(c.Set("s", "abc") == KvStatus::kOk);
  CHECK(c.Add("s", 1, &r) == KvStatus::kNotANumber);
}

TEST_CASE_FIXTURE(Fixture, "ADD from many threads is atomic") {
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; ++i) {
    ts.emplace_back([&] {
      KvClient c;
      std::string err;
      REQUIRE(c.Connect(addr, 2000, kToken).ok());
      for (int j = 0; j < 50; ++j) REQUIRE(c.Add("ctr", 1, nullptr) == KvStatus::kOk);
    });
  }
  for (auto& t : ts) t.join();
  KvClient c;
  Connect(&c);
  int64_t r = 0;
  CHECK(c.Add("ctr", 0, &r) == KvStatus::kOk);
  CHECK(r == 400);
}

TEST_CASE_FIXTURE(Fixture, "bounds: key and value sizes, malformed requests") {
  KvClient c;
  Connect(&c);
  std::string v;
  CHECK(c.Set(std::string(kKvMaxKey, 'k'), "ok") == KvStatus::kOk);
  CHECK(c.Set("big", std::string(kKvMaxValue, 'v')) == KvStatus::kOk);
  CHECK(c.Get("big", 0, &v) == KvStatus::kOk);
  CHECK(v.size() == kKvMaxValue);
  // Over the bounds: an error status, then the server drops the connection.
  CHECK(c.Set(std::string(kKvMaxKey + 1, 'k'), "x") == KvStatus::kTooLarge);
  CHECK(c.Set("x", "1") == KvStatus::kIoError);
  KvClient d;
  Connect(&d);
  CHECK(d.Set("big2", std::string(kKvMaxValue + 1, 'v')) == KvStatus::kTooLarge);
  KvClient e;
  Connect(&e);
  CHECK(e.Set("", "x") == KvStatus::kBadRequest);
  KvClient f;
  Connect(&f);
  CHECK(f.Request(99, "k", "", &v) == KvStatus::kBadRequest);    // unknown op
  CHECK(f.Request(2, "k", "123", &v) == KvStatus::kBadRequest);  // GET without a 4-byte timeout
  CHECK(f.Request(3, "k", "1", &v) == KvStatus::kBadRequest);    // ADD without an 8-byte delta
  CHECK(f.Set("still", "alive") == KvStatus::kOk);
}

TEST_CASE_FIXTURE(Fixture, "bounds: the number of keys") {
  KvClient c;
  Connect(&c);
  for (size_t i = 0; i < kKvMaxKeys; ++i) REQUIRE(c.Set("k" + std::to_string(i), "") == KvStatus::kOk);
  CHECK(c.Set("one-more", "") == KvStatus::kFull);
  CHECK(c.Add("one-more", 1, nullptr) == KvStatus::kFull);
  CHECK(c.Set("k0", "replacing is fine") == KvStatus::kOk);
}

TEST_CASE("Stop wakes a blocked GET") {
  KvServer s;
  std::string err;
  REQUIRE(s.Start("127.0.0.1", 0, kToken).ok());
  KvClient c;
  REQUIRE(c.Connect("127.0.0.1:" + std::to_string(s.port()), 2000, kToken).ok());
  KvStatus st = KvStatus::kOk;
  std::thread t([&] {
    std::string v;
    st = c.Get("never", 60000, &v);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t0 = std::chrono::steady_clock::now();
  s.Stop();
  t.join();
  CHECK(st != KvStatus::kOk);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
}

TEST_CASE("Connect to a closed port fails after the timeout") {
  KvServer s;
  std::string err;
  REQUIRE(s.Start("127.0.0.1", 0, kToken).ok());
  std::string addr = "127.0.0.1:" + std::to_string(s.port());
  s.Stop();
  KvClient c;
  const trainmover::base::Status st = c.Connect(addr, 100, kToken);
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("cannot connect") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "closed connections are reaped: more than the connection bound, one after another") {
  for (size_t i = 0; i < kKvMaxConnections + 100; ++i) {
    KvClient c;
    Connect(&c);
    REQUIRE(c.Add("conns", 1, nullptr) == KvStatus::kOk);
  }
  KvClient c;
  Connect(&c);
  int64_t n = 0;
  CHECK(c.Add("conns", 0, &n) == KvStatus::kOk);
  CHECK(n == static_cast<int64_t>(kKvMaxConnections + 100));
}

TEST_CASE_FIXTURE(Fixture, "a wrong token is refused, a right one served") {
  KvClient bad;
  const trainmover::base::Status st = bad.Connect(addr, 2000, "not-the-token-0123456789");
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("refused the token") != std::string::npos);
  CHECK(bad.Set("k", "v") == KvStatus::kIoError);
  CHECK_FALSE(bad.Connect(addr, 2000, "short").ok());  // below kKvMinTokenBytes: not even tried
  KvClient good;
  Connect(&good);
  CHECK(good.Set("k", "v") == KvStatus::kOk);
}

TEST_CASE("the server refuses to start without a token of the minimum length") {
  KvServer s;
  const trainmover::base::Status st = s.Start("127.0.0.1", 0, "short");
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("token") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "a client that never authenticates is dropped after the deadline") {
  // A raw TCP connection that reads the hello and then says nothing.
  std::string host;
  uint16_t port = 0;
  REQUIRE(trainmover::base::ParseHostPort(addr, &host, &port).ok());
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &sa.sin_addr);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
  char buf[64];
  const auto t0 = std::chrono::steady_clock::now();
  ssize_t total = 0, r;
  while ((r = read(fd, buf, sizeof(buf))) > 0) total += r;  // hello + nonce, then EOF when dropped
  const auto waited = std::chrono::steady_clock::now() - t0;
  close(fd);
  CHECK(total == 4 + static_cast<ssize_t>(kKvNonceBytes));
  CHECK(waited >= std::chrono::milliseconds(kKvAuthTimeoutMs - 500));
  CHECK(waited < std::chrono::milliseconds(kKvAuthTimeoutMs + 5000));
}

TEST_CASE_FIXTURE(Fixture, "ADD past the int64 range is refused, the value kept") {
  KvClient c;
  Connect(&c);
  int64_t v = 0;
  REQUIRE(c.Add("big", 999999999999999999, &v) == KvStatus::kOk);
  CHECK(c.Add("big", 1, &v) == KvStatus::kOverflow);
  CHECK(c.Add("big", INT64_MAX, &v) == KvStatus::kOverflow);
  std::string s;
  REQUIRE(c.Get("big", 0, &s) == KvStatus::kOk);
  CHECK(s == "999999999999999999");
}
