// SPDX-License-Identifier: Apache-2.0
// client.h: a blocking request/reply client of the coordinator, for tmctl and tests. Not for the shim:
// the agent (agent.h) never blocks the application.
//
// Thread-compatible. Every call has a timeout and returns a Status that says what failed.
#ifndef TRAINMOVER_LIB_CONTROL_CLIENT_H_
#define TRAINMOVER_LIB_CONTROL_CLIENT_H_

#include <memory>
#include <string>

#include "base/status.h"
#include "conn.h"

namespace trainmover::control {

class Client {
 public:
  // Connects and authenticates (HELLO / HELLO_ACK). `kind` is kClientTool or kClientAgent.
  base::Status Connect(const std::string& hostport, const std::string& token, const std::string& kind, int timeout_ms);
  base::Status Send(MsgType type, const std::vector<uint8_t>& payload, int timeout_ms);
  // Waits for the next message.
  base::Status Receive(Frame* out, int timeout_ms);
  // Send then receive a message of type `expect`; decodes it into `reply`.
  template <typename Req, typename Rep>
  base::Status Call(MsgType type, const Req& req, MsgType expect, Rep* reply, int timeout_ms) {
    TM_CHECK(Send(type, EncodePayload(req), timeout_ms));
    Frame f;
    TM_CHECK(Receive(&f, timeout_ms));
    if (f.type != static_cast<uint16_t>(expect) || !DecodePayload(f.payload, reply)) {
      return base::Status::Error(std::string("unexpected reply ") + MsgTypeName(f.type));
    }
    return base::Status::Ok();
  }
  Connection* connection() { return conn_.get(); }

 private:
  base::Status FlushAll(int timeout_ms);
  std::unique_ptr<Connection> conn_;
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_CLIENT_H_
