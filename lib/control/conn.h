// SPDX-License-Identifier: Apache-2.0
// conn.h: one authenticated control connection over a non-blocking TCP socket, for either side, plus
// the few socket helpers the tools need. Used by the coordinator (server side, from its poll loop), the
// agent (client side, from its thread) and tmctl (client side, blocking through Client in client.h).
//
// Handshake (docs/protocol.md): the client sends HELLO (seq 0, HMAC keyed with the token); the server checks
// it and answers HELLO_ACK (seq 0, HMAC keyed with the token over the frame and the client's nonce); both then
// derive one key per direction (DeriveSessionKeys: HKDF of the token and both nonces) and seal every later frame
// with AES-256-GCM, numbered 1, 2, 3, ... per direction, the number being the nonce. A frame that does not open
// (tampered, from another connection, reflected back to its sender), an unexpected sequence number (replayed,
// dropped, reordered), another version, an oversized length or a foreign magic ends the connection with a
// REJECT: sealed once a session exists; before that HMACed with the empty key, so that a peer without the token
// can read why (it carries nothing but a code and a reason).
//
// Thread-compatible: one thread drives one Connection.
#ifndef TRAINMOVER_LIB_CONTROL_CONN_H_
#define TRAINMOVER_LIB_CONTROL_CONN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "messages.h"
#include "wire.h"

namespace trainmover::control {

class Connection {
 public:
  enum class Side { kClient, kServer };
  // Takes ownership of fd (made non-blocking here).
  Connection(int fd, Side side, std::string token);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_; }
  // Forget the socket without closing it: someone else closed it, and its number may already be another file's.
  void Disown() { fd_ = -1; }
  bool authenticated() const { return authenticated_; }
  bool closing() const { return closing_; }                        // a REJECT/BYE is queued; close once flushed
  const std::string& error() const { return error_; }              // why the connection failed or was rejected
  const std::string& client_kind() const { return client_kind_; }  // server side, after HELLO
  uint64_t peer_epoch() const { return peer_epoch_; }              // client side, after HELLO_ACK

  // Client side: queue HELLO. `kind` is kClientAgent or kClientTool.
  void StartHello(const std::string& kind);

  // Reads what the socket has. False when the peer closed or the socket failed (see error()).
  bool ReadSome();

  // Next application message from what was read. Handshake frames are handled inside. Returns false
  // when no complete message is buffered. On a protocol violation sets failed() (a REJECT is queued on
  // the server side, and closing() is set) and returns false.
  bool Next(Frame* out);
  bool failed() const { return failed_; }
  // True when the peer sent a REJECT (its reason is in error()).
  bool rejected() const { return rejected_; }

  // Queue an application message (after the handshake). Nothing is ever dropped silently: when the peer
  // does not read and kMaxQueued bytes are already queued, the connection stalls instead (stalled(), closing(),
  // error() says why) and Send returns false, as it does after a failure or a REJECT. What is queued is kept
  // whole (a frame cut short would garble the stream), so one last frame (SendLast) still reaches the peer in
  // order if it reads again. Its owner closes it at once (the coordinator: it waits on no peer) or after a last
  // BYE is written, within a deadline (the agent: docs/reliability.md, "A stalled connection").
  bool Send(MsgType type, const std::vector<uint8_t>& payload);
  // Queue the connection's last frame (a BYE), past kMaxQueued if need be; nothing is sent after it (closing()).
  // False after a protocol failure or a REJECT (the stream is not whole), or once a last frame was queued.
  bool SendLast(MsgType type, const std::vector<uint8_t>& payload);
  bool stalled() const { return stalled_; }  // a Send found kMaxQueued queued: the peer does not read
  template <typename M>
  bool SendMsg(MsgType type, const M& m) {
    return Send(type, EncodePayload(m));
  }
  // Queue a REJECT and mark closing.
  void SendReject(RejectCode code, const std::string& reason);

  // Writes what it can. False on a socket error.
  bool Flush();
  bool WantsWrite() const { return out_off_ < out_.size(); }
  size_t queued_bytes() const { return out_.size() - out_off_; }
  uint64_t received() const { return received_; }  // bytes read so far (any frame, KEEPALIVE included)

  static constexpr size_t kMaxQueued = 16u << 20;
  // Before the handshake a frame's payload may be at most this (HELLO, HELLO_ACK and REJECT are far
  // smaller): an unauthenticated peer never makes the coordinator buffer more than this plus one read.
  static constexpr size_t kMaxPreAuthPayload = 1024;

 private:
  void Fail(RejectCode code, const std::string& why);
  bool HandleHandshake(const Frame& f);
  // Keys send_ and recv_ for this side from both nonces. False when OpenSSL fails.
  bool StartSession(const Nonce& client, const Nonce& server);
  // Seals one frame onto the output. False (failed) when OpenSSL fails.
  bool Queue(MsgType type, const std::vector<uint8_t>& payload);

  int fd_;
  Side side_;
  std::string token_;
  FrameCipher send_;  // this side's direction, keyed at the handshake
  FrameCipher recv_;  // the peer's direction
  bool authenticated_ = false;
  bool hello_sent_ = false;
  bool closing_ = false;
  bool failed_ = false;
  bool rejected_ = false;
  bool stalled_ = false;
  bool last_sent_ = false;
  std::string error_;
  std::string client_kind_;
  uint64_t peer_epoch_ = 0;
  Nonce my_nonce_{};
  uint64_t received_ = 0;
  std::vector<uint8_t> in_;
  std::vector<uint8_t> out_;
  size_t out_off_ = 0;

 public:
  // Server side: the epoch sent in HELLO_ACK.
  uint64_t server_epoch = 0;
};

// A listening, non-blocking TCP socket on host:port (port 0: any) in *fd; *bound: the address it got.
base::Status ListenTcp(const std::string& hostport, int* fd, std::string* bound);
// A connect with a timeout; *fd is the connected, non-blocking socket, ready for a HELLO at once (the handshake's
// crypto is initialised before the connection exists).
base::Status ConnectTcp(const std::string& hostport, int timeout_ms, int* fd);
// The shortest job token a coordinator, an agent or tmctl accepts (base::crypto::kMinSecretBytes).
inline constexpr size_t kMinTokenBytes = base::crypto::kMinSecretBytes;
// CLOCK_REALTIME / CLOCK_MONOTONIC in ns.
uint64_t NowRealtimeNs();
uint64_t NowMonotonicNs();

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_CONN_H_
