// SPDX-License-Identifier: Apache-2.0
// Unit tests of the control protocol: codec round trips, bounds, framing, handshake frames, the key schedule,
// sealed frames, the handshake, and rejection of replayed, reflected, out-of-order, forged, foreign and
// oversized frames.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "control/conn.h"
#include "control/messages.h"
#include "control/wire.h"

using namespace trainmover::control;

namespace {

template <typename M>
M RoundTrip(const M& in) {
  M out;
  auto p = EncodePayload(in);
  REQUIRE(DecodePayload(p, &out));
  return out;
}

// A connected pair of Connections (client, server) over a socketpair, handshake done.
struct Pair {
  std::unique_ptr<Connection> client, server;
  explicit Pair(const std::string& ctoken = "tok", const std::string& stoken = "tok") {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    client = std::make_unique<Connection>(sv[0], Connection::Side::kClient, ctoken);
    server = std::make_unique<Connection>(sv[1], Connection::Side::kServer, stoken);
    client->StartHello(kClientAgent);
    Pump();
  }
  // Moves bytes both ways a few times; returns the application frames the server got.
  std::vector<Frame> Pump() {
    std::vector<Frame> got;
    for (int i = 0; i < 4; ++i) {
      client->Flush();
      server->ReadSome();
      Frame f;
      while (server->Next(&f)) got.push_back(f);
      server->Flush();
      client->ReadSome();
      while (client->Next(&f)) {
      }
    }
    return got;
  }
  // Writes raw bytes from the client's socket.
  void Raw(const std::vector<uint8_t>& b) { REQUIRE(write(client->fd(), b.data(), b.size()) == (ssize_t)b.size()); }
};

}  // namespace

TEST_CASE("writer/reader: integers, strings, lists round-trip; truncation latches failure") {
  Writer w;
  w.U8(7);
  w.U16(0xbeef);
  w.U32(0xdeadbeef);
  w.U64(0x0123456789abcdefull);
  w.I64(-5);
  w.F64(0.25);
  w.Str("hello");
  w.StrList({"a", "", "ccc"});
  auto d = w.data();
  Reader r(d.data(), d.size());
  CHECK(r.U8() == 7);
  CHECK(r.U16() == 0xbeef);
  CHECK(r.U32() == 0xdeadbeef);
  CHECK(r.U64() == 0x0123456789abcdefull);
  CHECK(r.I64() == -5);
  CHECK(r.F64() == 0.25);
  CHECK(r.Str() == "hello");
  CHECK(r.StrList() == std::vector<std::string>{"a", "", "ccc"});
  CHECK(r.AtEnd());
  for (size_t cut = 0; cut < d.size(); ++cut) {
    Reader t(d.data(), cut);
    t.U8(), t.U16(), t.U32(), t.U64(), t.I64(), t.F64(), t.Str(), t.StrList();
    CHECK_FALSE(t.ok());
  }
}

TEST_CASE("reader bounds: long strings, huge counts and lists are refused without allocating") {
  Writer w;
  w.U32(kMaxString + 1);
  std::string big(kMaxString + 1, 'x');
  w.Bytes(big.data(), big.size());
  Reader r(w.data().data(), w.data().size());
  CHECK(r.Str().empty());
  CHECK_FALSE(r.ok());

  Writer c;
  c.U32(0xffffffffu);  // a list count far beyond the input
  Reader rc(c.data().data(), c.data().size());
  CHECK(rc.StrList().empty());
  CHECK_FALSE(rc.ok());

  Writer l;
  l.U32(kMaxList + 1);
  for (size_t i = 0; i < kMaxList + 1; ++i) l.Str("");
  Reader rl(l.data().data(), l.data().size());
  rl.StrList();
  CHECK_FALSE(rl.ok());
}

TEST_CASE("every message round-trips") {
  Register reg;
  reg.instance = 42;
  reg.role = "joiner";
  reg.host = "h1";
  reg.pid = 1234;
  reg.rank = 3;
  reg.world = 8;
  reg.replace = 3;
  reg.cmdline = {"tm-train", "--steps", "10"};
  reg.cwd = "/tmp";
  reg.env = {"A=1", "TRAINMOVER_ROLE=joiner"};
  Register r2 = RoundTrip(reg);
  CHECK(r2.instance == 42);
  CHECK(r2.role == "joiner");
  CHECK(r2.host == "h1");
  CHECK(r2.pid == 1234);
  CHECK(r2.rank == 3);
  CHECK(r2.world == 8);
  CHECK(r2.replace == 3);
  CHECK(r2.cmdline == reg.cmdline);
  CHECK(r2.cwd == "/tmp");
  CHECK(r2.env == reg.env);

  CommCreated cc;
  cc.comm_key = 0xabcdef;
  cc.lineage.kind = static_cast<uint8_t>(LineageKind::kShrink);
  cc.lineage.index = 2;
  cc.lineage.parent_key = 99;
  cc.lineage.child_index = 3;
  cc.lineage.color = -1;
  cc.lineage.key = 5;
  cc.lineage.excluded = {1, 4};
  cc.lineage.id_hash = 77;
  cc.rank = 1;
  cc.nranks = 6;
  cc.device = 3;
  cc.blocking = 0;
  CommCreated c2 = RoundTrip(cc);
  CHECK(c2.comm_key == cc.comm_key);
  CHECK(c2.lineage == cc.lineage);
  CHECK(c2.rank == 1);
  CHECK(c2.nranks == 6);
  CHECK(c2.device == 3);
  CHECK(c2.blocking == 0);
  // A joiner's REGISTER_ACK carries the replaced rank's table; a worker's does not.
  RegisterAck table_ack{6, 100, 1, {cc, cc}};
  table_ack.replaced_comms[1].lineage.index = 3;
  RegisterAck t2 = RoundTrip(table_ack);
  CHECK(t2.has_table == 1);
  REQUIRE(t2.replaced_comms.size() == 2);
  CHECK(t2.replaced_comms[0].device == 3);
  CHECK(t2.replaced_comms[1].lineage.index == 3);
  CHECK(RoundTrip(RegisterAck{6, 100, 1, {}}).has_table == 1);  // the rank's holder has no communicator
  CHECK(RoundTrip(RegisterAck{6, 100}).has_table == 0);

  Regions rg{{{"weights", 1024}, {"adam_m", 2048}}};
  CHECK(RoundTrip(rg).regions == rg.regions);
  CHECK(RoundTrip(Heartbeat{17, 5, 2}).step == 17);
  CHECK(RoundTrip(SafePoint{-1, 9}).time_ns == 9);
  CHECK(RoundTrip(CommDestroyed{5}).comm_key == 5);
  MigrateReq mq{2, "nodeB", 1};
  MigrateReq mq2 = RoundTrip(mq);
  CHECK(mq2.rank == 2);
  CHECK(mq2.host == "nodeB");
  CHECK(mq2.spawn == 1);
  CHECK(mq2.more_ranks.empty());
  MigrateReq mq3{0, "", 1, {3, 5}};
  CHECK(RoundTrip(mq3).more_ranks == std::vector<int32_t>{3, 5});
  MigrateReply mr{7, 1, "requested", "ok"};
  CHECK(RoundTrip(mr).message == "ok");
  CHECK(RoundTrip(CancelReq{3}).id == 3);
  CHECK(RoundTrip(CancelReply{1, "x"}).message == "x");
  CHECK(RoundTrip(TimelineReq{4}).id == 4);
  JsonReply jr{1, std::string(10000, 'j')};  // longer than kMaxString: bounded by the frame instead
  CHECK(RoundTrip(jr).json.size() == 10000);
  Command cmd{3, 9, {1, 2, 3}};
  Command cmd2 = RoundTrip(cmd);
  CHECK(cmd2.kind == 3);
  CHECK(cmd2.migration == 9);
  CHECK(cmd2.body == cmd.body);
  Hello h;
  h.client_kind = kClientTool;
  h.nonce[0] = 9;
  CHECK(RoundTrip(h).nonce[0] == 9);
  RegisterAck ra{5, 250};
  CHECK(RoundTrip(ra).heartbeat_interval_ms == 250);
}

TEST_CASE("decoders refuse trailing bytes, bad enums and impossible values") {
  auto p = EncodePayload(CommDestroyed{1});
  p.push_back(0);
  CommDestroyed d;
  CHECK_FALSE(DecodePayload(p, &d));

  Register reg;
  reg.role = "superuser";
  Register r2;
  CHECK_FALSE(DecodePayload(EncodePayload(reg), &r2));

  CommCreated cc;
  cc.lineage.kind = 1;
  cc.rank = 4;
  cc.nranks = 4;  // rank out of range: well formed, not valid (the coordinator ignores it, keeps the process)
  CommCreated c2;
  REQUIRE(DecodePayload(EncodePayload(cc), &c2));
  CHECK_FALSE(c2.Valid());
  cc.rank = 0;
  cc.nranks = -1;  // a non-blocking child whose size is not known yet
  REQUIRE(DecodePayload(EncodePayload(cc), &c2));
  CHECK_FALSE(c2.Valid());
  cc.nranks = 4;
  CHECK(RoundTrip(cc).Valid());
  cc.lineage.kind = 77;  // unknown lineage kind
  CHECK_FALSE(DecodePayload(EncodePayload(cc), &c2));
  cc.lineage.kind = 1;
  cc.blocking = 2;  // not a flag
  CHECK_FALSE(DecodePayload(EncodePayload(cc), &c2));
  RegisterAck ack{1, 100, 2, {}};  // has_table must be 1 when present
  RegisterAck a2;
  CHECK_FALSE(DecodePayload(EncodePayload(ack), &a2));
}

namespace {
SessionKeys Keys(const std::string& token, uint8_t c, uint8_t sv) {
  Nonce a{}, b{};
  a[0] = c;
  b[0] = sv;
  SessionKeys k;
  REQUIRE(DeriveSessionKeys(token, a, b, &k));
  return k;
}
// Peeks and opens one sealed frame with `cipher`.
FrameStatus OpenSealed(FrameCipher& cipher, const std::vector<uint8_t>& buf, size_t n, Frame* out) {
  FrameHeader h;
  size_t total = 0;
  FrameStatus st = PeekFrame(buf.data(), n, kMaxLength, kTagBytes, &h, &total);
  return st == FrameStatus::kOk ? cipher.Open(buf.data(), total, out) : st;
}
}  // namespace

TEST_CASE("handshake frames: HMAC over the frame and what it binds; every corrupted byte is caught") {
  std::vector<uint8_t> payload = {1, 2, 3, 4, 5};
  auto f = EncodeMacFrame(9, payload, "key", "bound");
  CHECK(f.size() == kHeaderBytes + payload.size() + kMacBytes);
  Frame out;
  FrameHeader h;
  size_t total = 0;
  REQUIRE(PeekFrame(f.data(), f.size(), kMaxPayload, kMacBytes, &h, &total) == FrameStatus::kOk);
  CHECK(total == f.size());
  REQUIRE(OpenMacFrame(f.data(), total, "key", "bound", &out) == FrameStatus::kOk);
  CHECK(out.type == 9);
  CHECK(out.seq == 0);
  CHECK(out.payload == payload);
  for (size_t n = 1; n < f.size(); ++n) {
    CHECK(PeekFrame(f.data(), n, kMaxPayload, kMacBytes, &h, &total) == FrameStatus::kNeedMore);
  }
  CHECK(OpenMacFrame(f.data(), f.size(), "other", "bound", &out) == FrameStatus::kBadMac);
  CHECK(OpenMacFrame(f.data(), f.size(), "key", "other nonce", &out) == FrameStatus::kBadMac);
  int caught = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    auto g = f;
    g[i] ^= 0x40;
    FrameStatus st = PeekFrame(g.data(), g.size(), kMaxPayload, kMacBytes, &h, &total);
    if (st == FrameStatus::kOk) st = OpenMacFrame(g.data(), total, "key", "bound", &out);
    caught += st != FrameStatus::kOk;
  }
  CHECK(caught == static_cast<int>(f.size()));
}

TEST_CASE("frames: foreign magic, other version, oversized length are refused from the header alone") {
  std::vector<uint8_t> junk = {'G', 'E', 'T', ' '};
  FrameHeader got;
  size_t total;
  CHECK(PeekFrame(junk.data(), junk.size(), kMaxLength, kTagBytes, &got, &total) == FrameStatus::kBadMagic);
  CHECK(PeekFrame(junk.data(), 1, kMaxLength, kTagBytes, &got, &total) == FrameStatus::kBadMagic);
  uint8_t h[kHeaderBytes];
  FrameHeader hd;
  hd.version = 1;  // the unsealed protocol
  EncodeHeader(hd, h);
  CHECK(PeekFrame(h, sizeof(h), kMaxLength, kTagBytes, &got, &total) == FrameStatus::kBadVersion);
  hd.version = kProtocolVersion;
  hd.length = kMaxLength + 1;
  EncodeHeader(hd, h);
  CHECK(PeekFrame(h, sizeof(h), kMaxLength, kTagBytes, &got, &total) == FrameStatus::kTooLarge);
  hd.length = 1025;
  EncodeHeader(hd, h);
  CHECK(PeekFrame(h, sizeof(h), 1024, kMacBytes, &got, &total) == FrameStatus::kTooLarge);
}

TEST_CASE("session keys: one per direction, and per token and per nonce") {
  SessionKeys k = Keys("t", 1, 2);
  CHECK(k.client_to_server != k.server_to_client);
  CHECK(Keys("t", 1, 3).client_to_server != k.client_to_server);
  CHECK(Keys("t", 3, 2).server_to_client != k.server_to_client);
  CHECK(Keys("u", 1, 2).client_to_server != k.client_to_server);
  CHECK(Keys("t", 1, 2).client_to_server == k.client_to_server);
}

TEST_CASE("sealed frames: the contents are hidden, every changed byte, a replay and a reflection are refused") {
  SessionKeys k = Keys("token-for-the-sealed-frames", 4, 5);
  FrameCipher send(k.client_to_server), recv(k.client_to_server), other_dir(k.server_to_client);
  const std::string marker = "MARKER_VALUE_4f1c9a";
  std::vector<uint8_t> payload(marker.begin(), marker.end());
  std::vector<uint8_t> wire;
  REQUIRE(send.Seal(static_cast<uint16_t>(MsgType::kRegister), payload, &wire));
  CHECK(wire.size() == kHeaderBytes + kSealedTypeBytes + payload.size() + kTagBytes);
  CHECK(std::string(wire.begin(), wire.end()).find(marker) == std::string::npos);
  CHECK(DecodeHeader(wire.data()).type == kSealedFrameType);  // the real type is inside
  CHECK(DecodeHeader(wire.data()).seq == 1);

  // Every changed byte (header, type, payload, tag) is refused, and the receiver is unchanged by it.
  int caught = 0;
  Frame f;
  for (size_t i = 0; i < wire.size(); ++i) {
    auto g = wire;
    g[i] ^= 0x01;
    caught += OpenSealed(recv, g, g.size(), &f) != FrameStatus::kOk;
  }
  CHECK(caught == static_cast<int>(wire.size()));
  for (size_t n = 1; n < wire.size(); ++n) CHECK(OpenSealed(recv, wire, n, &f) == FrameStatus::kNeedMore);
  // The other direction's key does not open it (a frame reflected back to its sender).
  CHECK(OpenSealed(other_dir, wire, wire.size(), &f) == FrameStatus::kBadMac);
  REQUIRE(OpenSealed(recv, wire, wire.size(), &f) == FrameStatus::kOk);
  CHECK(f.type == static_cast<uint16_t>(MsgType::kRegister));
  CHECK(f.seq == 1);
  CHECK(f.payload == payload);
  // The same frame again is a replay: refused by its number.
  CHECK(OpenSealed(recv, wire, wire.size(), &f) == FrameStatus::kBadSeq);
  // A frame whose header was renumbered to the expected number does not open (the number is the nonce).
  auto renumbered = wire;
  FrameHeader h = DecodeHeader(renumbered.data());
  h.seq = 2;
  EncodeHeader(h, renumbered.data());
  CHECK(OpenSealed(recv, renumbered, renumbered.size(), &f) == FrameStatus::kBadMac);
  // Empty payloads and the largest one seal and open.
  std::vector<uint8_t> two;
  REQUIRE(send.Seal(static_cast<uint16_t>(MsgType::kKeepalive), {}, &two));
  REQUIRE(OpenSealed(recv, two, two.size(), &f) == FrameStatus::kOk);
  CHECK(f.payload.empty());
  std::vector<uint8_t> big(kMaxPayload, 7), three;
  REQUIRE(send.Seal(static_cast<uint16_t>(MsgType::kEvent), big, &three));
  REQUIRE(OpenSealed(recv, three, three.size(), &f) == FrameStatus::kOk);
  CHECK(f.payload == big);
  big.push_back(0);
  CHECK_FALSE(send.Seal(static_cast<uint16_t>(MsgType::kEvent), big, &three));
}

TEST_CASE("handshake authenticates both sides, then messages flow in order") {
  Pair p;
  REQUIRE(p.client->authenticated());
  REQUIRE(p.server->authenticated());
  CHECK(p.server->client_kind() == kClientAgent);
  for (int i = 0; i < 3; ++i) CHECK(p.client->SendMsg(MsgType::kSafePoint, SafePoint{i, 0}));
  auto got = p.Pump();
  REQUIRE(got.size() == 3);
  for (int i = 0; i < 3; ++i) {
    SafePoint sp;
    CHECK(got[i].type == static_cast<uint16_t>(MsgType::kSafePoint));
    CHECK(got[i].seq == static_cast<uint64_t>(i + 1));
    REQUIRE(DecodePayload(got[i].payload, &sp));
    CHECK(sp.step == i);
  }
  CHECK_FALSE(p.server->failed());
}

TEST_CASE("a peer that does not read stalls the connection: nothing queued is dropped, a last BYE follows in order") {
  Pair p;
  const std::vector<uint8_t> mib(kMaxPayload - 64, 0x5a);
  int sent = 0;
  while (p.client->Send(MsgType::kEvent, mib)) {  // the server reads nothing
    ++sent;
    p.client->Flush();  // the socket takes what it can: the frame in flight is cut mid-way
    REQUIRE(sent < 64);
  }
  CHECK(p.client->stalled());
  CHECK(p.client->closing());
  CHECK_FALSE(p.client->failed());
  CHECK(p.client->queued_bytes() > Connection::kMaxQueued);
  CHECK(p.client->error() == "the peer does not read: 16 MiB queued");
  CHECK_FALSE(p.client->Send(MsgType::kHeartbeat, EncodePayload(Heartbeat{})));  // nothing more...
  const std::string bye = ByeReconnect(p.client->error());
  CHECK(p.client->SendLast(MsgType::kBye, EncodePayload(Bye{bye})));            // ...but its last frame
  CHECK_FALSE(p.client->SendLast(MsgType::kBye, EncodePayload(Bye{kByeExit})));  // once
  // Once the server reads again: every frame whole and in sequence, then the BYE saying why.
  std::vector<Frame> got;
  for (int i = 0; i < 100000 && (got.empty() || got.back().type != static_cast<uint16_t>(MsgType::kBye)); ++i) {
    p.client->Flush();
    p.server->ReadSome();
    Frame f;
    while (p.server->Next(&f)) got.push_back(f);
    REQUIRE_FALSE(p.server->failed());
  }
  REQUIRE(got.size() == static_cast<size_t>(sent) + 1);
  for (int i = 0; i < sent; ++i) CHECK(got[i].payload == mib);
  Bye b;
  REQUIRE(got.back().type == static_cast<uint16_t>(MsgType::kBye));
  REQUIRE(DecodePayload(got.back().payload, &b));
  CHECK(b.reason == "reconnect: the peer does not read: 16 MiB queued");
  CHECK(ByeReconnectWhy(b.reason) == std::optional<std::string>("the peer does not read: 16 MiB queued"));
  CHECK(ByeReconnectWhy(kByeReconnect) == std::optional<std::string>("it heard nothing from the coordinator"));
  CHECK(ByeReconnectWhy(kByeExit) == std::nullopt);
  CHECK_FALSE(p.client->WantsWrite());
}

TEST_CASE("wrong token: the server answers only a REJECT and authenticates nothing") {
  Pair p("wrong", "tok");
  CHECK_FALSE(p.server->authenticated());
  CHECK(p.server->failed());
  CHECK(p.client->rejected());
  CHECK(p.client->error().find("authentication failed") != std::string::npos);
}

TEST_CASE("a message before HELLO is rejected") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Connection server(sv[1], Connection::Side::kServer, "tok");
  auto f = EncodeMacFrame(static_cast<uint16_t>(MsgType::kStatusReq), {}, "tok");
  REQUIRE(write(sv[0], f.data(), f.size()) == (ssize_t)f.size());
  server.ReadSome();
  Frame out;
  CHECK_FALSE(server.Next(&out));
  CHECK(server.failed());
  CHECK_FALSE(server.authenticated());
  close(sv[0]);
}

TEST_CASE("a frame sealed with a key made from the token alone is rejected after the handshake") {
  Pair p;
  SessionKeys guess = Keys("tok", 0, 0);
  FrameCipher forger(guess.client_to_server);
  std::vector<uint8_t> wire;
  REQUIRE(forger.Seal(static_cast<uint16_t>(MsgType::kStatusReq), {}, &wire));
  p.Raw(wire);
  CHECK(p.Pump().empty());
  CHECK(p.server->failed());
  CHECK(p.server->error().find("authentication") != std::string::npos);
}

TEST_CASE("a frame reflected back to its sender is rejected") {
  Pair p;
  REQUIRE(p.server->Send(MsgType::kKeepalive, {}));
  REQUIRE(p.server->Flush());
  std::vector<uint8_t> wire(4096);
  ssize_t n = read(p.client->fd(), wire.data(), wire.size());  // the server's frame 1, as the client would get it
  REQUIRE(n > 0);
  wire.resize(static_cast<size_t>(n));
  p.Raw(wire);  // ... sent back to the server as if the client had sent it (its frame 1 too)
  CHECK(p.Pump().empty());
  CHECK(p.server->failed());
  CHECK(p.server->error().find("authentication failed") != std::string::npos);
  CHECK(p.client->failed());  // the server closed it (its sealed REJECT is number 2, after the stolen 1)
}

TEST_CASE("HELLO_ACK answers exactly one HELLO: replayed to another client it is refused") {
  int a[2], b[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
  Connection c1(a[0], Connection::Side::kClient, "tok"), s1(a[1], Connection::Side::kServer, "tok");
  Connection c2(b[0], Connection::Side::kClient, "tok");
  c1.StartHello(kClientAgent);
  c2.StartHello(kClientAgent);
  c1.Flush();
  s1.ReadSome();
  Frame f;
  CHECK_FALSE(s1.Next(&f));
  REQUIRE(s1.authenticated());
  s1.Flush();
  std::vector<uint8_t> ack(4096);
  ssize_t n = read(a[0], ack.data(), ack.size());  // s1's HELLO_ACK, bound to c1's nonce
  REQUIRE(n > 0);
  REQUIRE(write(b[1], ack.data(), static_cast<size_t>(n)) == n);
  c2.ReadSome();
  CHECK_FALSE(c2.Next(&f));
  CHECK(c2.failed());
  CHECK_FALSE(c2.authenticated());
  CHECK(c2.error().find("authentication failed") != std::string::npos);
  close(b[1]);
}

TEST_CASE("a replayed frame (same sequence number) is rejected") {
  Pair p;
  REQUIRE(p.client->SendMsg(MsgType::kHeartbeat, Heartbeat{}));
  // Capture the bytes the client would send, deliver them twice.
  std::vector<uint8_t> wire(4096);
  p.client->Flush();
  ssize_t n = read(p.server->fd(), wire.data(), wire.size());
  REQUIRE(n > 0);
  wire.resize(static_cast<size_t>(n));
  REQUIRE(write(p.client->fd(), wire.data(), wire.size()) == n);
  REQUIRE(write(p.client->fd(), wire.data(), wire.size()) == n);
  p.server->ReadSome();
  Frame f;
  CHECK(p.server->Next(&f));  // the original
  CHECK_FALSE(p.server->Next(&f));
  CHECK(p.server->failed());
  CHECK(p.server->error().find("out-of-order or replayed") != std::string::npos);
}

TEST_CASE("an out-of-order frame (a skipped sequence number) is rejected") {
  Pair p;
  REQUIRE(p.client->SendMsg(MsgType::kHeartbeat, Heartbeat{}));
  REQUIRE(p.client->SendMsg(MsgType::kHeartbeat, Heartbeat{}));
  p.client->Flush();
  std::vector<uint8_t> wire(4096);
  ssize_t n = read(p.server->fd(), wire.data(), wire.size());
  REQUIRE(n > 0);
  size_t one = static_cast<size_t>(n) / 2;
  // Deliver the second frame only.
  REQUIRE(write(p.client->fd(), wire.data() + one, one) == (ssize_t)one);
  p.server->ReadSome();
  Frame f;
  CHECK_FALSE(p.server->Next(&f));
  CHECK(p.server->failed());
}

TEST_CASE("a frame from another session (replayed across connections) is rejected") {
  Pair a, b;
  REQUIRE(a.client->SendMsg(MsgType::kHeartbeat, Heartbeat{}));
  a.client->Flush();
  std::vector<uint8_t> wire(4096);
  ssize_t n = read(a.server->fd(), wire.data(), wire.size());
  REQUIRE(n > 0);
  REQUIRE(write(b.client->fd(), wire.data(), static_cast<size_t>(n)) == n);
  b.server->ReadSome();
  Frame f;
  CHECK_FALSE(b.server->Next(&f));
  CHECK(b.server->failed());
}

TEST_CASE("an oversized frame is rejected after its header, without buffering the payload") {
  Pair p;
  uint8_t h[kHeaderBytes];
  FrameHeader hd;
  hd.type = static_cast<uint16_t>(MsgType::kRegions);
  hd.seq = 1;
  hd.length = 64u << 20;
  EncodeHeader(hd, h);
  p.Raw(std::vector<uint8_t>(h, h + sizeof(h)));
  p.Pump();
  CHECK(p.server->failed());
  CHECK(p.server->error() == "frame too large");
  CHECK(p.client->rejected());
}

#include "migration/msgs.h"

TEST_CASE("migration command and event bodies round-trip and refuse bad values") {
  using namespace trainmover::control::mig;
  Ready rd;
  rd.comms.push_back(CommCreated{});
  rd.comms[0].comm_key = 5;
  rd.comms[0].lineage.kind = 5;
  rd.comms[0].lineage.excluded = {2};
  rd.comms[0].rank = 1;
  rd.comms[0].nranks = 3;
  rd.regions = {{"w", 64}};
  rd.step = 12;
  Ready rd2 = RoundTrip(rd);
  REQUIRE(rd2.comms.size() == 1);
  CHECK(rd2.comms[0].lineage == rd.comms[0].lineage);
  CHECK(rd2.comms[0].rank == 1);
  CHECK(rd2.regions == rd.regions);
  CHECK(rd2.step == 12);

  Build b;
  b.entries.resize(2);
  b.entries[0].comm_key = 1;
  b.entries[0].id[127] = 0xaa;
  b.entries[0].nranks = 4;
  b.entries[0].rank = 3;
  b.entries[1].nranks = 1;
  CHECK(RoundTrip(b).entries == b.entries);
  b.entries[1].rank = 1;  // out of range
  Build bad;
  CHECK_FALSE(DecodePayload(EncodePayload(b), &bad));

  Ids ids;
  ids.ids.resize(1);
  ids.ids[0].comm_key = 9;
  ids.ids[0].id[0] = 1;
  CHECK(RoundTrip(ids).ids == ids.ids);
  CHECK(RoundTrip(KeyList{{1, 2, 3}}).keys == std::vector<uint64_t>{1, 2, 3});
  CHECK(RoundTrip(Built{7, 1, "ok"}).comm_key == 7);
  CHECK(RoundTrip(Blob{{1, 2, 3}}).bytes.size() == 3);
  CHECK(RoundTrip(Progress{5, 10}).done == 5);
  Progress over;
  CHECK_FALSE(DecodePayload(EncodePayload(Progress{11, 10}), &over));
  CHECK(RoundTrip(Switched{4, 100, 50}).stall_ns == 100);
  CHECK(RoundTrip(Phase{"build", 1, 2}).name == "build");
  CHECK(RoundTrip(Step{42}).step == 42);
  CHECK(RoundTrip(Reason{"why"}).text == "why");
  Command c = Make(static_cast<uint16_t>(Cmd::kPropose), 3, Step{77});
  Command c2 = RoundTrip(c);
  Step s;
  REQUIRE(DecodePayload(c2.body, &s));
  CHECK(s.step == 77);
  CHECK(std::string(CmdName(c2.kind)) == "PROPOSE");
  CHECK(std::string(EvName(static_cast<uint16_t>(Ev::kSwitched))) == "SWITCHED");
}

#include "control/json_out.h"

TEST_CASE("agent-supplied strings are escaped in JSON and in Prometheus labels") {
  const std::string evil = "ph\"ase\\\n} 1\ntrainmover_fake 9\x01\xff\xc3\xa9";
  CHECK(JsonQuote(evil) == "\"ph\\\"ase\\\\\\n} 1\\ntrainmover_fake 9\\u0001\\ufffd\xc3\xa9\"");
  const std::string label = PromLabel(evil);
  CHECK(label == "\"ph\\\"ase\\\\\\n} 1\\ntrainmover_fake 9\xef\xbf\xbd\xef\xbf\xbd\xc3\xa9\"");
  CHECK(label.find('\n') == std::string::npos);  // one metric line stays one line
  // Invalid UTF-8 of every kind is replaced: stray continuation, truncated, overlong, surrogate, too large.
  for (const char* bad : {"\x80", "\xe2\x82", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"}) {
    CAPTURE(bad);
    CHECK(JsonEscape(bad).find("\\ufffd") != std::string::npos);
    CHECK(PromLabel(bad).find("\xef\xbf\xbd") != std::string::npos);
  }
  CHECK(JsonEscape("\xe2\x82\xac \xf0\x9f\x98\x80") == "\xe2\x82\xac \xf0\x9f\x98\x80");  // valid: unchanged
}
