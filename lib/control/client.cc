// SPDX-License-Identifier: Apache-2.0
#include "client.h"

#include <poll.h>

namespace trainmover::control {

namespace {
int Remaining(uint64_t deadline) {
  uint64_t now = NowMonotonicNs();
  return now >= deadline ? 0 : static_cast<int>((deadline - now) / 1000000 + 1);
}
}  // namespace

bool Client::FlushAll(int timeout_ms, std::string* err) {
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  while (conn_->WantsWrite()) {
    if (!conn_->Flush()) {
      *err = conn_->error();
      return false;
    }
    if (!conn_->WantsWrite()) break;
    pollfd p{conn_->fd(), POLLOUT, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      *err = "timed out sending to the coordinator";
      return false;
    }
  }
  return true;
}

bool Client::Connect(const std::string& hostport, const std::string& token, const std::string& kind, int timeout_ms,
                     std::string* err) {
  int fd = ConnectTcp(hostport, timeout_ms, err);
  if (fd < 0) return false;
  conn_ = std::make_unique<Connection>(fd, Connection::Side::kClient, token);
  conn_->StartHello(kind);
  if (!FlushAll(timeout_ms, err)) return false;
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  Frame f;
  while (!conn_->authenticated()) {
    // Next() handles the HELLO_ACK inside; an application message cannot come before it.
    if (conn_->Next(&f)) break;
    if (conn_->failed()) {
      *err = conn_->error();
      return false;
    }
    if (conn_->authenticated()) break;
    pollfd p{conn_->fd(), POLLIN, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      *err = "timed out waiting for the coordinator's HELLO_ACK";
      return false;
    }
    if (!conn_->ReadSome()) {
      conn_->Next(&f);  // a REJECT sent just before the close explains it
      *err = conn_->error();
      return false;
    }
  }
  return true;
}

bool Client::Send(MsgType type, const std::vector<uint8_t>& payload, int timeout_ms, std::string* err) {
  if (!conn_ || !conn_->Send(type, payload)) {
    *err = "cannot send: not connected";
    return false;
  }
  return FlushAll(timeout_ms, err);
}

bool Client::Receive(Frame* out, int timeout_ms, std::string* err) {
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  for (;;) {
    if (conn_->Next(out)) return true;
    if (conn_->failed()) {
      *err = conn_->error();
      return false;
    }
    pollfd p{conn_->fd(), POLLIN, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      *err = "timed out waiting for the coordinator";
      return false;
    }
    if (!conn_->ReadSome()) {
      if (conn_->Next(out)) return true;
      *err = conn_->error();
      return false;
    }
  }
}

}  // namespace trainmover::control
