// SPDX-License-Identifier: Apache-2.0
// client.h: a blocking request/reply client of the coordinator, for tmctl and tests. Not for the shim:
// the agent (agent.h) never blocks the application.
//
// Thread-compatible. Every call has a timeout and returns false with a message on failure.
#ifndef TRAINMOVER_LIB_CONTROL_CLIENT_H_
#define TRAINMOVER_LIB_CONTROL_CLIENT_H_

#include <memory>
#include <string>

#include "conn.h"

namespace trainmover::control {

class Client {
 public:
  // Connects and authenticates (HELLO / HELLO_ACK). `kind` is kClientTool or kClientAgent.
  bool Connect(const std::string& hostport, const std::string& token, const std::string& kind, int timeout_ms,
               std::string* err);
  bool Send(MsgType type, const std::vector<uint8_t>& payload, int timeout_ms, std::string* err);
  // Waits for the next message.
  bool Receive(Frame* out, int timeout_ms, std::string* err);
  // Send then receive a message of type `expect`; decodes it into `reply`.
  template <typename Req, typename Rep>
  bool Call(MsgType type, const Req& req, MsgType expect, Rep* reply, int timeout_ms, std::string* err) {
    if (!Send(type, EncodePayload(req), timeout_ms, err)) return false;
    Frame f;
    if (!Receive(&f, timeout_ms, err)) return false;
    if (f.type != static_cast<uint16_t>(expect) || !DecodePayload(f.payload, reply)) {
      *err = std::string("unexpected reply ") + MsgTypeName(f.type);
      return false;
    }
    return true;
  }
  Connection* connection() { return conn_.get(); }

 private:
  bool FlushAll(int timeout_ms, std::string* err);
  std::unique_ptr<Connection> conn_;
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_CLIENT_H_
