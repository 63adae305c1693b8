// SPDX-License-Identifier: Apache-2.0
// Units of lib/transfer: the checksum, the descriptor codec, argument checks, and a server/client round
// trip inside one process (two UCX contexts, threads).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/cudart.h"
#include "test_pattern.h"
#include "test_support.h"
#include "transfer/checksum.h"
#include "transfer/descriptor.h"
#include "transfer/lanes.h"
#include "transfer/pages.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;
using transfer_test::Fill;

TEST_CASE("checksum is defined by the bytes, not by threads or block boundaries") {
  std::vector<unsigned char> buf(3 * tt::kChecksumBlock + 12345);
  Fill(&buf, 7);
  uint64_t one = tt::Checksum(buf.data(), buf.size(), 1);
  CHECK(tt::Checksum(buf.data(), buf.size(), 2) == one);
  CHECK(tt::Checksum(buf.data(), buf.size(), 4) == one);
  // Manual folding of block hashes gives the same.
  std::vector<uint64_t> blocks;
  for (size_t off = 0; off < buf.size(); off += tt::kChecksumBlock) {
    blocks.push_back(tt::BlockHash(buf.data() + off, std::min(tt::kChecksumBlock, buf.size() - off)));
  }
  CHECK(tt::FoldBlockHashes(blocks, buf.size()) == one);
}

TEST_CASE("checksum changes with any single bit, with length, and with order") {
  std::vector<unsigned char> buf(4096 + 7);
  Fill(&buf, 3);
  uint64_t base = tt::Checksum(buf.data(), buf.size());
  int same = 0;
  for (size_t bit = 0; bit < buf.size() * 8; bit += 13) {
    buf[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
    same += tt::Checksum(buf.data(), buf.size()) == base;
    buf[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
  }
  CHECK(same == 0);
  CHECK(tt::Checksum(buf.data(), buf.size() - 1) != base);
  std::vector<unsigned char> zeros1(1), zeros2(2);
  CHECK(tt::Checksum(zeros1.data(), 1) != tt::Checksum(zeros2.data(), 2));
  CHECK(tt::Checksum(nullptr, 0) == tt::Checksum(nullptr, 0));
  // Swapping two blocks changes the checksum.
  std::vector<unsigned char> big(2 * tt::kChecksumBlock);
  Fill(&big, 11);
  uint64_t a = tt::Checksum(big.data(), big.size());
  std::swap_ranges(big.begin(), big.begin() + tt::kChecksumBlock, big.begin() + tt::kChecksumBlock);
  CHECK(tt::Checksum(big.data(), big.size()) != a);
}

TEST_CASE("descriptor round trip and rejection of damaged blobs") {
  tt::detail::DescriptorData d;
  d.worker_address = {1, 2, 3, 4, 5};
  d.control.address = 0x1000;
  d.control.size = tt::detail::ControlBytes(2);
  d.control.rkey = {9, 9};
  d.regions.push_back({"weights", 0x2000, 100, 0, {7, 7, 7}});
  d.regions.push_back({"empty", 0, 0, 0, {}});
  std::vector<uint8_t> blob;
  REQUIRE(tt::detail::EncodeDescriptor(d, "k", &blob).ok());
  tt::detail::DescriptorData back;
  REQUIRE(tt::detail::DecodeDescriptor(blob, "k", &back).ok());
  CHECK(back.worker_address == d.worker_address);
  REQUIRE(back.regions.size() == 2);
  CHECK(back.regions[0].name == "weights");
  CHECK(back.regions[0].address == 0x2000);
  CHECK(back.regions[0].size == 100);
  CHECK(back.regions[0].rkey == d.regions[0].rkey);
  CHECK(back.regions[1].size == 0);
  // Every truncation is refused, and so are trailing bytes and a bad magic: by the MAC, and by the body's
  // own checks when the MAC is made again over the damaged body.
  const size_t body = blob.size() - tt::detail::kMacBytes;
  for (size_t n = 0; n < blob.size(); ++n) {
    tt::detail::DescriptorData x;
    CHECK(tt::detail::DecodeDescriptor(std::span(blob.data(), n), "k", &x).code() == tt::Code::kBadDescriptor);
    if (n < body) {
      CHECK(tt::detail::DecodeDescriptorBody(std::span(blob.data(), n), &x).code() == tt::Code::kBadDescriptor);
    }
  }
  auto longer = blob;
  longer.push_back(0);
  tt::detail::DescriptorData x;
  CHECK(tt::detail::DecodeDescriptor(longer, "k", &x).code() == tt::Code::kBadDescriptor);
  auto bad = blob;
  bad[0] ^= 1;
  CHECK(tt::detail::DecodeDescriptor(bad, "k", &x).code() == tt::Code::kBadDescriptor);
  CHECK(tt::detail::DecodeDescriptorBody(std::span(bad.data(), body), &x).code() == tt::Code::kBadDescriptor);
}

TEST_CASE("a descriptor changed anywhere, or made with another key, is refused before it is parsed") {
  tt::detail::DescriptorData d;
  d.worker_address = {1, 2, 3, 4, 5};
  d.host.pid = 4242;
  d.control.address = 0x1000;
  d.control.size = tt::detail::ControlBytes(1);
  d.control.rkey = {9, 9};
  d.regions.push_back({"weights", 0x2000, 100, 0, {7, 7, 7}});
  std::vector<uint8_t> blob;
  REQUIRE(tt::detail::EncodeDescriptor(d, "job token", &blob).ok());
  tt::detail::DescriptorData x;
  REQUIRE(tt::detail::DecodeDescriptor(blob, "job token", &x).ok());
  CHECK(x.host.pid == 4242);
  tt::Status s = tt::detail::DecodeDescriptor(blob, "another job", &x);
  CHECK(s.code() == tt::Code::kBadDescriptor);
  CHECK(s.message().find("MAC") != std::string::npos);
  CHECK(tt::detail::DecodeDescriptor(blob, "", &x).code() == tt::Code::kBadDescriptor);
  int refused = 0;
  for (size_t i = 0; i < blob.size(); ++i) {
    for (int bit : {0, 7}) {
      auto t = blob;
      t[i] ^= static_cast<uint8_t>(1u << bit);
      refused += tt::detail::DecodeDescriptor(t, "job token", &x).code() == tt::Code::kBadDescriptor;
    }
  }
  CHECK(refused == static_cast<int>(2 * blob.size()));
}

TEST_CASE("bad regions and options are refused") {
  std::unique_ptr<tt::StateServer> server;
  REQUIRE(tt::StateServer::Create({}, &server).ok());
  int v = 0;
  CHECK(server->Expose({{"", &v, 4}}).code() == tt::Code::kInvalidArgument);
  CHECK(server->Expose({{"a", nullptr, 4}}).code() == tt::Code::kInvalidArgument);
  CHECK(server->Expose({{"a", &v, 4}, {"a", &v, 4}}).code() == tt::Code::kInvalidArgument);
  CHECK(server->Seal().code() == tt::Code::kState);
  REQUIRE(server->Expose({{"a", &v, 4}}).ok());
  CHECK(server->Expose({{"a", &v, 4}}).code() == tt::Code::kState);
  std::unique_ptr<tt::StateClient> client;
  REQUIRE(tt::StateClient::Create({}, &client).ok());
  tt::FetchResult r;
  tt::FetchOptions o;
  o.chunk_bytes = 0;
  CHECK(client->Fetch(server->Descriptor(), {{"a", &v, 4}}, o, &r).code() == tt::Code::kInvalidArgument);
  std::vector<uint8_t> junk = {1, 2, 3};
  CHECK(client->Fetch(junk, {{"a", &v, 4}}, {}, &r).code() == tt::Code::kBadDescriptor);
}

TEST_CASE("round trip between two contexts in one process, chunked, bit-exact, verified") {
  const std::vector<size_t> sizes = {0, 1, 7, 4096, 1000003, 5 * tt::kChecksumBlock + 3};
  std::vector<std::vector<unsigned char>> src(sizes.size()), dst(sizes.size());
  std::vector<tt::Region> exposed, local;
  for (size_t i = 0; i < sizes.size(); ++i) {
    src[i].resize(sizes[i]);
    dst[i].assign(sizes[i], 0xEE);
    Fill(&src[i], i + 1);
    std::string name = "r" + std::to_string(i);
    exposed.push_back({name, src[i].data(), sizes[i]});
    local.insert(local.begin(), {name, dst[i].data(), sizes[i]});  // reverse order: matched by name
  }
  std::unique_ptr<tt::StateServer> server;
  REQUIRE(tt::StateServer::Create({}, &server).ok());
  REQUIRE(server->Expose(exposed).ok());
  std::vector<uint64_t> sums;
  REQUIRE(server->Seal(&sums).ok());
  REQUIRE(sums.size() == sizes.size());
  std::unique_ptr<tt::StateClient> client;
  REQUIRE(tt::StateClient::Create({}, &client).ok());
  tt::FetchOptions o;
  o.chunk_bytes = 65536 + 3;  // odd chunk size: chunks straddle checksum blocks
  o.max_outstanding = 8;
  uint64_t last = 0, calls = 0;
  o.progress = [&](uint64_t done, uint64_t total) {
    CHECK(done > last);
    CHECK(done <= total);
    last = done;
    ++calls;
  };
  tt::FetchResult r;
  tt::Status s = client->Fetch(server->Descriptor(), local, o, &r);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  CHECK(r.verified);
  uint64_t total = 0;
  for (size_t n : sizes) total += n;
  CHECK(r.bytes == total);
  CHECK(last == total);
  CHECK(calls >= 1);
  for (size_t i = 0; i < sizes.size(); ++i) CHECK(src[i] == dst[i]);
  // The checksums the client reports are in its own (reversed) order.
  for (size_t i = 0; i < sizes.size(); ++i) CHECK(r.checksums[sizes.size() - 1 - i] == sums[i]);
}

namespace {

// A server exposing `regions` and a client, both in this process (the setup most cases share).
struct Pair {
  std::unique_ptr<tt::StateServer> server;
  std::unique_ptr<tt::StateClient> client;
};

Pair Expose(const std::vector<tt::Region>& regions) {
  Pair p;
  REQUIRE(tt::StateServer::Create({}, &p.server).ok());
  REQUIRE(p.server->Expose(regions).ok());
  REQUIRE(tt::StateClient::Create({}, &p.client).ok());
  return p;
}

}  // namespace

TEST_CASE("name and size mismatches are refused before any read") {
  std::vector<unsigned char> a(100), b(200);
  auto [server, client] = Expose({{"a", a.data(), a.size()}, {"b", b.data(), b.size()}});
  tt::FetchResult r;
  std::vector<unsigned char> x(100), y(200), z(201);
  tt::Status s = client->Fetch(server->Descriptor(), {{"a", x.data(), 100}, {"b", z.data(), 201}}, {}, &r);
  CHECK(s.code() == tt::Code::kMismatch);
  CHECK(s.message().find("'b'") != std::string::npos);
  s = client->Fetch(server->Descriptor(), {{"a", x.data(), 100}}, {}, &r);
  CHECK(s.code() == tt::Code::kMismatch);
  s = client->Fetch(server->Descriptor(), {{"a", x.data(), 100}, {"c", y.data(), 200}}, {}, &r);
  CHECK(s.code() == tt::Code::kMismatch);
  s = client->Fetch(server->Descriptor(), {{"a", x.data(), 100}, {"b", y.data(), 200}, {"c", y.data(), 1}}, {}, &r);
  CHECK(s.code() == tt::Code::kMismatch);
}

TEST_CASE("an unsealed server makes the fetch time out instead of hanging; expected checksums override") {
  std::vector<unsigned char> a(12345), x(12345);
  Fill(&a, 5);
  std::unique_ptr<tt::StateServer> server;
  REQUIRE(tt::StateServer::Create({}, &server).ok());
  REQUIRE(server->Expose({{"a", a.data(), a.size()}}).ok());
  std::unique_ptr<tt::StateClient> client;
  REQUIRE(tt::StateClient::Create({}, &client).ok());
  tt::FetchOptions o;
  o.timeout_ms = 300;
  tt::FetchResult r;
  CHECK(client->Fetch(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &r).code() == tt::Code::kTimeout);
  o.expected_checksums = {tt::Checksum(a.data(), a.size())};
  tt::Status s = client->Fetch(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(a == x);
  o.expected_checksums = {42};
  CHECK(client->Fetch(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &r).code() == tt::Code::kChecksumMismatch);
}

// The migration's order at the switch point: the joiner starts reading before the leaver seals (hashes), and
// compares once both hashes are ready. Waits for the client's progress callback to report every byte read
// before sealing, so the overlap is certain, not timed. A change between the read and the seal (which a
// frozen leaver never makes) must still be caught: the leaver's hash covers what it holds at Seal.
TEST_CASE("the fetch may start before Seal: it reads, then waits for the checksums; mismatch still detected") {
  for (bool corrupt : {false, true}) {
    CAPTURE(corrupt);
    std::vector<unsigned char> a(3 * tt::kChecksumBlock + 17), x(a.size(), 0);
    Fill(&a, 9);
    std::unique_ptr<tt::StateServer> server;
    REQUIRE(tt::StateServer::Create({}, &server).ok());
    REQUIRE(server->Expose({{"a", a.data(), a.size()}}).ok());
    std::unique_ptr<tt::StateClient> client;
    REQUIRE(tt::StateClient::Create({}, &client).ok());
    std::atomic<bool> read_all{false};
    tt::FetchOptions o;
    o.timeout_ms = 20000;
    o.progress = [&](uint64_t done, uint64_t total) {
      if (done == total) read_all = true;
    };
    tt::FetchResult r;
    tt::Status s;
    std::thread joiner([&] { s = client->Fetch(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &r); });
    while (!read_all) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (corrupt) a[tt::kChecksumBlock + 5] ^= 0x10;
    std::vector<uint64_t> sums;
    REQUIRE(server->Seal(&sums).ok());
    joiner.join();
    if (corrupt) {
      CHECK(s.code() == tt::Code::kChecksumMismatch);
      CHECK_FALSE(r.verified);
    } else {
      CHECK_MESSAGE(s.ok(), s.ToString());
      CHECK(r.verified);
      CHECK(a == x);
      CHECK(r.checksums == sums);
    }
  }
}

TEST_CASE("the crc32 instruction and the table give the same block hash, at every length and alignment") {
  std::vector<unsigned char> buf(tt::kChecksumBlock + 64);
  Fill(&buf, 21);
  MESSAGE("block hash: " << std::string(tt::BlockHashImplementation()));
  // From 1,024 bytes on: the carry-less-multiply path (where the CPU has AVX-512 VPCLMULQDQ), its hand-over
  // to the crc32 instruction and the tail, at every remainder.
  for (size_t len = 0; len <= 2200; len += len < 200 || (len > 1000 && len < 1100) ? 1 : 7) {
    for (size_t align : {0, 1, 3, 8}) {
      CHECK(tt::BlockHash(buf.data() + align, len) == tt::detail::BlockHashPortable(buf.data() + align, len));
    }
  }
  for (size_t len : {size_t{4095}, size_t{65536}, tt::kChecksumBlock - 1, tt::kChecksumBlock}) {
    CHECK(tt::BlockHash(buf.data() + 5, len) == tt::detail::BlockHashPortable(buf.data() + 5, len));
  }
  // Lanes are not interchangeable: swapping two words of a stripe changes the hash.
  std::vector<unsigned char> s(64);
  Fill(&s, 4);
  uint64_t h = tt::BlockHash(s.data(), s.size());
  std::swap_ranges(s.begin(), s.begin() + 8, s.begin() + 8);
  CHECK(tt::BlockHash(s.data(), s.size()) != h);
}

namespace {

std::vector<uint8_t> Encode(const tt::detail::DescriptorData& d) {
  std::vector<uint8_t> blob;
  REQUIRE(tt::detail::EncodeDescriptor(d, "", &blob).ok());
  return blob;
}

tt::Status DecodeBody(const std::vector<uint8_t>& blob, tt::detail::DescriptorData* x) {
  return tt::detail::DecodeDescriptorBody(std::span(blob.data(), blob.size() - tt::detail::kMacBytes), x);
}

tt::detail::DescriptorData TwoRegions() {
  tt::detail::DescriptorData d;
  d.worker_address = {1, 2, 3};
  d.control.address = 0x1000;
  d.control.size = tt::detail::ControlBytes(2);
  d.control.rkey = {9};
  d.regions.push_back({"a", 0x2000, 100, 0, {7}});
  d.regions.push_back({"b", 0x3000, 100, 0, {7}});
  return d;
}

}  // namespace

TEST_CASE("the descriptor decoder refuses what the fuzzer's invariants forbid") {
  tt::detail::DescriptorData x;
  REQUIRE(tt::detail::DecodeDescriptor(Encode(TwoRegions()), "", &x).ok());
  auto d = TwoRegions();
  d.regions[1].name = "a";  // the encoder does not police names; the decoder must
  tt::Status s = tt::detail::DecodeDescriptor(Encode(d), "", &x);
  CHECK(s.code() == tt::Code::kBadDescriptor);
  CHECK(s.message().find("twice") != std::string::npos);
  d = TwoRegions();
  d.regions[0].address = ~uint64_t{0} - 10;  // + 100 wraps
  CHECK(tt::detail::DecodeDescriptor(Encode(d), "", &x).code() == tt::Code::kBadDescriptor);
  d = TwoRegions();
  d.control.rkey.clear();
  CHECK(tt::detail::DecodeDescriptor(Encode(d), "", &x).code() == tt::Code::kBadDescriptor);
  // A region count the remaining bytes cannot hold is refused before anything is allocated for it.
  // (the body decoder alone from here: these are changes the MAC would refuse first)
  auto blob = Encode(TwoRegions());
  REQUIRE(DecodeBody(blob, &x).ok());
  // two regions of 24 bytes each follow the u32 count, then the MAC
  size_t count_at = blob.size() - tt::detail::kMacBytes - 2 * 24 - 4;
  REQUIRE(blob[count_at] == 2);
  blob[count_at] = 0xFF;
  blob[count_at + 1] = 0xFF;
  s = DecodeBody(blob, &x);
  CHECK(s.code() == tt::Code::kBadDescriptor);
  // The reserved header field and the version are checked.
  blob = Encode(TwoRegions());
  blob[6] = 1;
  CHECK(DecodeBody(blob, &x).code() == tt::Code::kBadDescriptor);
  blob = Encode(TwoRegions());
  blob[4] = 3;  // version 3 had no MACs
  CHECK(DecodeBody(blob, &x).code() == tt::Code::kBadDescriptor);
}

TEST_CASE("lanes: every task runs once, each lane number once per job, jobs one after another") {
  tt::detail::LanePool pool(3, "test-lane");
  CHECK(pool.lanes() == 4);
  for (int job = 0; job < 50; ++job) {
    std::vector<std::atomic<int>> done(1000);
    std::vector<std::atomic<int>> lane_seen(4);
    std::atomic<size_t> next{0};
    pool.Run(
        [&](int lane) {
          lane_seen[lane]++;
          for (size_t t; (t = next.fetch_add(1)) < done.size();) done[t]++;
        },
        job % 5);  // 0 and 1 run on the caller alone; more than lanes() is capped
    for (auto& d : done) CHECK(d.load() == 1);
    for (auto& l : lane_seen) CHECK(l.load() <= 1);
    CHECK(lane_seen[0].load() == 1);
  }
}

// The migration's order: Prepare (connection, rkeys, registrations, lanes) in the build phase, before the
// leaver has sealed; Read at the switch. Read twice (a second Read re-reads and re-verifies), on both paths
// in one process (cma is eligible: same process, host memory).
TEST_CASE("prepare before the seal, read after it; a prepared fetch reads again; both paths") {
  for (tt::FetchPath path : {tt::FetchPath::kUcx, tt::FetchPath::kCma}) {
    CAPTURE(tt::FetchPathName(path));
    std::vector<unsigned char> a(2 * tt::kChecksumBlock + 999), b(77), xa(a.size(), 0), xb(b.size(), 0);
    Fill(&a, 12);
    Fill(&b, 13);
    auto [server, client] = Expose({{"a", a.data(), a.size()}, {"b", b.data(), b.size()}});
    tt::FetchOptions o;
    o.path = path;
    o.timeout_ms = 20000;
    std::unique_ptr<tt::PreparedFetch> prepared;
    tt::Status s =
        client->Prepare(server->Descriptor(), {{"b", xb.data(), xb.size()}, {"a", xa.data(), xa.size()}}, o, &prepared);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    CHECK(prepared->path() == path);
    CHECK(prepared->bytes() == a.size() + b.size());
    std::vector<uint64_t> sums;
    REQUIRE(server->Seal(&sums).ok());
    for (int round = 0; round < 2; ++round) {
      std::fill(xa.begin(), xa.end(), 0);
      std::fill(xb.begin(), xb.end(), 0);
      tt::FetchResult r;
      s = prepared->Read(o, &r);
      REQUIRE_MESSAGE(s.ok(), s.ToString());
      CHECK(r.verified);
      CHECK(r.path == path);
      CHECK(r.bytes == a.size() + b.size());
      CHECK(xa == a);
      CHECK(xb == b);
      CHECK(r.checksums == std::vector<uint64_t>{sums[1], sums[0]});
    }
    // A byte the leaver changes after sealing (a frozen leaver never does) is caught by the next Read.
    a[tt::kChecksumBlock + 17] ^= 0x01;
    tt::FetchResult r;
    s = prepared->Read(o, &r);
    CHECK(s.code() == tt::Code::kChecksumMismatch);
    CHECK(s.message().find("'a'") != std::string::npos);
    CHECK_FALSE(r.verified);
    prepared.reset();
  }
}

TEST_CASE("a warm Prepare reads the bytes of that moment; Read later fetches those at the seal, bit-exact") {
  for (tt::FetchPath path : {tt::FetchPath::kUcx, tt::FetchPath::kCma}) {
    CAPTURE(tt::FetchPathName(path));
    std::vector<unsigned char> a(3 * tt::kChecksumBlock + 5), xa(a.size(), 0);
    Fill(&a, 21);
    auto [server, client] = Expose({{"a", a.data(), a.size()}});
    tt::FetchOptions o;
    o.path = path;
    o.warm = true;
    o.timeout_ms = 20000;
    std::unique_ptr<tt::PreparedFetch> prepared;
    tt::Status s = client->Prepare(server->Descriptor(), {{"a", xa.data(), xa.size()}}, o, &prepared);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    CHECK(xa == (path == tt::FetchPath::kCma ? a : std::vector<unsigned char>(a.size(), 0)));  // UCX: not warmed
    Fill(&a, 22);  // the leaver trains on until S
    std::vector<uint64_t> sums;
    REQUIRE(server->Seal(&sums).ok());
    tt::FetchResult r;
    s = prepared->Read(o, &r);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    CHECK(r.verified);
    CHECK(xa == a);
  }
}

TEST_CASE("Prepare refuses what Fetch refuses, before connecting") {
  std::vector<unsigned char> a(100), x(101);
  auto [server, client] = Expose({{"a", a.data(), a.size()}});
  std::unique_ptr<tt::PreparedFetch> prepared;
  CHECK(client->Prepare(server->Descriptor(), {{"a", x.data(), x.size()}}, {}, &prepared).code() ==
        tt::Code::kMismatch);
  CHECK(prepared == nullptr);
  tt::FetchOptions o;
  o.max_outstanding = 0;
  CHECK(client->Prepare(server->Descriptor(), {{"a", x.data(), 100}}, o, &prepared).code() ==
        tt::Code::kInvalidArgument);
  std::vector<uint8_t> junk = {1, 2, 3};
  CHECK(client->Prepare(junk, {{"a", x.data(), 100}}, {}, &prepared).code() == tt::Code::kBadDescriptor);
  REQUIRE(client->Prepare(server->Descriptor(), {{"a", x.data(), 100}}, {}, &prepared).ok());
  tt::FetchResult r;
  o = {};
  o.expected_checksums = {1, 2};
  CHECK(prepared->Read(o, &r).code() == tt::Code::kInvalidArgument);
}

TEST_CASE("the client initialises UCX only for the UCX path: bad transports surface at Prepare, not Create") {
  std::vector<unsigned char> a(1000), x(1000);
  Fill(&a, 31);
  auto [server, unused] = Expose({{"a", a.data(), a.size()}});
  REQUIRE(server->Seal().ok());
  tt::ClientOptions co;
  co.transports = "no-such-transport-list,,";
  std::unique_ptr<tt::StateClient> client;
  REQUIRE(tt::StateClient::Create(co, &client).ok());
  std::unique_ptr<tt::PreparedFetch> prepared;
  tt::FetchOptions o;
  o.path = tt::FetchPath::kCma;  // needs no UCX: works with any transports
  tt::Status s = client->Prepare(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &prepared);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  tt::FetchResult r;
  s = prepared->Read(o, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(a == x);
  prepared.reset();
  o.path = tt::FetchPath::kUcx;
  s = client->Prepare(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &prepared);
  CHECK_FALSE(s.ok());
  MESSAGE("UCX path with bad transports: " << s.ToString());
}

TEST_CASE("a device region is refused when UCX cannot reach device memory and no CUDA runtime can stage it") {
  if (trainmover::base::CudartIfLoaded() != nullptr || transfer_test::UcxSupportsCuda() == 1) {
    MESSAGE("skipped: a CUDA runtime is loaded or UCX here supports CUDA (the refusal cannot happen)");
    return;
  }
  std::vector<unsigned char> a(1000), x(1000);
  auto [server, client] = Expose({{"a", a.data(), a.size()}});
  REQUIRE(server->Seal().ok());
  std::unique_ptr<tt::PreparedFetch> prepared;
  for (tt::FetchPath path : {tt::FetchPath::kAuto, tt::FetchPath::kUcx}) {
    tt::FetchOptions o;
    o.path = path;
    // The pointer is host memory posing as device memory: Prepare must refuse before it touches a byte.
    tt::Status s =
        client->Prepare(server->Descriptor(), {{"a", x.data(), x.size(), tt::MemoryType::kCuda}}, o, &prepared);
    CHECK(s.code() == tt::Code::kUnsupported);
    CHECK_MESSAGE(s.message().find("region 'a' is device memory and neither UCX here supports CUDA nor is a CUDA "
                                   "runtime loaded to stage it") != std::string::npos,
                  s.ToString());
    CHECK(prepared == nullptr);
  }
  // Without a runtime a kAuto region cannot be device memory: it is read as host memory, as before.
  tt::FetchResult r;
  tt::Status s = client->Fetch(server->Descriptor(), {{"a", x.data(), x.size(), tt::MemoryType::kAuto}}, {}, &r);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(r.verified);
  CHECK(r.stage_seconds == 0);
  // The leaver's side refuses the same: its Expose, before it maps anything or touches a byte.
  std::unique_ptr<tt::StateServer> leaver;
  REQUIRE(tt::StateServer::Create({}, &leaver).ok());
  s = leaver->Expose({{"b", x.data(), x.size(), tt::MemoryType::kCuda}});
  CHECK(s.code() == tt::Code::kUnsupported);
  CHECK_MESSAGE(s.message().find("region 'b' is device memory and neither UCX here supports CUDA nor is a CUDA "
                                 "runtime loaded to stage it") != std::string::npos,
                s.ToString());
  CHECK(leaver->Descriptor().empty());
  CHECK(leaver->StagedBytes() == 0);
  CHECK(leaver->DeviceBytes() == 0);
  // Nothing was left behind: the same server exposes host regions afterwards.
  s = leaver->Expose({{"b", x.data(), x.size()}});
  CHECK_MESSAGE(s.ok(), s.ToString());
}

TEST_CASE("checksums written into the leaver's control block by another party fail their MAC") {
  // Over tcp UCX emulates RMA with active messages and does not enforce the read-only registration: a peer could
  // write the leaver's memory. Changing the state and the checksum to match it is still refused.
  for (tt::FetchPath path : {tt::FetchPath::kUcx, tt::FetchPath::kCma}) {
    CAPTURE(tt::FetchPathName(path));
    std::vector<unsigned char> a(3 * tt::kChecksumBlock + 5), x(a.size());
    Fill(&a, 77);
    std::unique_ptr<tt::StateServer> server;
    tt::ServerOptions so;
    so.auth_key = "the job's token";
    REQUIRE(tt::StateServer::Create(so, &server).ok());
    REQUIRE(server->Expose({{"a", a.data(), a.size()}}).ok());
    REQUIRE(server->Seal().ok());
    tt::detail::DescriptorData d;
    REQUIRE(tt::detail::DecodeDescriptor(server->Descriptor(), so.auth_key, &d).ok());
    auto* control = reinterpret_cast<uint64_t*>(d.control.address);
    a[100] ^= 0xFF;
    control[tt::detail::kControlHeaderWords] = tt::Checksum(a.data(), a.size());
    std::unique_ptr<tt::StateClient> client;
    tt::ClientOptions co;
    co.auth_key = so.auth_key;
    REQUIRE(tt::StateClient::Create(co, &client).ok());
    tt::FetchOptions o;
    o.path = path;
    o.leaver_pid = static_cast<uint32_t>(getpid());
    tt::FetchResult r;
    tt::Status s = client->Fetch(server->Descriptor(), {{"a", x.data(), x.size()}}, o, &r);
    CHECK(s.code() == tt::Code::kChecksumMismatch);
    CHECK(s.message().find("MAC") != std::string::npos);
    CHECK_FALSE(r.verified);
  }
}

// The AnonHugePages of the mapping that holds p, in kB (/proc/self/smaps), or -1.
static long AnonHugeKb(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const auto a = reinterpret_cast<uintptr_t>(p);
  bool in = false;
  for (std::string line; std::getline(f, line);) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (line.find('-') != std::string::npos && (head >> std::hex >> lo >> dash >> hi) && dash == '-' &&
        line.find(':') > line.find(' ')) {
      in = lo <= a && a < hi;
      continue;
    }
    if (in && line.rfind("AnonHugePages:", 0) == 0) return std::stol(line.substr(14));
  }
  return -1;
}

TEST_CASE("huge pages: a collapsed region keeps every byte, and is backed by huge pages where the kernel allows") {
  const size_t size = size_t{8} << 20;
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(m != MAP_FAILED);
  std::vector<unsigned char> want(size);
  Fill(&want, 11);
  std::memcpy(m, want.data(), size);
  // Off a page boundary, as a heap region is: only the 2 MiB-aligned interior is collapsed.
  tt::Region r{"w", static_cast<char*>(m) + 100, size - 200, tt::MemoryType::kHost};
  const uint64_t done = tt::detail::CollapseToHugePages(r);
  CHECK(std::memcmp(m, want.data(), size) == 0);
  CHECK(done % (uint64_t{2} << 20) == 0);
  CHECK(done <= size - (uint64_t{2} << 20));
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode((std::istreambuf_iterator<char>(thp)), std::istreambuf_iterator<char>());
  MESSAGE("THP: " << mode << "collapsed " << done << " bytes");
  if (done > 0) CHECK(AnonHugeKb(m) >= static_cast<long>(done / 1024));
  else MESSAGE("MADV_COLLAPSE refused here (kernel < 6.1, THP never, or no free huge page): nothing to check");
  // Device memory and small regions are left alone.
  CHECK(tt::detail::CollapseToHugePages({"d", m, size, tt::MemoryType::kCuda}) == 0);
  CHECK(tt::detail::CollapseToHugePages({"s", m, (size_t{2} << 20) - 1, tt::MemoryType::kHost}) == 0);
  munmap(m, size);
}
