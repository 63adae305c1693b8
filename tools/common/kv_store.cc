// SPDX-License-Identifier: Apache-2.0
#include "kv_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "base/crypto.h"
#include "base/hostport.h"
#include "base/thread.h"

namespace tm_tools {

using trainmover::base::Status;
namespace {

using Clock = std::chrono::steady_clock;

// Reads n bytes, waiting at most until `deadline` (Clock::time_point::max(): no deadline).
bool ReadFull(int fd, void* buf, size_t n, Clock::time_point deadline = Clock::time_point::max()) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    if (deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd pf{fd, POLLIN, 0};
      int pr = poll(&pf, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (pr < 0 && errno != EINTR) return false;
      if (pr <= 0) continue;
    }
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void PutU32(char* p, uint32_t v) {
  v = htonl(v);
  memcpy(p, &v, 4);
}
uint32_t GetU32(const char* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return ntohl(v);
}
std::string EncodeI64(int64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((static_cast<uint64_t>(v) >> (56 - 8 * i)) & 0xff);
  return s;
}
int64_t DecodeI64(const std::string& s) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[i]);
  return static_cast<int64_t>(v);
}
Clock::time_point After(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

namespace crypto = trainmover::base::crypto;
static_assert(kKvMacBytes == crypto::kHmacBytes);

// HMAC-SHA256(token, label || a || b); empty when OpenSSL fails (SameMac then refuses).
std::string Mac(const std::string& token, const char* label, const std::string& a, const std::string& b) {
  crypto::Hmac h;
  if (!crypto::HmacSha256(crypto::AsBytes(token), {crypto::AsBytes(label), crypto::AsBytes(a), crypto::AsBytes(b)},
                          &h)) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(h.data()), h.size());
}

bool SameMac(const std::string& a, const std::string& b) {
  return a.size() == b.size() && a.size() == kKvMacBytes && crypto::ConstantTimeEqual(a.data(), b.data(), a.size());
}

std::string Nonce() {
  std::string n(kKvNonceBytes, '\0');
  if (!crypto::RandomBytes(n.data(), n.size())) n.clear();
  return n;
}

constexpr char kHello[4] = {'T', 'M', 'K', 'V'};

bool ParseDecimal(const std::string& s, int64_t* v) {
  if (s.empty()) {
    *v = 0;
    return true;
  }
  size_t i = (s[0] == '-') ? 1 : 0;
  if (i == s.size() || s.size() - i > 18) return false;
  int64_t r = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    r = r * 10 + (s[i] - '0');
  }
  *v = (s[0] == '-') ? -r : r;
  return true;
}

}  // namespace

const char* KvStatusName(KvStatus s) {
  switch (s) {
    case KvStatus::kOk:
      return "ok";
    case KvStatus::kTimeout:
      return "timeout";
    case KvStatus::kBadRequest:
      return "bad request";
    case KvStatus::kTooLarge:
      return "too large";
    case KvStatus::kFull:
      return "store full";
    case KvStatus::kNotANumber:
      return "not a number";
    case KvStatus::kIoError:
      return "i/o error";
    case KvStatus::kOverflow:
      return "overflow";
  }
  return "unknown";
}

std::string StoreTokenFromEnv() {
  for (const char* name : {"TMRUN_STORE_TOKEN", "TRAINMOVER_TOKEN"}) {
    const char* v = std::getenv(name);
    if (v && *v) return v;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// Server

KvServer::~KvServer() { Stop(); }

Status KvServer::Start(const std::string& host, uint16_t port, const std::string& token) {
  if (token.size() < kKvMinTokenBytes) {
    return Status::Error("the store's token must have at least " + std::to_string(kKvMinTokenBytes) + " characters");
  }
  token_ = token;
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    return Status::Error(std::string("socket: ") + strerror(errno));
  }
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return Status::Error("not an IPv4 address: " + host);
  }
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(listen_fd_, 128) != 0) {
    Status st = Status::Error(std::string("bind/listen: ") + strerror(errno));
    close(listen_fd_);
    listen_fd_ = -1;
    return st;
  }
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = trainmover::base::StartThread("tm-kv-accept", [this] { AcceptLoop(); });
  return Status::Ok();
}

void KvServer::Stop() {
  if (listen_fd_ < 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (Conn& c : conns_) {
      if (!c.done) shutdown(c.fd, SHUT_RDWR);
    }
  }
  table_.Stop();
  shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  for (Conn& c : conns_) c.thread.join();  // the acceptor is gone: nobody else touches conns_
  conns_.clear();
  close(listen_fd_);
  listen_fd_ = -1;
}

void KvServer::AcceptLoop() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down (or a fatal error): stop accepting
    }
    std::list<Conn> finished;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), conns_, it);
      it = next;
    }
    for (Conn& c : finished) c.thread.join();  // already returned from Serve: joins at once
    if (stopping_ || conns_.size() >= kKvMaxConnections) {
      close(fd);
      if (stopping_) return;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Conn& c = conns_.emplace_back();
    c.fd = fd;
    c.thread = trainmover::base::StartThread("tm-kv-serve", [this, conn = &c] { Serve(conn); });
  }
}

void KvServer::Serve(Conn* conn) {
  const int fd = conn->fd;
  // The handshake: "TMKV" + server nonce; the client answers its nonce and its proof; the server its own.
  const std::string server_nonce = Nonce();
  std::string client_nonce(kKvNonceBytes, '\0'), proof(kKvMacBytes, '\0');
  const auto auth_deadline = After(kKvAuthTimeoutMs);
  bool authed = !server_nonce.empty() && WriteFull(fd, kHello, sizeof(kHello)) &&
                WriteFull(fd, server_nonce.data(), server_nonce.size()) &&
                ReadFull(fd, client_nonce.data(), client_nonce.size(), auth_deadline) &&
                ReadFull(fd, proof.data(), proof.size(), auth_deadline) &&
                SameMac(proof, Mac(token_, "tmkv-client", server_nonce, client_nonce));
  if (authed) {
    const std::string mine = Mac(token_, "tmkv-server", client_nonce, server_nonce);
    authed = WriteFull(fd, mine.data(), mine.size());
  }
  for (; authed;) {
    char hdr[kKvHeaderBytes];
    if (!ReadFull(fd, hdr, sizeof(hdr))) break;
    const KvHeader h = DecodeKvHeader(hdr);
    std::string out;
    KvStatus st = CheckKvHeader(h);
    const bool keep = st == KvStatus::kOk;  // else: answer, and drop the connection without reading the body
    if (keep) {
      std::string key(h.key_len, '\0'), val(h.val_len, '\0');
      const auto body_deadline = After(kKvBodyTimeoutMs);
      if (!ReadFull(fd, key.data(), h.key_len, body_deadline) || !ReadFull(fd, val.data(), h.val_len, body_deadline)) {
        break;
      }
      st = table_.Handle(static_cast<KvOp>(h.op), key, val, &out);
    }
    char rh[8] = {static_cast<char>(st), 0, 0, 0};
    PutU32(rh + 4, static_cast<uint32_t>(out.size()));
    if (!WriteFull(fd, rh, sizeof(rh)) || !WriteFull(fd, out.data(), out.size()) || !keep) break;
  }
  std::lock_guard<std::mutex> lock(mu_);
  close(fd);
  conn->done = true;
}

KvHeader DecodeKvHeader(const char (&bytes)[kKvHeaderBytes]) {
  return KvHeader{static_cast<uint8_t>(bytes[0]), GetU32(bytes + 4), GetU32(bytes + 8)};
}

KvStatus CheckKvHeader(const KvHeader& h) {
  if (h.key_len == 0) return KvStatus::kBadRequest;
  if (h.key_len > kKvMaxKey || h.val_len > kKvMaxValue) return KvStatus::kTooLarge;
  return KvStatus::kOk;
}

size_t KvTable::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return data_.size();
}

void KvTable::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

KvStatus KvTable::Handle(KvOp op, const std::string& key, const std::string& val, std::string* out) {
  std::unique_lock<std::mutex> lock(mu_);
  switch (op) {
    case KvOp::kSet: {
      if (data_.size() >= kKvMaxKeys && data_.find(key) == data_.end()) return KvStatus::kFull;
      data_[key] = val;
      cv_.notify_all();
      return KvStatus::kOk;
    }
    case KvOp::kGet: {
      if (val.size() != 4) return KvStatus::kBadRequest;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(GetU32(val.data()));
      while (!stopping_) {
        auto it = data_.find(key);
        if (it != data_.end()) {
          *out = it->second;
          return KvStatus::kOk;
        }
        if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && data_.find(key) == data_.end()) {
          return KvStatus::kTimeout;
        }
      }
      return KvStatus::kTimeout;
    }
    case KvOp::kAdd: {
      if (val.size() != 8) return KvStatus::kBadRequest;
      auto it = data_.find(key);
      if (it == data_.end() && data_.size() >= kKvMaxKeys) return KvStatus::kFull;
      int64_t cur = 0;
      if (it != data_.end() && !ParseDecimal(it->second, &cur)) return KvStatus::kNotANumber;
      if (__builtin_add_overflow(cur, DecodeI64(val), &cur) || cur > 999999999999999999 || cur < -999999999999999999) {
        return KvStatus::kOverflow;  // beyond what ParseDecimal reads back (18 digits)
      }
      data_[key] = std::to_string(cur);
      cv_.notify_all();
      *out = EncodeI64(cur);
      return KvStatus::kOk;
    }
  }
  return KvStatus::kBadRequest;
}

// ---------------------------------------------------------------------------------------------------------
// Client

KvClient::~KvClient() { Close(); }

void KvClient::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

Status KvClient::Connect(const std::string& host_port, int timeout_ms, const std::string& token) {
  std::string host;
  uint16_t port = 0;
  TM_CHECK(trainmover::base::ParseHostPort(host_port, &host, &port));
  if (port == 0) return Status::Error("port 0 in '" + host_port + "': nothing listens there");
  if (token.size() < kKvMinTokenBytes) {
    return Status::Error("no token for the store " + host_port + " (TMRUN_STORE_TOKEN or TRAINMOVER_TOKEN, at least " +
                         std::to_string(kKvMinTokenBytes) + " characters)");
  }
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    return Status::Error("cannot resolve '" + host + "': " + gai_strerror(rc));
  }
  const auto deadline = After(timeout_ms);
  for (;;) {
    // Non-blocking connect bounded by the deadline: a store behind a cut link must not hold us for minutes.
    int e = 0;
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) {
      e = errno;
    } else if (connect(fd_, res->ai_addr, res->ai_addrlen) != 0) {
      e = errno;
      if (e == EINPROGRESS) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd pf{fd_, POLLOUT, 0};
        socklen_t len = sizeof(e);
        if (poll(&pf, 1, static_cast<int>(std::max<int64_t>(left, 1))) != 1) {
          e = ETIMEDOUT;
        } else if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &e, &len) != 0) {
          e = errno;
        }
      }
    }
    if (e == 0) break;
    Close();
    if (Clock::now() >= deadline) {
      freeaddrinfo(res);
      return Status::Error("cannot connect to " + host_port + ": " + strerror(e));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  freeaddrinfo(res);
  fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL, 0) & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char hello[sizeof(kHello)];
  std::string server_nonce(kKvNonceBytes, '\0'), server_proof(kKvMacBytes, '\0');
  const std::string client_nonce = Nonce();
  const auto auth_deadline = After(kKvAuthTimeoutMs);
  bool ok = ReadFull(fd_, hello, sizeof(hello), auth_deadline) && memcmp(hello, kHello, sizeof(kHello)) == 0 &&
            ReadFull(fd_, server_nonce.data(), server_nonce.size(), auth_deadline) && !client_nonce.empty();
  if (ok) {
    const std::string proof = Mac(token, "tmkv-client", server_nonce, client_nonce);
    ok = WriteFull(fd_, client_nonce.data(), client_nonce.size()) && WriteFull(fd_, proof.data(), proof.size()) &&
         ReadFull(fd_, server_proof.data(), server_proof.size(), auth_deadline) &&
         SameMac(server_proof, Mac(token, "tmkv-server", client_nonce, server_nonce));
  }
  if (!ok) {
    Close();
    return Status::Error("the store at " + host_port + " refused the token (or is not a tmrun store)");
  }
  return Status::Ok();
}

KvStatus KvClient::Request(uint8_t op, const std::string& key, const std::string& val, std::string* out) {
  if (fd_ < 0) return KvStatus::kIoError;
  char hdr[kKvHeaderBytes] = {static_cast<char>(op), 0, 0, 0};
  PutU32(hdr + 4, static_cast<uint32_t>(key.size()));
  PutU32(hdr + 8, static_cast<uint32_t>(val.size()));
  // The server may answer a too-large request before reading its body; ignore a failed body write then.
  bool sent = WriteFull(fd_, hdr, sizeof(hdr));
  if (sent && key.size() <= kKvMaxKey && val.size() <= kKvMaxValue) {
    sent = WriteFull(fd_, key.data(), key.size()) && WriteFull(fd_, val.data(), val.size());
  }
  char rh[8];
  int wait_ms = kKvReplySlackMs;
  if (op == static_cast<uint8_t>(KvOp::kGet) && val.size() == 4)
    wait_ms += static_cast<int>(std::min<uint32_t>(GetU32(val.data()), 86400000u));
  const auto deadline = After(wait_ms);
  if (!sent || !ReadFull(fd_, rh, sizeof(rh), deadline)) {
    Close();
    return KvStatus::kIoError;
  }
  uint32_t len = GetU32(rh + 4);
  if (len > kKvMaxValue) {
    Close();
    return KvStatus::kIoError;
  }
  std::string body(len, '\0');
  if (!ReadFull(fd_, body.data(), len, deadline)) {
    Close();
    return KvStatus::kIoError;
  }
  if (out) *out = std::move(body);
  return static_cast<KvStatus>(static_cast<uint8_t>(rh[0]));
}

KvStatus KvClient::Set(const std::string& key, const std::string& value) {
  return Request(static_cast<uint8_t>(KvOp::kSet), key, value, nullptr);
}

KvStatus KvClient::Get(const std::string& key, uint32_t timeout_ms, std::string* value) {
  std::string t(4, '\0');
  PutU32(t.data(), timeout_ms);
  return Request(static_cast<uint8_t>(KvOp::kGet), key, t, value);
}

KvStatus KvClient::Add(const std::string& key, int64_t delta, int64_t* result) {
  std::string out;
  KvStatus st = Request(static_cast<uint8_t>(KvOp::kAdd), key, EncodeI64(delta), &out);
  if (st == KvStatus::kOk) {
    if (out.size() != 8) return KvStatus::kIoError;
    if (result) *result = DecodeI64(out);
  }
  return st;
}

}  // namespace tm_tools
