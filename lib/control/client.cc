// SPDX-License-Identifier: Apache-2.0
#include "client.h"

#include <poll.h>

namespace trainmover::control {

using base::Status;

namespace {
int Remaining(uint64_t deadline) {
  uint64_t now = NowMonotonicNs();
  return now >= deadline ? 0 : static_cast<int>((deadline - now) / 1000000 + 1);
}
}  // namespace

Status Client::FlushAll(int timeout_ms) {
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  while (conn_->WantsWrite()) {
    if (!conn_->Flush()) {
      return Status::Error(conn_->error());
    }
    if (!conn_->WantsWrite()) break;
    pollfd p{conn_->fd(), POLLOUT, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      return Status::Error("timed out sending to the coordinator");
    }
  }
  return Status::Ok();
}

Status Client::Connect(const std::string& hostport, const std::string& token, const std::string& kind, int timeout_ms) {
  int fd = -1;
  TM_CHECK(ConnectTcp(hostport, timeout_ms, &fd));
  conn_ = std::make_unique<Connection>(fd, Connection::Side::kClient, token);
  conn_->StartHello(kind);
  TM_CHECK(FlushAll(timeout_ms));
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  Frame f;
  while (!conn_->authenticated()) {
    // Next() handles the HELLO_ACK inside; an application message cannot come before it.
    if (conn_->Next(&f)) break;
    if (conn_->failed()) {
      return Status::Error(conn_->error());
    }
    if (conn_->authenticated()) break;
    pollfd p{conn_->fd(), POLLIN, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      return Status::Error("timed out waiting for the coordinator's HELLO_ACK");
    }
    if (!conn_->ReadSome()) {
      conn_->Next(&f);  // a REJECT sent just before the close explains it
      return Status::Error(conn_->error());
    }
  }
  return Status::Ok();
}

Status Client::Send(MsgType type, const std::vector<uint8_t>& payload, int timeout_ms) {
  if (!conn_ || !conn_->Send(type, payload)) {
    return Status::Error("cannot send: not connected");
  }
  return FlushAll(timeout_ms);
}

Status Client::Receive(Frame* out, int timeout_ms) {
  uint64_t deadline = NowMonotonicNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  for (;;) {
    if (conn_->Next(out)) return Status::Ok();
    if (conn_->failed()) {
      return Status::Error(conn_->error());
    }
    pollfd p{conn_->fd(), POLLIN, 0};
    if (poll(&p, 1, Remaining(deadline)) <= 0) {
      return Status::Error("timed out waiting for the coordinator");
    }
    if (!conn_->ReadSome()) {
      if (conn_->Next(out)) return Status::Ok();
      return Status::Error(conn_->error());
    }
  }
}

}  // namespace trainmover::control
