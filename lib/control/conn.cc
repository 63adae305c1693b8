// SPDX-License-Identifier: Apache-2.0
#include "conn.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/hostport.h"

namespace trainmover::control {

using base::Status;

namespace {
std::string_view NonceView(const Nonce& n) { return {reinterpret_cast<const char*>(n.data()), n.size()}; }
}  // namespace

Connection::Connection(int fd, Side side, std::string token) : fd_(fd), side_(side), token_(std::move(token)) {
  int fl = fcntl(fd_, F_GETFL, 0);
  if (fl >= 0) fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

Connection::~Connection() {
  if (fd_ >= 0) close(fd_);
}

void Connection::StartHello(const std::string& kind) {
  Hello h;
  RandomBytes(my_nonce_.data(), my_nonce_.size());
  h.nonce = my_nonce_;
  h.client_kind = kind;
  auto f = EncodeMacFrame(static_cast<uint16_t>(MsgType::kHello), EncodePayload(h), token_);
  out_.insert(out_.end(), f.begin(), f.end());
  hello_sent_ = true;
}

bool Connection::ReadSome() {
  uint8_t buf[65536];
  for (;;) {
    // Never hold more than one maximal frame plus one read: PeekFrame refuses larger frames from their
    // header (over kMaxPreAuthPayload before the handshake).
    const size_t frame = authenticated_ ? kMaxFrame : kHeaderBytes + kMaxPreAuthPayload + kMacBytes;
    if (in_.size() > frame + sizeof(buf)) return true;
    ssize_t n = read(fd_, buf, sizeof(buf));
    if (n > 0) {
      received_ += static_cast<uint64_t>(n);
      in_.insert(in_.end(), buf, buf + n);
      continue;
    }
    if (n == 0) {
      if (error_.empty()) error_ = "connection closed by peer";
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    error_ = std::string("read: ") + std::strerror(errno);
    return false;
  }
}

void Connection::Fail(RejectCode code, const std::string& why) {
  failed_ = true;
  if (error_.empty()) error_ = why;
  in_.clear();
  if (side_ == Side::kServer) SendReject(code, why);
  closing_ = true;
}

void Connection::SendReject(RejectCode code, const std::string& reason) {
  if (closing_) return;  // one REJECT at most
  Reject r;
  r.code = static_cast<uint16_t>(code);
  r.reason = reason;
  // Sealed once a session exists (a peer with the session reads it; nobody else does); before that with the
  // empty key, so a peer without the token can read why it was refused.
  if (authenticated_) {
    send_.Seal(static_cast<uint16_t>(MsgType::kReject), EncodePayload(r), &out_);
  } else {
    auto f = EncodeMacFrame(static_cast<uint16_t>(MsgType::kReject), EncodePayload(r), std::string_view());
    out_.insert(out_.end(), f.begin(), f.end());
  }
  closing_ = true;
}

bool Connection::StartSession(const Nonce& client, const Nonce& server) {
  SessionKeys k;
  if (!DeriveSessionKeys(token_, client, server, &k)) return false;
  const bool server_side = side_ == Side::kServer;
  send_ = FrameCipher(server_side ? k.server_to_client : k.client_to_server);
  recv_ = FrameCipher(server_side ? k.client_to_server : k.server_to_client);
  base::crypto::Wipe(&k, sizeof(k));
  return send_.ok() && recv_.ok();
}

bool Connection::HandleHandshake(const Frame& f) {
  if (side_ == Side::kServer) {
    Hello h;
    if (f.type != static_cast<uint16_t>(MsgType::kHello) || f.seq != 0) {
      Fail(RejectCode::kAuth, "authentication required: the first message must be HELLO");
      return false;
    }
    if (!DecodePayload(f.payload, &h)) {
      Fail(RejectCode::kProtocol, "malformed HELLO");
      return false;
    }
    if (h.min_version > kProtocolVersion || h.max_version < kProtocolVersion) {
      Fail(RejectCode::kVersion, "unsupported protocol version");
      return false;
    }
    if (h.client_kind != kClientAgent && h.client_kind != kClientTool) {
      Fail(RejectCode::kProtocol, "unknown client kind");
      return false;
    }
    client_kind_ = h.client_kind;
    HelloAck a;
    a.coordinator_epoch = server_epoch;
    if (!RandomBytes(my_nonce_.data(), my_nonce_.size()) || !StartSession(h.nonce, my_nonce_)) {
      Fail(RejectCode::kBusy, "the coordinator cannot make session keys");
      return false;
    }
    a.nonce = my_nonce_;
    auto out = EncodeMacFrame(static_cast<uint16_t>(MsgType::kHelloAck), EncodePayload(a), token_, NonceView(h.nonce));
    out_.insert(out_.end(), out.begin(), out.end());
    authenticated_ = true;
    return true;
  }
  HelloAck a;
  if (f.type != static_cast<uint16_t>(MsgType::kHelloAck) || f.seq != 0 || !DecodePayload(f.payload, &a) ||
      a.version != kProtocolVersion) {
    Fail(RejectCode::kProtocol, "unexpected answer to HELLO");
    return false;
  }
  if (!StartSession(my_nonce_, a.nonce)) {
    Fail(RejectCode::kProtocol, "cannot make session keys");
    return false;
  }
  peer_epoch_ = a.coordinator_epoch;
  authenticated_ = true;
  return true;
}

bool Connection::Next(Frame* out) {
  while (!failed_ && !rejected_ && !in_.empty()) {
    FrameHeader h;
    size_t total = 0;
    const size_t max_length = authenticated_ ? kMaxLength : kMaxPreAuthPayload;
    FrameStatus st = PeekFrame(in_.data(), in_.size(), max_length, authenticated_ ? kTagBytes : kMacBytes, &h, &total);
    if (st == FrameStatus::kNeedMore) return false;
    Frame f;
    if (st == FrameStatus::kOk && authenticated_) {
      st = recv_.Open(in_.data(), total, &f);
    } else if (st == FrameStatus::kOk) {
      // Before the session: HELLO (to the server), HELLO_ACK bound to our nonce or REJECT (to the client).
      const bool reject = h.type == static_cast<uint16_t>(MsgType::kReject);
      const bool client = side_ == Side::kClient;
      st = OpenMacFrame(in_.data(), total, reject ? std::string_view() : std::string_view(token_),
                        client && !reject ? NonceView(my_nonce_) : std::string_view(), &f);
    }
    if (st != FrameStatus::kOk) {
      const RejectCode code = st == FrameStatus::kBadMac       ? RejectCode::kAuth
                              : st == FrameStatus::kTooLarge   ? RejectCode::kTooLarge
                              : st == FrameStatus::kBadVersion ? RejectCode::kVersion
                              : st == FrameStatus::kBadSeq     ? RejectCode::kOrder
                                                               : RejectCode::kProtocol;
      std::string why = FrameStatusName(st);
      if (st == FrameStatus::kTooLarge && !authenticated_) why += " before authentication";
      if (st == FrameStatus::kBadSeq) {
        why += " (seq " + std::to_string(h.seq) + ", expected " + std::to_string(recv_.next_seq()) + ")";
      }
      Fail(code, why);
      return false;
    }
    in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(total));
    if (f.type == static_cast<uint16_t>(MsgType::kReject)) {
      Reject r;
      rejected_ = true;
      failed_ = true;
      error_ = DecodePayload(f.payload, &r) ? "rejected by peer: " + r.reason : "rejected by peer";
      return false;
    }
    if (!authenticated_) {
      if (side_ == Side::kClient && !hello_sent_) {
        Fail(RejectCode::kProtocol, "message before HELLO");
        return false;
      }
      if (!HandleHandshake(f)) return false;
      continue;
    }
    *out = std::move(f);
    return true;
  }
  return false;
}

bool Connection::Send(MsgType type, const std::vector<uint8_t>& payload) {
  if (!authenticated_ || closing_ || failed_ || payload.size() > kMaxPayload) return false;
  if (queued_bytes() > kMaxQueued) {
    stalled_ = closing_ = true;
    error_ = "the peer does not read: " + std::to_string(queued_bytes() >> 20) + " MiB queued";
    return false;
  }
  return Queue(type, payload);
}

bool Connection::SendLast(MsgType type, const std::vector<uint8_t>& payload) {
  if (!authenticated_ || failed_ || last_sent_ || payload.size() > kMaxPayload) return false;
  closing_ = last_sent_ = true;
  return Queue(type, payload);
}

bool Connection::Queue(MsgType type, const std::vector<uint8_t>& payload) {
  if (out_off_ > 0 && out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  if (!send_.Seal(static_cast<uint16_t>(type), payload, &out_)) {
    failed_ = closing_ = true;
    error_ = "cannot seal a frame (OpenSSL failed)";
    return false;
  }
  return true;
}

bool Connection::Flush() {
  while (out_off_ < out_.size()) {
    ssize_t n = send(fd_, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
    if (n > 0) {
      out_off_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (error_.empty()) error_ = std::string("write: ") + std::strerror(errno);
    return false;
  }
  out_.clear();
  out_off_ = 0;
  return true;
}

static Status Resolve(const std::string& host, uint16_t port, bool passive, addrinfo** res) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  std::string ps = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), ps.c_str(), &hints, res);
  if (rc != 0) return Status::Error("cannot resolve '" + host + "': " + gai_strerror(rc));
  return Status::Ok();
}

Status ListenTcp(const std::string& hostport, int* out_fd, std::string* bound) {
  std::string host;
  uint16_t port = 0;
  TM_CHECK(base::ParseHostPort(hostport, &host, &port));
  addrinfo* res = nullptr;
  TM_CHECK(Resolve(host, port, true, &res));
  int fd = -1;
  Status st;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) break;
    st = Status::Error(std::string("bind/listen ") + hostport + ": " + std::strerror(errno));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return st.ok() ? Status::Error("no usable address for " + hostport) : st;
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  char ip[INET6_ADDRSTRLEN] = "?";
  uint16_t p = 0;
  if (ss.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    p = ntohs(in->sin_port);
    *bound = std::string(ip) + ":" + std::to_string(p);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    p = ntohs(in6->sin6_port);
    *bound = "[" + std::string(ip) + "]:" + std::to_string(p);
  }
  int fl = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  *out_fd = fd;
  return Status::Ok();
}

Status ConnectTcp(const std::string& hostport, int timeout_ms, int* out_fd) {
  // OpenSSL reads its configuration at its first use: done before connecting, so that a starved process does not
  // sit connected and silent for seconds against the coordinator's HELLO deadline (the first HELLO needs it).
  uint8_t warm_up;
  if (!RandomBytes(&warm_up, sizeof(warm_up))) return Status::Error("no random bytes for the handshake (OpenSSL)");
  std::string host;
  uint16_t port = 0;
  TM_CHECK(base::ParseHostPort(hostport, &host, &port));
  addrinfo* res = nullptr;
  TM_CHECK(Resolve(host, port, false, &res));
  int fd = -1;
  Status st;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, timeout_ms) == 1 ? 0 : -1;
      int so = 0;
      socklen_t sl = sizeof(so);
      if (rc == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) != 0 || so != 0)) {
        errno = so ? so : errno;
        rc = -1;
      } else if (rc != 0) {
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) break;
    st = Status::Error("connect " + hostport + ": " + std::strerror(errno));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return st.ok() ? Status::Error("no usable address for " + hostport) : st;
  *out_fd = fd;
  return Status::Ok();
}

uint64_t NowRealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t NowMonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace trainmover::control
