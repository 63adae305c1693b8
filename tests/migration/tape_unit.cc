// SPDX-License-Identifier: Apache-2.0
// The sandbox tape (lib/sandbox/sandbox.h): matching by (communicator, position) and exact signature, the fallbacks
// (no entry, another signature, signature only, another size), the blob codec refusing damage, and replay in a
// sandboxed communicator of this process (the shim is linked into the test: its ncclX are the shim's).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/tape.h"
#include "core/shim_state.h"

namespace ts = trainmover::shim;

namespace {

ts::TapeSig Sig(ts::OpKind k, uint64_t count, int op = 0, int peer = -1) {
  ts::TapeSig s;
  s.kind = k;
  s.datatype = ncclFloat32;
  s.op = op;
  s.peer = peer;
  s.count = count;
  return s;
}

ts::TapeEntry Entry(uint64_t ci, uint32_t pos, ts::TapeSig sig, int nranks, uint8_t fill, bool output = true) {
  ts::TapeEntry e;
  e.comm_index = ci;
  e.position = pos;
  e.sig = sig;
  e.has_output = output;
  if (output) e.output.assign(ts::TapeOutputBytes(sig, nranks), fill);
  return e;
}

}  // namespace

TEST_CASE("tape: output sizes follow NCCL's signatures") {
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kAllReduce, 10), 4) == 40);
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kAllGather, 10), 4) == 160);
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kReduceScatter, 10), 4) == 40);
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kAlltoAll, 10), 4) == 160);
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kSend, 10, -1, 1), 4) == 0);
  CHECK(ts::TapeOutputBytes(Sig(ts::OpKind::kRecv, 10, -1, 1), 4) == 40);
}

TEST_CASE("tape: exact match serves the recorded bytes; any difference falls back with a reason") {
  ts::Tape t;
  t.Add(Entry(0, 0, Sig(ts::OpKind::kAllReduce, 8), 2, 0x11));
  t.Add(Entry(0, 1, Sig(ts::OpKind::kAllGather, 4), 2, 0x22));
  t.Add(Entry(3, 0, Sig(ts::OpKind::kBroadcast, 16, -1, 1), 2, 0x33));
  t.Add(Entry(3, 1, Sig(ts::OpKind::kAllReduce, 1 << 20), 2, 0, /*output=*/false));
  CHECK(t.size() == 4);
  CHECK(t.output_bytes() == 32 + 32 + 64);
  std::string why;
  const std::vector<uint8_t>* out = t.Match(0, 1, Sig(ts::OpKind::kAllGather, 4), 32, &why);
  REQUIRE(out != nullptr);
  CHECK(*out == std::vector<uint8_t>(32, 0x22));
  CHECK(t.Match(3, 0, Sig(ts::OpKind::kBroadcast, 16, -1, 1), 64, &why) != nullptr);
  // Fallbacks.
  CHECK(t.Match(1, 0, Sig(ts::OpKind::kAllReduce, 8), 32, &why) == nullptr);  // another communicator
  CHECK(why == "no entry");
  CHECK(t.Match(0, 2, Sig(ts::OpKind::kAllReduce, 8), 32, &why) == nullptr);  // past the iteration's ops
  CHECK(why == "no entry");
  CHECK(t.Match(0, 0, Sig(ts::OpKind::kAllReduce, 9), 36, &why) == nullptr);  // count
  CHECK(why.find("signature differs") == 0);
  CHECK(t.Match(0, 0, Sig(ts::OpKind::kAllReduce, 8, /*op=*/1), 32, &why) == nullptr);  // op
  CHECK(t.Match(0, 0, Sig(ts::OpKind::kReduce, 8), 32, &why) == nullptr);                // kind
  ts::TapeSig dt = Sig(ts::OpKind::kAllReduce, 8);
  dt.datatype = ncclInt32;
  CHECK(t.Match(0, 0, dt, 32, &why) == nullptr);  // datatype of the same size
  CHECK(t.Match(3, 0, Sig(ts::OpKind::kBroadcast, 16, -1, 0), 64, &why) == nullptr);  // root
  CHECK(t.Match(0, 0, Sig(ts::OpKind::kAllReduce, 8), 64, &why) == nullptr);  // size (other nranks)
  CHECK(why.find("output size differs") == 0);
  CHECK(t.Match(3, 1, Sig(ts::OpKind::kAllReduce, 1 << 20), 4 << 20, &why) == nullptr);  // over the cap
  CHECK(why.find("signature only") == 0);
  // A second entry at the same place replaces the first.
  t.Add(Entry(0, 0, Sig(ts::OpKind::kAllReduce, 8), 2, 0x44));
  CHECK(t.size() == 4);
  REQUIRE(t.Match(0, 0, Sig(ts::OpKind::kAllReduce, 8), 32, &why) != nullptr);
  CHECK((*t.Match(0, 0, Sig(ts::OpKind::kAllReduce, 8), 32, &why))[0] == 0x44);
}

TEST_CASE("tape: the blob round-trips; every truncation, damage and an over-cap blob are refused") {
  ts::Tape t;
  t.Add(Entry(2, 0, Sig(ts::OpKind::kAllReduce, 5), 3, 0x5a));
  t.Add(Entry(2, 1, Sig(ts::OpKind::kRecv, 7, -1, 2), 3, 0xa5));
  t.Add(Entry(7, 0, Sig(ts::OpKind::kAllGather, 1000), 3, 0, false));
  std::vector<uint8_t> blob = t.Encode();
  ts::Tape u;
  REQUIRE(u.Decode(blob, 1 << 20));
  CHECK(u.Encode() == blob);
  std::string why;
  REQUIRE(u.Match(2, 1, Sig(ts::OpKind::kRecv, 7, -1, 2), 28, &why) != nullptr);
  CHECK((*u.Match(2, 1, Sig(ts::OpKind::kRecv, 7, -1, 2), 28, &why))[27] == 0xa5);
  for (size_t n = 0; n < blob.size(); ++n) {
    ts::Tape v;
    CHECK_FALSE(v.Decode(std::vector<uint8_t>(blob.begin(), blob.begin() + static_cast<ptrdiff_t>(n)), 1 << 20));
  }
  std::vector<uint8_t> longer = blob;
  longer.push_back(0);
  CHECK_FALSE(u.Decode(longer, 1 << 20));
  std::vector<uint8_t> bad = blob;
  bad[0] ^= 1;
  CHECK_FALSE(u.Decode(bad, 1 << 20));
  CHECK(u.output_bytes() == 20 + 28);
  CHECK_FALSE(u.Decode(blob, 47));  // the outputs exceed the cap
  CHECK(u.Decode(blob, 48));
}

TEST_CASE("tape: a sandboxed iteration takes matching outputs from the tape, the rest from emulation") {
  using ts::OpKind;
  ts::SetProcessSandboxed(true);
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  ncclComm_t comm = nullptr;
  REQUIRE(ncclCommInitRank(&comm, 2, id, 1) == ncclSuccess);
  ts::SetProcessSandboxed(false);
  uint64_t index = 0;
  for (ts::VComm* v : ts::LiveVComms()) {
    if (reinterpret_cast<ncclComm_t>(v) == comm) index = v->lineage.index;
  }
  // The leaver's iteration: AllReduce(4 floats, sum) -> 7s; AllGather(2 floats) -> 1..4; Recv(3 floats) from 0.
  auto tape = std::make_shared<ts::Tape>();
  auto put = [&](uint32_t pos, ts::TapeSig sig, std::vector<float> out) {
    ts::TapeEntry e;
    e.comm_index = index;
    e.position = pos;
    e.sig = sig;
    e.has_output = true;
    e.output.resize(out.size() * 4);
    std::memcpy(e.output.data(), out.data(), e.output.size());
    tape->Add(std::move(e));
  };
  put(0, Sig(OpKind::kAllReduce, 4, ncclSum), {7, 7, 7, 7});
  put(1, Sig(OpKind::kAllGather, 2, -1), {1, 2, 3, 4});
  put(2, Sig(OpKind::kRecv, 3, -1, 0), {5, 6, 7});
  ts::InstallTape(tape);
  const ts::TapeCounters before = ts::TapeCount();
  std::vector<float> in = {1, 2, 3, 4}, out(4, 0), gath(4, 0), rv(3, -1);
  for (int iter = 0; iter < 2; ++iter) {
    CAPTURE(iter);
    ts::TapeIterationBegin();  // what the joiner's safe point does
    REQUIRE(ncclAllReduce(in.data(), out.data(), 4, ncclFloat32, ncclSum, comm, nullptr) == ncclSuccess);
    CHECK(out == std::vector<float>({7, 7, 7, 7}));  // the tape's, not 2*x
    REQUIRE(ncclAllGather(in.data(), gath.data(), 2, ncclFloat32, comm, nullptr) == ncclSuccess);
    CHECK(gath == std::vector<float>({1, 2, 3, 4}));
    REQUIRE(ncclRecv(rv.data(), 3, ncclFloat32, 0, comm, nullptr) == ncclSuccess);
    CHECK(rv == std::vector<float>({5, 6, 7}));
    // Past the tape's ops: emulated (sum of 2 equal contributions).
    REQUIRE(ncclAllReduce(in.data(), out.data(), 4, ncclFloat32, ncclSum, comm, nullptr) == ncclSuccess);
    CHECK(out == std::vector<float>({2, 4, 6, 8}));
  }
  ts::TapeCounters after = ts::TapeCount();
  CHECK(after.served - before.served == 6);
  CHECK(after.fallbacks - before.fallbacks == 2);
  // A different signature at a recorded position (max instead of sum): emulated, and the later ops keep their
  // positions, so they are still served.
  ts::TapeIterationBegin();
  REQUIRE(ncclAllReduce(in.data(), out.data(), 4, ncclFloat32, ncclMax, comm, nullptr) == ncclSuccess);
  CHECK(out == in);
  REQUIRE(ncclAllGather(in.data(), gath.data(), 2, ncclFloat32, comm, nullptr) == ncclSuccess);
  CHECK(gath == std::vector<float>({1, 2, 3, 4}));
  CHECK(ts::TapeCount().served - after.served == 1);
  CHECK(ts::TapeCount().fallbacks - after.fallbacks == 1);
  // Without a tape: plain emulation.
  ts::InstallTape(nullptr);
  ts::TapeIterationBegin();
  REQUIRE(ncclAllGather(in.data(), gath.data(), 2, ncclFloat32, comm, nullptr) == ncclSuccess);
  CHECK(gath == std::vector<float>({1, 2, 1, 2}));
  CHECK(ncclCommDestroy(comm) == ncclSuccess);
}

TEST_CASE("tape: recording one iteration: positions, outputs, the cap, groups, then replay of what was recorded") {
  using ts::OpKind;
  ts::SetProcessSandboxed(true);
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  ncclComm_t comm = nullptr;
  REQUIRE(ncclCommInitRank(&comm, 2, id, 0) == ncclSuccess);
  ts::SetProcessSandboxed(false);
  ts::VComm* v = reinterpret_cast<ts::VComm*>(comm);
  std::vector<float> in = {1, 2, 3, 4}, out(4, 0), wide(32, 1), big(64, 0);  // AllGather of 32: 32 in, 64 out
  // Before arming: nothing recorded, and TapeRecordEnd says so.
  REQUIRE(ncclAllReduce(in.data(), out.data(), 4, ncclFloat32, ncclSum, comm, nullptr) == ncclSuccess);
  CHECK_FALSE(ts::TapeRecording());
  CHECK(ts::TapeRecordEnd() == nullptr);
  ts::TapeRecordBegin(/*max_bytes=*/40);
  CHECK(ts::TapeRecording());
  // Each call below stands for a real operation: the hot path calls TapeRecordOp after it returned.
  REQUIRE(ncclAllReduce(in.data(), out.data(), 4, ncclFloat32, ncclSum, comm, nullptr) == ncclSuccess);
  out = {9, 9, 9, 9};  // "the real result"
  ts::TapeRecordOp(v, out.data(), nullptr);
  REQUIRE(ncclAllGather(wide.data(), big.data(), 32, ncclFloat32, comm, nullptr) == ncclSuccess);
  ts::TapeRecordOp(v, big.data(), nullptr);  // 256 bytes: over the cap, signature only
  ts::TapeGroupStart();
  REQUIRE(ncclRecv(out.data(), 4, ncclFloat32, 1, comm, nullptr) == ncclSuccess);
  ts::TapeRecordOp(v, out.data(), nullptr);
  out = {5, 6, 7, 8};  // what the group produces at its end
  ts::TapeGroupEnd(true);
  std::shared_ptr<ts::Tape> tape = ts::TapeRecordEnd();
  CHECK_FALSE(ts::TapeRecording());
  REQUIRE(tape != nullptr);
  CHECK(tape->size() == 3);
  CHECK(tape->output_bytes() == 32);
  std::string why;
  const uint64_t ci = v->lineage.index;
  const std::vector<uint8_t>* e0 = tape->Match(ci, 0, Sig(OpKind::kAllReduce, 4, ncclSum), 16, &why);
  REQUIRE(e0 != nullptr);
  CHECK(std::memcmp(e0->data(), std::vector<float>({9, 9, 9, 9}).data(), 16) == 0);
  CHECK(tape->Match(ci, 1, Sig(OpKind::kAllGather, 32, -1), 256, &why) == nullptr);
  CHECK(why.find("signature only") == 0);
  const std::vector<uint8_t>* e2 = tape->Match(ci, 2, Sig(OpKind::kRecv, 4, -1, 1), 16, &why);
  REQUIRE(e2 != nullptr);
  CHECK(std::memcmp(e2->data(), std::vector<float>({5, 6, 7, 8}).data(), 16) == 0);
  // Shipped (encoded, decoded) and replayed in a sandboxed iteration.
  auto shipped = std::make_shared<ts::Tape>();
  REQUIRE(shipped->Decode(tape->Encode(), 64 << 20));
  ts::InstallTape(shipped);
  ts::TapeIterationBegin();
  std::vector<float> o(4, 0);
  REQUIRE(ncclAllReduce(in.data(), o.data(), 4, ncclFloat32, ncclSum, comm, nullptr) == ncclSuccess);
  CHECK(o == std::vector<float>({9, 9, 9, 9}));
  REQUIRE(ncclAllGather(wide.data(), big.data(), 32, ncclFloat32, comm, nullptr) == ncclSuccess);  // emulated
  CHECK(big[32] == 1);
  REQUIRE(ncclRecv(o.data(), 4, ncclFloat32, 1, comm, nullptr) == ncclSuccess);
  CHECK(o == std::vector<float>({5, 6, 7, 8}));
  ts::InstallTape(nullptr);
  // A group ended without running leaves its operations signature-only.
  ts::TapeRecordBegin(1 << 20);
  ts::TapeGroupStart();
  REQUIRE(ncclRecv(out.data(), 4, ncclFloat32, 1, comm, nullptr) == ncclSuccess);
  ts::TapeRecordOp(v, out.data(), nullptr);
  ts::TapeGroupEnd(false);
  tape = ts::TapeRecordEnd();
  REQUIRE(tape != nullptr);
  CHECK(tape->size() == 1);
  CHECK(tape->output_bytes() == 0);
  CHECK(ncclCommDestroy(comm) == ncclSuccess);
}
