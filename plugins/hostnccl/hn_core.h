// SPDX-License-Identifier: Apache-2.0
// hostnccl internals: environment, logging, errors, the communicator, bootstrap and transport.
#pragma once

#include <nccl.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hn_types.h"

namespace hn {

// ---- environment (typed, validated; read when a call needs it so tests can change it) ----
// How a waiting operation idles (docs/hostnccl.md, "Waiting"): spin = progress and yield, never sleep longer than
// 100 us; block = a short adaptive spin, then sleep on the worker's event fd and the liveness sockets.
enum WaitMode { kWaitSpin = 0, kWaitBlock = 1 };
struct Env {
  int debug_level = 0;            // HOSTNCCL_DEBUG: 0 none, 1 WARN, 2 INFO, 3 TRACE
  int64_t timeout_ms = 300000;    // HOSTNCCL_TIMEOUT_MS
  int64_t init_delay_ms = 0;      // HOSTNCCL_INIT_DELAY_MS
  uint32_t ifaddr = 0;            // HOSTNCCL_SOCKET_IFADDR (network order); 0 = default route's interface
  int64_t chunk_bytes = 1 << 20;  // HOSTNCCL_CHUNK_BYTES: pipeline segment size of the collectives
  int algo = 0;                   // HOSTNCCL_ALGO: kAlgoAuto, kAlgoRing, kAlgoDirect (AllGather, Broadcast)
  bool eager_connect = true;      // HOSTNCCL_CONNECT: eager (connect every lane in init) or lazy
  bool lean_ucx = true;           // HOSTNCCL_UCX: lean (hostnccl's settings for its UCX context) or ucx (UCX's)
  int peer_errors = 0;            // HOSTNCCL_PEER_ERRORS: kPeerErrorsRemote, kPeerErrorsAll, kPeerErrorsNone
  int64_t drain_ms = 1000;        // HOSTNCCL_DRAIN_MS: how long a failed operation lets live peers finish reads
  int wait = kWaitBlock;          // HOSTNCCL_WAIT: kWaitSpin or kWaitBlock (how an idle operation waits)
};
enum AlgoChoice { kAlgoAuto = 0, kAlgoRing = 1, kAlgoDirect = 2 };
// Which endpoints use UCX's peer-failure mode: those to peers on other hosts, all, none.
enum PeerErrors { kPeerErrorsRemote = 0, kPeerErrorsAll = 1, kPeerErrorsNone = 2 };
constexpr int64_t kMinChunkBytes = 4096, kMaxChunkBytes = int64_t{1} << 30;
[[nodiscard]] ncclResult_t LoadEnv(Env* env);

// ---- logging and the last error ----
enum LogLevel { kWarn = 1, kInfo = 2, kTrace = 3 };
void Log(int level, int rank, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
// Records msg as the last error (ncclGetLastError), logs it at WARN and returns code.
ncclResult_t Fail(ncclResult_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
const char* LastError();
void ResetDebug();

#define HN_CHECK(call)                          \
  do {                                          \
    ncclResult_t hn_res_ = (call);              \
    if (hn_res_ != ncclSuccess) return hn_res_; \
  } while (0)

// ---- the communicator ----
constexpr uint64_t kCommMagic = 0x686f73746e63636cull;  // "hostnccl"

struct UserRedOp {
  bool used = false;
  ncclDataType_t type = ncclFloat32;
  RedOpFull full;
};

struct Comm;
// The argument of an endpoint's UCX error callback.
struct EpFailure {
  Comm* comm = nullptr;
  int peer = -1;
};

struct Comm {
  uint64_t magic = kCommMagic;
  int rank = 0, nranks = 0, cuda_dev = 0;
  Env env;
  ucp_worker_h worker = nullptr;
  int worker_efd = -1;                // the worker's event fd (UCP_FEATURE_WAKEUP); -1: none, waits never block
  int64_t spin_ns = 0;                // HOSTNCCL_WAIT=block: the adaptive spin before sleeping (Wait)
  std::vector<ucp_ep_h> eps;          // per peer, self included
  std::vector<EpFailure> ep_failure;  // per peer, the UCX error callback's argument
  std::vector<int> live_fd;           // liveness TCP socket per peer (self: -1)
  std::vector<uint8_t> peer_state;    // 0 alive, 1 departed (said bye), 2 dead (EOF without bye)
  std::vector<int64_t> peer_gone_ms;  // when the peer was seen leaving
  std::atomic<bool> abort_flag{false};
  std::atomic<int> async_error{ncclSuccess};
  bool blocking = true;  // config.blocking; children made without a config inherit it
  bool one_host = true;  // every rank advertised the same address (set by Bootstrap)
  bool finalized = false, revoked = false, destroyed = false;
  uint64_t coll_seq = 0;
  std::vector<uint64_t> send_seq, recv_seq;            // point-to-point messages per peer
  std::vector<uint64_t> ctrl_send_seq, ctrl_recv_seq;  // child ids sent to / received from each peer
  std::vector<UserRedOp> redops;
  std::unique_ptr<char[]> scratch;  // receive slots of the pipelined reductions, kept between operations
  // Buffers of ConnectEndpoints and ConnectLanes; kept until Teardown when one failed (a peer may still read them:
  // CancelPending).
  std::vector<uint8_t> lanes_buf;
  size_t scratch_bytes = 0;
  std::mutex op_mu;  // held while an operation, teardown or init runs on the comm
  std::thread init_thread;
  std::mutex init_mu;
};

// Live communicators, so a destroyed or foreign pointer is refused without being read.
[[nodiscard]] ncclResult_t CheckComm(ncclComm_t comm, const char* opname);
Comm* AsComm(ncclComm_t comm);
void RegisterComm(Comm* c, bool add);

// Bootstrap: rendezvous through the unique id, UCX wire-up, liveness mesh. Fills comm (rank/nranks set).
[[nodiscard]] ncclResult_t CreateUniqueId(ncclUniqueId* id, int64_t timeout_ms);
[[nodiscard]] ncclResult_t Bootstrap(Comm* comm, const ncclUniqueId& id);
void Teardown(Comm* comm, bool graceful);

// Transport: UCX tagged messages. Tags: [kind:2][src rank:22][seq:40].
enum TagKind : uint64_t { kTagColl = 0, kTagP2p = 1, kTagCtrl = 2, kTagConnect = 3 };
inline uint64_t MakeTag(TagKind kind, int src, uint64_t seq) {
  return (static_cast<uint64_t>(kind) << 62) | (static_cast<uint64_t>(src & 0x3fffff) << 40) | (seq & 0xffffffffffull);
}
struct Pending {
  void* req = nullptr;  // UCX request, nullptr when already complete
  int peer = -1;
  bool is_recv = false;
  size_t expect = 0;
  uint64_t id = 0;  // the caller's name for the request, handed back by WaitSome
};
// sync: completes once the peer has matched it (ucp_tag_send_sync_nbx; Bootstrap's ConnectEndpoints only).
[[nodiscard]] ncclResult_t PostSend(Comm* c, int peer, uint64_t tag, const void* buf, size_t len,
                                    std::vector<Pending>* out, uint64_t id = 0, bool sync = false);
[[nodiscard]] ncclResult_t PostRecv(Comm* c, int peer, uint64_t tag, void* buf, size_t len, std::vector<Pending>* out,
                                    uint64_t id = 0);
// Progresses until every request completes; fails on abort, a dead or departed peer, or when none of reqs
// completes for HOSTNCCL_TIMEOUT_MS (the worker's other activity does not count as progress). When only_peers is
// true, only the peers of the requests count (used across a failed parent).
[[nodiscard]] ncclResult_t WaitAll(Comm* c, std::vector<Pending>* reqs, bool only_peers = false);
// Progresses until at least one request of reqs completes; appends the ids of those that did to *completed and
// removes them from reqs. Fails as WaitAll (all of reqs cancelled). reqs must not be empty.
[[nodiscard]] ncclResult_t WaitSome(Comm* c, std::vector<Pending>* reqs, std::vector<uint64_t>* completed);
// Cancels and frees every request of reqs (after a failure), and empties it. UCX cannot cancel a send (nor a
// receive already matched): a peer's transport (cma: process_vm_readv) may still be reading the buffer, and a
// buffer freed under it is a fatal error in that peer's UCX (abort) when its endpoint is not in peer-failure
// mode. So requests to peers still alive (peer_state 0) are first given HOSTNCCL_DRAIN_MS to complete; only then,
// or once such a peer has left, may the caller release its buffers.
void CancelPending(Comm* c, std::vector<Pending>* reqs);

// Reads the liveness connections without waiting; a peer that died sets the async error to ncclRemoteError.
ncclResult_t CheckPeers(Comm* c);

int64_t NowMs();

}  // namespace hn
