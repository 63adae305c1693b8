// SPDX-License-Identifier: Apache-2.0
// kv_store.h: the key-value rendezvous store that tmrun serves and ranks use (TMRUN_STORE=host:port).
//
// Protocol (all integers big-endian; documented for people in docs/tmrun.md):
//   request  = op:u8 pad:u8[3] key_len:u32 val_len:u32 key[key_len] val[val_len]
//   response = status:u8 pad:u8[3] val_len:u32 val[val_len]
//   SET (1): stores val under key (replacing any value). Response: OK, empty.
//   GET (2): val is timeout_ms:u32. Waits until key exists or the timeout passes. Response: OK + value, or
//            TIMEOUT, empty.
//   ADD (3): val is delta:i64. Treats the value (decimal ASCII, absent = 0) as a counter, adds delta, stores
//            it back as decimal ASCII. Response: OK + new value as i64 (8 bytes).
// Bounds: key 1..kKvMaxKey bytes, value 0..kKvMaxValue bytes, at most kKvMaxKeys keys and kKvMaxConnections
// connections. A request outside the bounds is answered with an error status and the connection closed.
#ifndef TOOLS_COMMON_KV_STORE_H_
#define TOOLS_COMMON_KV_STORE_H_

#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/crypto.h"
#include "base/status.h"

namespace tm_tools {

inline constexpr uint32_t kKvMaxKey = 256;
inline constexpr uint32_t kKvMaxValue = 1u << 20;
inline constexpr size_t kKvMaxKeys = 16384;
inline constexpr size_t kKvMaxConnections = 1024;
inline constexpr size_t kKvHeaderBytes = 12;
// Authentication (docs/tmrun.md, "The key-value store protocol"): every connection proves the job's token
// with HMAC-SHA256 over both sides' nonces before its first request, within kKvAuthTimeoutMs.
inline constexpr size_t kKvNonceBytes = 32;
inline constexpr size_t kKvMacBytes = 32;
inline constexpr size_t kKvMinTokenBytes = trainmover::base::crypto::kMinSecretBytes;
inline constexpr int kKvAuthTimeoutMs = 5000;
// A request's key and value must follow its header within this (a slow or stalled sender cannot hold a
// connection's thread in the middle of a request); an idle connection between requests is fine.
inline constexpr int kKvBodyTimeoutMs = 10000;
// Client: how long a reply may take beyond a GET's own timeout (a frozen store never hangs a client).
inline constexpr int kKvReplySlackMs = 30000;

enum class KvOp : uint8_t { kSet = 1, kGet = 2, kAdd = 3 };

enum class KvStatus : uint8_t {
  kOk = 0,
  kTimeout = 1,     // GET: the key did not appear in time
  kBadRequest = 2,  // unknown op, empty key, malformed value
  kTooLarge = 3,    // key or value over the bounds
  kFull = 4,        // the store holds kKvMaxKeys keys already
  kNotANumber = 5,  // ADD on a value that is not a decimal integer
  kIoError = 6,     // client side only: connection failed, closed, timed out or not authenticated
  kOverflow = 7,    // ADD would leave the int64 range
};

const char* KvStatusName(KvStatus s);

// A request's header as it arrives (big-endian on the wire): decoded, then checked before any body byte is
// read. Exposed with KvTable for the protocol's fuzzer (tests/tools/fuzz_kv.cc).
struct KvHeader {
  uint8_t op = 0;
  uint32_t key_len = 0, val_len = 0;
};
KvHeader DecodeKvHeader(const char (&bytes)[kKvHeaderBytes]);
// kOk when the body may be read; otherwise the status to answer before the connection is closed (an empty or
// too long key, a too long value: the server never reads a body whose length it did not bound).
KvStatus CheckKvHeader(const KvHeader& h);

// The store's contents and what SET, GET and ADD do to them (KvServer serves one). Thread-safe.
class KvTable {
 public:
  // One request whose header passed CheckKvHeader. GET blocks until its key exists, its timeout passes or Stop.
  KvStatus Handle(KvOp op, const std::string& key, const std::string& val, std::string* out);
  size_t size();
  // Wakes every blocked GET (they answer kTimeout) and makes later GETs return at once.
  void Stop();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, std::string> data_;
};

// The store's token for a rank or a tool: TMRUN_STORE_TOKEN (tmrun sets it for every rank), else
// TRAINMOVER_TOKEN. Empty when neither is set.
std::string StoreTokenFromEnv();

// KvServer: serves the store on a TCP port from its own threads (one acceptor, one per connection).
// Start/Stop from one thread; the store itself is thread-safe. Only clients that know the token are served.
class KvServer {
 public:
  KvServer() = default;
  ~KvServer();
  KvServer(const KvServer&) = delete;
  KvServer& operator=(const KvServer&) = delete;

  // Binds host:port (port 0 = any free port) and starts serving clients that prove `token` (at least
  // kKvMinTokenBytes).
  trainmover::base::Status Start(const std::string& host, uint16_t port, const std::string& token);
  // The bound port (valid after Start).
  uint16_t port() const { return port_; }
  // Closes the listening socket and every connection, wakes blocked GETs, joins the threads. Idempotent.
  void Stop();

 private:
  struct Conn {
    int fd = -1;
    bool done = false;  // Serve returned; the thread can be joined
    std::thread thread;
  };

  void AcceptLoop();
  void Serve(Conn* conn);

  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::string token_;
  std::thread acceptor_;
  KvTable table_;
  std::mutex mu_;
  bool stopping_ = false;
  std::list<Conn> conns_;  // guarded by mu_; finished ones are joined by the acceptor
};

// KvClient: one blocking connection to a store. Not thread-safe (one user at a time).
class KvClient {
 public:
  KvClient() = default;
  ~KvClient();
  KvClient(const KvClient&) = delete;
  KvClient& operator=(const KvClient&) = delete;

  // Connects to host:port, retrying until timeout_ms passes, and authenticates with the job's token (both
  // sides prove it); a wrong token is not retried.
  trainmover::base::Status Connect(const std::string& host_port, int timeout_ms, const std::string& token);
  KvStatus Set(const std::string& key, const std::string& value);
  // Blocks until the key exists (OK, *value filled) or timeout_ms passes (kTimeout).
  KvStatus Get(const std::string& key, uint32_t timeout_ms, std::string* value);
  KvStatus Add(const std::string& key, int64_t delta, int64_t* result);
  // Sends one raw request (for tests of the bounds). The key and value are sent as given.
  KvStatus Request(uint8_t op, const std::string& key, const std::string& val, std::string* out);
  void Close();

 private:
  int fd_ = -1;
};

}  // namespace tm_tools

#endif  // TOOLS_COMMON_KV_STORE_H_
