// SPDX-License-Identifier: Apache-2.0
// The NCCL API on host memory: argument checks, communicator life cycle, groups and the collectives.
#include "hn_api.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "hn_algo.h"
#include "hn_core.h"

// Layouts of the opaque types the API hands out (nccl.h and nccl_device/ declare them without a body).
struct ncclWindow_vidmem {
  void* buff;
  size_t size;
  int flags;
};
extern "C" {
struct ncclDevResourceRequirements {
  ncclDevResourceRequirements_t* next;
  size_t bufferSize, bufferAlign;
  uint32_t* outBufferHandle;
  int ginSignalCount;
  int ginCounterCount;
  uint32_t* outGinSignalStart;
  uint32_t* outGinCounterStart;
};
struct ncclLsaBarrierHandle {
  uint32_t bufHandle;
  int nBarriers;
};
struct ncclGinBarrierHandle {
  uint32_t signal0;
  uint32_t bufHandle;
};
struct ncclLLA2AHandle {
  uint32_t bufHandle;
  uint32_t nSlots;
};
}

namespace hn {
namespace {

constexpr unsigned kConfigMagic = 0xcafebeef;
constexpr unsigned kSimInfoMagic = 0x74685283;

ncclResult_t PtrCheck(const void* p, const char* opname, const char* name) {
  if (!p) return Fail(ncclInvalidArgument, "%s : %s argument is NULL", opname, name);
  return ncclSuccess;
}

// Reads the blocking flag, never past config->size (older callers pass smaller structs).
ncclResult_t ParseConfig(const ncclConfig_t* config, const char* opname, bool* blocking) {
  *blocking = true;
  if (!config) return ncclSuccess;
  ncclConfig_t local = NCCL_CONFIG_INITIALIZER;
  local.magic = 0;  // a struct too small to hold the magic is not initialised
  size_t size;
  memcpy(&size, config, sizeof(size));
  memcpy(&local, config, std::min(size, sizeof(ncclConfig_t)));
  if (local.magic != kConfigMagic) {
    return Fail(ncclInvalidArgument, "%s : ncclConfig_t argument not initialized via NCCL_CONFIG_INITIALIZER", opname);
  }
  if (local.version >= NCCL_VERSION(2, 14, 0) && size >= offsetof(ncclConfig_t, blocking) + sizeof(int) &&
      local.blocking != NCCL_CONFIG_UNDEF_INT) {
    if (local.blocking != 0 && local.blocking != 1) {
      return Fail(ncclInvalidArgument, "%s : config.blocking %d is not 0 or 1", opname, local.blocking);
    }
    *blocking = local.blocking == 1;
  }
  return ncclSuccess;
}

// Waits for a non-blocking init to finish; its result is the comm's async error.
ncclResult_t EnsureReady(Comm* c) {
  std::lock_guard<std::mutex> lk(c->init_mu);
  if (c->init_thread.joinable()) c->init_thread.join();
  int e = c->async_error.load();
  if (e != ncclSuccess) return Fail(static_cast<ncclResult_t>(e), "rank %d: communicator is in error state", c->rank);
  return ncclSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// Communicator creation
ncclResult_t InitComm(ncclComm_t* out, int nranks, const ncclUniqueId& id, int rank, bool blocking, int cuda_dev,
                      const char* opname) {
  HN_CHECK(PtrCheck(out, opname, "newcomm"));
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return Fail(ncclInvalidArgument, "Invalid rank requested : %d/%d", rank, nranks);
  }
  Env env;
  HN_CHECK(LoadEnv(&env));
  auto* c = new Comm();
  c->rank = rank;
  c->nranks = nranks;
  c->cuda_dev = cuda_dev;
  c->env = env;
  c->blocking = blocking;
  RegisterComm(c, true);
  *out = reinterpret_cast<ncclComm_t>(c);
  if (!blocking) {
    c->async_error = ncclInProgress;
    c->init_thread = std::thread([c, id] {
      ncclResult_t r = Bootstrap(c, id);
      c->async_error = r;
    });
    return ncclInProgress;
  }
  ncclResult_t r = Bootstrap(c, id);
  if (r != ncclSuccess) {
    Teardown(c, false);
    RegisterComm(c, false);
    delete c;
    *out = nullptr;
  }
  return r;
}

void FreeComm(Comm* c, bool graceful) {
  {
    std::lock_guard<std::mutex> lk(c->init_mu);
    if (c->init_thread.joinable()) c->init_thread.join();
  }
  RegisterComm(c, false);
  {
    std::lock_guard<std::mutex> lk(c->op_mu);
    Teardown(c, graceful);
    c->magic = 0;
  }
  delete c;
}

// ---------------------------------------------------------------------------------------------------------
// Operations
enum class Kind {
  kAllReduce,
  kBroadcast,
  kReduce,
  kAllGather,
  kReduceScatter,
  kAlltoAll,
  kGather,
  kScatter,
  kSend,
  kRecv
};

struct Task {
  Comm* c;
  Kind kind;
  const void* send;
  void* recv;
  size_t count;
  ncclDataType_t type;
  RedOpFull op;
  int root;  // root, or peer for send/recv
};

struct GroupState {
  int depth = 0;
  std::vector<Task> tasks;
  ncclResult_t error = ncclSuccess;
};
thread_local GroupState g_group;

struct Chunks {
  size_t base, rem;
  size_t Off(int c) const { return base * c + std::min<size_t>(c, rem); }
  size_t Len(int c) const { return base + (static_cast<size_t>(c) < rem ? 1 : 0); }
};

void DropPending(Comm* c, std::vector<Pending>* reqs) {
  for (Pending& p : *reqs) {
    if (!p.req) continue;
    ucp_request_cancel(c->worker, p.req);
    ucp_request_free(p.req);
  }
  reqs->clear();
  for (int i = 0; i < 16; ++i) ucp_worker_progress(c->worker);  // lets the cancelled requests complete
}

// AllGather and Broadcast: ring and chain across hosts, where every rank's link is the limit and a direct
// scheme would make the sender's link carry n-1 copies; direct within one host, where each receiver copies
// straight out of the sender's memory (UCX's CMA rendezvous) and n-1 receivers copy in parallel, while a ring
// would add n-1 hops that each need the forwarding process to be scheduled. HOSTNCCL_ALGO overrides.
bool UseRing(const Comm* c) {
  if (c->env.algo == kAlgoRing) return true;
  if (c->env.algo == kAlgoDirect) return false;
  return !c->one_host;
}

// AllReduce: the direct reduce-scatter + all-gather unless HOSTNCCL_ALGO=ring asks for the chain (same bits). The
// chain moves 2x the buffer per rank where the direct scheme moves 2(n-1)/n of it, and measured slower or even on
// one host (docs/benchmarks.md); it is for links where only the ring neighbour is fast.
bool UseChainAllReduce(const Comm* c) { return c->env.algo == kAlgoRing; }

ncclResult_t RunColl(Comm* c, const Task& t) {
  const int n = c->nranks, me = c->rank;
  const size_t es = TypeSize(t.type);
  const char* send = static_cast<const char*>(t.send);
  char* recv = static_cast<char*>(t.recv);
  std::vector<Pending> reqs;
  ncclResult_t res = ncclSuccess;
  switch (t.kind) {
    // The reductions, AllGather and Broadcast are pipelined (hn_algo.h); the others are direct.
    case Kind::kAllReduce: {
      if (n > 1 && UseChainAllReduce(c)) return ChainAllReduce(c, send, recv, t.count, t.type, t.op);
      // Block r (count/n elements, the first count%n one longer) is reduced by rank r.
      Chunks ch{t.count / n, t.count % n};
      std::vector<Block> blocks(n);
      for (int r = 0; r < n; ++r) blocks[r] = Block{ch.Off(r), ch.Len(r)};
      return PipelinedReduce(c, send, recv + ch.Off(me) * es, recv, blocks, t.type, t.op, true);
    }
    case Kind::kReduceScatter: {
      std::vector<Block> blocks(n);
      for (int r = 0; r < n; ++r) blocks[r] = Block{t.count * r, t.count};
      return PipelinedReduce(c, send, recv, recv, blocks, t.type, t.op, false);
    }
    case Kind::kReduce: {
      // The root's block is the whole buffer; the others own nothing.
      std::vector<Block> blocks(n);
      blocks[t.root] = Block{0, t.count};
      return PipelinedReduce(c, send, recv, recv, blocks, t.type, t.op, false);
    }
    case Kind::kBroadcast:
      if (UseRing(c)) return ChainBroadcast(c, send, recv, t.count * es, t.root);
      if (me == t.root) {
        for (int r = 0; r < n; ++r) {
          if (r != me) HN_CHECK(PostSend(c, r, CollTag(c, me, 0), send, t.count * es, &reqs));
        }
        if (send != recv) memmove(recv, send, t.count * es);
      } else {
        HN_CHECK(PostRecv(c, t.root, CollTag(c, t.root, 0), recv, t.count * es, &reqs));
      }
      break;
    case Kind::kAllGather: {
      const size_t bytes = t.count * es;
      if (UseRing(c)) return RingAllGather(c, send, recv, bytes);
      for (int r = 0; r < n; ++r) {
        if (r == me) continue;
        HN_CHECK(PostSend(c, r, CollTag(c, me, 0), send, bytes, &reqs));
        HN_CHECK(PostRecv(c, r, CollTag(c, r, 0), recv + bytes * r, bytes, &reqs));
      }
      if (send != recv + bytes * me) memmove(recv + bytes * me, send, bytes);
      break;
    }
    case Kind::kAlltoAll: {
      const size_t bytes = t.count * es;
      std::vector<char> copy;
      if (send == recv && bytes) {  // in place: receives would overwrite what is still to be sent
        copy.assign(send, send + bytes * n);
        send = copy.data();
      }
      for (int r = 0; r < n; ++r) {
        if (r == me) continue;
        HN_CHECK(PostSend(c, r, CollTag(c, me, 0), send + bytes * r, bytes, &reqs));
        HN_CHECK(PostRecv(c, r, CollTag(c, r, 0), recv + bytes * r, bytes, &reqs));
      }
      if (send + bytes * me != recv + bytes * me) memmove(recv + bytes * me, send + bytes * me, bytes);
      res = WaitAll(c, &reqs);
      break;
    }
    case Kind::kGather: {
      const size_t bytes = t.count * es;
      if (me != t.root) {
        HN_CHECK(PostSend(c, t.root, CollTag(c, me, 0), send, bytes, &reqs));
        break;
      }
      for (int r = 0; r < n; ++r) {
        if (r != me) HN_CHECK(PostRecv(c, r, CollTag(c, r, 0), recv + bytes * r, bytes, &reqs));
      }
      if (send != recv + bytes * me) memmove(recv + bytes * me, send, bytes);
      break;
    }
    case Kind::kScatter: {
      const size_t bytes = t.count * es;
      if (me != t.root) {
        HN_CHECK(PostRecv(c, t.root, CollTag(c, t.root, 0), recv, bytes, &reqs));
        break;
      }
      for (int r = 0; r < n; ++r) {
        if (r != me) HN_CHECK(PostSend(c, r, CollTag(c, me, 0), send + bytes * r, bytes, &reqs));
      }
      if (send + bytes * me != recv) memmove(recv, send + bytes * me, bytes);
      break;
    }
    default:
      return Fail(ncclInternalError, "unexpected operation kind");
  }
  if (res == ncclSuccess) res = WaitAll(c, &reqs);
  return res;
}

// Runs one communicator's share of a group: point-to-point posted first (so any order of sends and receives
// across ranks completes), then the collectives in program order, then the point-to-point completions.
ncclResult_t RunTasks(Comm* c, const std::vector<Task>& tasks) {
  std::lock_guard<std::mutex> lk(c->op_mu);
  if (c->abort_flag.load()) return Fail(ncclInvalidUsage, "rank %d: communicator was aborted", c->rank);
  if (c->revoked) return Fail(ncclInvalidUsage, "rank %d: communicator was revoked", c->rank);
  int e = c->async_error.load();
  if (e != ncclSuccess) return Fail(static_cast<ncclResult_t>(e), "rank %d: communicator is in error state", c->rank);
  std::vector<Pending> p2p;
  ncclResult_t res = ncclSuccess;
  for (const Task& t : tasks) {
    if (t.kind != Kind::kSend && t.kind != Kind::kRecv) continue;
    const size_t bytes = t.count * TypeSize(t.type);
    if (t.kind == Kind::kSend) {
      res = PostSend(c, t.root, MakeTag(kTagP2p, c->rank, c->send_seq[t.root]++), t.send, bytes, &p2p);
    } else {
      res = PostRecv(c, t.root, MakeTag(kTagP2p, t.root, c->recv_seq[t.root]++), t.recv, bytes, &p2p);
    }
    if (res != ncclSuccess) break;
  }
  for (const Task& t : tasks) {
    if (res != ncclSuccess) break;
    if (t.kind == Kind::kSend || t.kind == Kind::kRecv) continue;
    RedOpFull op = t.op;
    res = RunColl(c, t);
    c->coll_seq++;
    (void)op;
  }
  if (res == ncclSuccess)
    res = WaitAll(c, &p2p);
  else
    DropPending(c, &p2p);
  return res;
}

ncclResult_t RunGroup(std::vector<Task>& tasks) {
  std::vector<Comm*> order;
  std::map<Comm*, std::vector<Task>> per;
  for (Task& t : tasks) {
    if (!per.count(t.c)) order.push_back(t.c);
    per[t.c].push_back(t);
  }
  tasks.clear();
  if (order.size() == 1) return RunTasks(order[0], per[order[0]]);
  // Several communicators (e.g. ncclCommInitAll's ranks driven from one thread): each runs on its own thread.
  std::vector<ncclResult_t> results(order.size(), ncclSuccess);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < order.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = RunTasks(order[i], per[order[i]]); });
  }
  for (auto& th : threads) th.join();
  for (ncclResult_t r : results) {
    if (r != ncclSuccess) return r;
  }
  return ncclSuccess;
}

ncclResult_t Submit(const Task& t) {
  if (g_group.depth > 0) {
    g_group.tasks.push_back(t);
    return ncclSuccess;
  }
  std::vector<Task> one{t};
  return RunGroup(one);
}

ncclResult_t ResolveOp(Comm* c, ncclRedOp_t op, ncclDataType_t type, const char* opname, RedOpFull* out) {
  switch (op) {
    case ncclSum:
      out->kind = RedKind::kSum;
      return ncclSuccess;
    case ncclProd:
      out->kind = RedKind::kProd;
      return ncclSuccess;
    case ncclMax:
      out->kind = RedKind::kMax;
      return ncclSuccess;
    case ncclMin:
      out->kind = RedKind::kMin;
      return ncclSuccess;
    case ncclAvg: {
      const float inv = static_cast<float>(1.0 / c->nranks);
      out->kind = RedKind::kPreMulSum;
      out->scalar = 0;
      switch (type) {
        case ncclFloat32:
          memcpy(&out->scalar, &inv, 4);
          break;
        case ncclFloat64: {
          double d = 1.0 / c->nranks;
          memcpy(&out->scalar, &d, 8);
          break;
        }
        case ncclFloat16:
          out->scalar = FloatToHalf(inv);
          break;
        case ncclBfloat16:
          out->scalar = FloatToBf16(inv);
          break;
        case ncclFloat8e4m3:
          out->scalar = FloatToE4m3(inv);
          break;
        case ncclFloat8e5m2:
          out->scalar = FloatToE5m2(inv);
          break;
        default:
          out->kind = RedKind::kSumPostDiv;
          out->divisor = c->nranks;
          break;
      }
      return ncclSuccess;
    }
    default:
      break;
  }
  int ix = static_cast<int>(op) - static_cast<int>(ncclNumOps);
  if (static_cast<int>(op) < 0 || ix >= static_cast<int>(c->redops.size()) || !c->redops[ix].used) {
    return Fail(ncclInvalidArgument, "%s : reduction operation %d unknown to this communicator", opname,
                static_cast<int>(op));
  }
  if (c->redops[ix].type != type) {
    return Fail(ncclInvalidArgument,
                "Data type supplied to user-created ncclRedOp_t does not match type given to reduction operation");
  }
  *out = c->redops[ix].full;
  return ncclSuccess;
}

// NCCL's ArgsCheck, plus the buffers (NULL with a non-zero count is an invalid argument).
ncclResult_t EnqueueChecked(Kind kind, const char* opname, const void* send, void* recv, size_t count,
                            ncclDataType_t type, ncclRedOp_t op, bool has_op, int root, ncclComm_t comm) {
  HN_CHECK(CheckComm(comm, opname));
  Comm* c = AsComm(comm);
  HN_CHECK(EnsureReady(c));
  if (c->finalized || c->revoked) {
    return Fail(ncclInvalidUsage, "%s : communicator was finalized or revoked", opname);
  }
  if (root < 0 || root >= c->nranks) {
    return Fail(ncclInvalidArgument, "%s : invalid %s %d (should be in the 0..%d range)", opname,
                (kind == Kind::kSend || kind == Kind::kRecv) ? "peer" : "root", root, c->nranks - 1);
  }
  if (static_cast<int>(type) < 0 || static_cast<int>(type) >= ncclNumTypes) {
    return Fail(ncclInvalidArgument, "%s : invalid type %d", opname, static_cast<int>(type));
  }
  Task t{c, kind, send, recv, count, type, RedOpFull{}, root};
  if (has_op) {
    if (static_cast<int>(op) < 0) return Fail(ncclInvalidArgument, "%s : invalid reduction operation %d", opname, op);
    HN_CHECK(ResolveOp(c, op, type, opname, &t.op));
  }
  if (count > 0) {
    const bool is_root = c->rank == root;
    bool need_send = true, need_recv = true;
    switch (kind) {
      case Kind::kBroadcast:
        need_send = is_root;
        break;
      case Kind::kReduce:
      case Kind::kGather:
        need_recv = is_root;
        break;
      case Kind::kScatter:
        need_send = is_root;
        break;
      case Kind::kSend:
        need_recv = false;
        break;
      case Kind::kRecv:
        need_send = false;
        break;
      default:
        break;
    }
    if (need_send && !send) return Fail(ncclInvalidArgument, "%s : sendbuff argument is NULL", opname);
    if (need_recv && !recv) return Fail(ncclInvalidArgument, "%s : recvbuff argument is NULL", opname);
  }
  Log(kTrace, c->rank,
      "%s: opCount %llx sendbuff %p recvbuff %p count %zu datatype %d op %d root %d comm %p [nranks=%d]", opname,
      static_cast<unsigned long long>(c->coll_seq), send, static_cast<void*>(recv), count, static_cast<int>(type),
      static_cast<int>(op), root, static_cast<void*>(c), c->nranks);
  const unsigned long long seq = c->coll_seq;
  const ncclResult_t r = Submit(t);
  Log(kTrace, c->rank, "%s: opCount %llx returned %d", opname, seq, r);
  return r;
}

// Inside a group, an error also fails the ncclGroupEnd that closes it (as in NCCL).
ncclResult_t Enqueue(Kind kind, const char* opname, const void* send, void* recv, size_t count, ncclDataType_t type,
                     ncclRedOp_t op, bool has_op, int root, ncclComm_t comm) {
  ncclResult_t r = EnqueueChecked(kind, opname, send, recv, count, type, op, has_op, root, comm);
  if (r != ncclSuccess && g_group.depth > 0 && g_group.error == ncclSuccess) g_group.error = r;
  return r;
}

// Each member of a new child communicator gets the child's unique id from the child's rank 0 (the leader),
// over the parent's transport. Only the leader and the member need to be alive. The tag counts the ids sent
// from the leader to that member (as point-to-point does), not the parent's children: ranks excluded from a
// shrink take no part in it, so a count of children would differ between ranks afterwards, and the next
// split's id would then never match.
ncclResult_t DistributeId(Comm* parent, const std::vector<int>& members, ncclUniqueId* id) {
  const int leader = members[0];
  std::vector<Pending> reqs;
  std::lock_guard<std::mutex> lk(parent->op_mu);
  if (parent->rank == leader) {
    HN_CHECK(CreateUniqueId(id, 0));
    for (size_t i = 1; i < members.size(); ++i) {
      const int m = members[i];
      ncclResult_t r =
          PostSend(parent, m, MakeTag(kTagCtrl, leader, parent->ctrl_send_seq[m]++), id, sizeof(*id), &reqs);
      if (r != ncclSuccess) {
        CancelPending(parent, &reqs);
        return r;
      }
    }
  } else {
    HN_CHECK(
        PostRecv(parent, leader, MakeTag(kTagCtrl, leader, parent->ctrl_recv_seq[leader]++), id, sizeof(*id), &reqs));
  }
  return WaitAll(parent, &reqs, /*only_peers=*/true);
}

}  // namespace

// =========================================================================================================
// The API
namespace api {

ncclResult_t MemAlloc(void** ptr, size_t size) {
  HN_CHECK(PtrCheck(ptr, "ncclMemAlloc", "ptr"));
  size_t rounded = ((size ? size : 1) + 4095) / 4096 * 4096;
  void* p = aligned_alloc(4096, rounded);
  if (!p) return Fail(ncclSystemError, "ncclMemAlloc: out of host memory (%zu bytes)", size);
  *ptr = p;
  return ncclSuccess;
}

ncclResult_t MemFree(void* ptr) {
  free(ptr);
  return ncclSuccess;
}

ncclResult_t GetVersion(int* version) {
  HN_CHECK(PtrCheck(version, "ncclGetVersion", "version"));
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t GetUniqueId(ncclUniqueId* id) {
  HN_CHECK(PtrCheck(id, "ncclGetUniqueId", "uniqueId"));
  return CreateUniqueId(id, 0);
}

ncclResult_t CommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  bool blocking;
  HN_CHECK(ParseConfig(config, "ncclCommInitRankConfig", &blocking));
  return InitComm(comm, nranks, id, rank, blocking, 0, "ncclCommInitRankConfig");
}

ncclResult_t CommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return InitComm(comm, nranks, id, rank, true, 0, "ncclCommInitRank");
}

ncclResult_t CommInitRankScalable(ncclComm_t* comm, int nranks, int myrank, int nId, ncclUniqueId* ids,
                                  ncclConfig_t* config) {
  HN_CHECK(PtrCheck(ids, "ncclCommInitRankScalable", "commIds"));
  if (nId < 1 || nId > nranks) {
    return Fail(ncclInvalidArgument, "ncclCommInitRankScalable : nId %d out of range 1..%d", nId, nranks);
  }
  bool blocking;
  HN_CHECK(ParseConfig(config, "ncclCommInitRankScalable", &blocking));
  // One rendezvous serves every rank here: the first id's.
  return InitComm(comm, nranks, ids[0], myrank, blocking, 0, "ncclCommInitRankScalable");
}

ncclResult_t CommInitAll(ncclComm_t* comms, int ndev, const int* devlist) {
  HN_CHECK(PtrCheck(comms, "ncclCommInitAll", "comms"));
  if (ndev < 1) return Fail(ncclInvalidArgument, "ncclCommInitAll : invalid device count %d", ndev);
  if (devlist) {
    for (int i = 0; i < ndev; ++i) {
      for (int j = 0; j < i; ++j) {
        if (devlist[i] == devlist[j])
          return Fail(ncclInvalidUsage, "ncclCommInitAll : duplicate device %d", devlist[i]);
      }
    }
  }
  ncclUniqueId id;
  HN_CHECK(CreateUniqueId(&id, 0));
  std::vector<ncclResult_t> res(ndev, ncclSuccess);
  std::vector<std::thread> th;
  for (int i = 0; i < ndev; ++i) {
    th.emplace_back(
        [&, i] { res[i] = InitComm(&comms[i], ndev, id, i, true, devlist ? devlist[i] : i, "ncclCommInitAll"); });
  }
  for (auto& t : th) t.join();
  for (int i = 0; i < ndev; ++i) {
    if (res[i] == ncclSuccess) continue;
    for (int j = 0; j < ndev; ++j) {
      if (res[j] == ncclSuccess) FreeComm(AsComm(comms[j]), false);
      comms[j] = nullptr;
    }
    return res[i];
  }
  return ncclSuccess;
}

ncclResult_t CommFinalize(ncclComm_t comm) {
  if (!comm) return ncclSuccess;  // as NCCL
  HN_CHECK(CheckComm(comm, "ncclCommFinalize"));
  Comm* c = AsComm(comm);
  HN_CHECK(EnsureReady(c));
  std::lock_guard<std::mutex> lk(c->op_mu);
  c->finalized = true;
  return ncclSuccess;
}

ncclResult_t CommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;  // as NCCL
  HN_CHECK(CheckComm(comm, "ncclCommDestroy"));
  FreeComm(AsComm(comm), true);
  return ncclSuccess;
}

ncclResult_t CommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  HN_CHECK(CheckComm(comm, "ncclCommAbort"));
  Comm* c = AsComm(comm);
  c->abort_flag = true;  // an operation waiting on another thread returns, then teardown takes the lock
  FreeComm(c, false);
  return ncclSuccess;
}

ncclResult_t CommRevoke(ncclComm_t comm, int revokeFlags) {
  if (!comm) return ncclSuccess;
  HN_CHECK(CheckComm(comm, "ncclCommRevoke"));
  if (revokeFlags != NCCL_REVOKE_DEFAULT) {
    return Fail(ncclInvalidArgument, "ncclCommRevoke : revokeFlags %d must be NCCL_REVOKE_DEFAULT", revokeFlags);
  }
  Comm* c = AsComm(comm);
  if (c->finalized || c->revoked)
    return Fail(ncclInvalidArgument, "ncclCommRevoke : comm already finalized or revoked");
  c->abort_flag = true;  // stop an operation in flight on another thread
  {
    std::lock_guard<std::mutex> lk(c->init_mu);
    if (c->init_thread.joinable()) c->init_thread.join();
  }
  std::lock_guard<std::mutex> lk(c->op_mu);
  c->abort_flag = false;
  c->revoked = true;
  c->finalized = true;
  return ncclSuccess;
}

ncclResult_t CommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  HN_CHECK(CheckComm(comm, "ncclCommSplit"));
  HN_CHECK(PtrCheck(newcomm, "ncclCommSplit", "newcomm"));
  Comm* c = AsComm(comm);
  HN_CHECK(EnsureReady(c));
  bool blocking;
  HN_CHECK(ParseConfig(config, "ncclCommSplit", &blocking));
  if (!config) blocking = c->blocking;  // the child inherits the parent's configuration
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR)
    return Fail(ncclInvalidArgument, "ncclCommSplit : invalid color %d", color);
  *newcomm = nullptr;
  const int n = c->nranks;
  std::vector<int32_t> mine{color, key}, all(2 * n);
  Task t{c, Kind::kAllGather, mine.data(), all.data(), 2, ncclInt32, RedOpFull{}, 0};
  HN_CHECK(RunTasks(c, {t}));
  if (color == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
  std::vector<int> members;
  for (int r = 0; r < n; ++r) {
    if (all[2 * r] == color) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
  int newrank = static_cast<int>(std::find(members.begin(), members.end(), c->rank) - members.begin());
  ncclUniqueId id;
  HN_CHECK(DistributeId(c, members, &id));
  ncclResult_t r =
      InitComm(newcomm, static_cast<int>(members.size()), id, newrank, blocking, c->cuda_dev, "ncclCommSplit");
  return r;
}

ncclResult_t CommShrink(ncclComm_t comm, int* exclude, int count, ncclComm_t* newcomm, ncclConfig_t* config,
                        int flags) {
  HN_CHECK(CheckComm(comm, "ncclCommShrink"));
  HN_CHECK(PtrCheck(newcomm, "ncclCommShrink", "newcomm"));
  HN_CHECK(PtrCheck(exclude, "ncclCommShrink", "excludeRanksList"));
  if (count <= 0) return Fail(ncclInvalidArgument, "ncclCommShrink : excludeRanksCount %d must be > 0", count);
  if (flags != NCCL_SHRINK_DEFAULT && flags != NCCL_SHRINK_ABORT) {
    return Fail(ncclInvalidArgument, "ncclCommShrink : unknown shrinkFlags %d", flags);
  }
  Comm* c = AsComm(comm);
  {
    std::lock_guard<std::mutex> lk(c->init_mu);
    if (c->init_thread.joinable()) c->init_thread.join();
  }
  bool blocking;
  HN_CHECK(ParseConfig(config, "ncclCommShrink", &blocking));
  if (!config) blocking = c->blocking;  // the child inherits the parent's configuration
  std::vector<int> ex(exclude, exclude + count);
  std::sort(ex.begin(), ex.end());
  for (int r : ex) {
    if (r < 0 || r >= c->nranks) return Fail(ncclInvalidArgument, "ncclCommShrink : excluded rank %d out of range", r);
    if (r == c->rank) return Fail(ncclInvalidArgument, "ncclCommShrink : rank %d is in its own exclude list", r);
  }
  if (flags == NCCL_SHRINK_DEFAULT) HN_CHECK(EnsureReady(c));
  *newcomm = nullptr;
  std::vector<int> members;
  for (int r = 0; r < c->nranks; ++r) {
    if (!std::binary_search(ex.begin(), ex.end(), r)) members.push_back(r);
  }
  int newrank = static_cast<int>(std::find(members.begin(), members.end(), c->rank) - members.begin());
  ncclUniqueId id;
  HN_CHECK(DistributeId(c, members, &id));
  return InitComm(newcomm, static_cast<int>(members.size()), id, newrank, blocking, c->cuda_dev, "ncclCommShrink");
}

const char* GetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (run with HOSTNCCL_DEBUG=INFO for details)";
    case ncclSystemError:
      return "unhandled system error (run with HOSTNCCL_DEBUG=INFO for details)";
    case ncclInternalError:
      return "internal error - please report this issue to the hostnccl developers";
    case ncclInvalidArgument:
      return "invalid argument (run with HOSTNCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
      return "invalid usage (run with HOSTNCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

const char* GetLastError(ncclComm_t) { return LastError(); }

void ResetDebugInit() { ResetDebug(); }
void ResetDebugInitInternal() { ResetDebug(); }

ncclResult_t CommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  HN_CHECK(CheckComm(comm, "ncclCommGetAsyncError"));
  HN_CHECK(PtrCheck(asyncError, "ncclCommGetAsyncError", "asyncError"));
  Comm* c = AsComm(comm);
  // Between operations nobody reads the liveness connections: look now, unless an operation is running.
  if (c->async_error.load() == ncclSuccess) {
    std::unique_lock<std::mutex> lk(c->op_mu, std::try_to_lock);
    if (lk.owns_lock()) (void)CheckPeers(c);
  }
  *asyncError = static_cast<ncclResult_t>(c->async_error.load());
  return ncclSuccess;
}

ncclResult_t CommCount(const ncclComm_t comm, int* count) {
  HN_CHECK(CheckComm(comm, "ncclCommCount"));
  HN_CHECK(PtrCheck(count, "ncclCommCount", "count"));
  *count = AsComm(comm)->nranks;
  return ncclSuccess;
}

ncclResult_t CommCuDevice(const ncclComm_t comm, int* device) {
  HN_CHECK(CheckComm(comm, "ncclCommCuDevice"));
  HN_CHECK(PtrCheck(device, "ncclCommCuDevice", "device"));
  *device = AsComm(comm)->cuda_dev;
  return ncclSuccess;
}

ncclResult_t CommUserRank(const ncclComm_t comm, int* rank) {
  HN_CHECK(CheckComm(comm, "ncclCommUserRank"));
  HN_CHECK(PtrCheck(rank, "ncclCommUserRank", "rank"));
  *rank = AsComm(comm)->rank;
  return ncclSuccess;
}

namespace {
struct Registration {
  uint64_t magic;
  Comm* comm;
  void* buff;
  size_t size;
};
constexpr uint64_t kRegMagic = 0x6e6f697473696765ull;
}  // namespace

ncclResult_t CommRegister(const ncclComm_t comm, void* buff, size_t size, void** handle) {
  HN_CHECK(CheckComm(comm, "ncclCommRegister"));
  HN_CHECK(PtrCheck(handle, "ncclCommRegister", "handle"));
  // Host memory needs no registration for the transport; the handle records the range.
  *handle = new Registration{kRegMagic, AsComm(comm), buff, size};
  return ncclSuccess;
}

ncclResult_t CommDeregister(const ncclComm_t comm, void* handle) {
  HN_CHECK(CheckComm(comm, "ncclCommDeregister"));
  auto* reg = static_cast<Registration*>(handle);
  if (!reg || reg->magic != kRegMagic || reg->comm != AsComm(comm)) {
    return Fail(ncclInvalidArgument, "ncclCommDeregister : handle %p unknown to this communicator", handle);
  }
  reg->magic = 0;
  delete reg;
  return ncclSuccess;
}

ncclResult_t CommWindowRegister(ncclComm_t comm, void* buff, size_t size, ncclWindow_t* win, int winFlags) {
  HN_CHECK(CheckComm(comm, "ncclCommWindowRegister"));
  HN_CHECK(PtrCheck(win, "ncclCommWindowRegister", "win"));
  HN_CHECK(EnsureReady(AsComm(comm)));
  *win = new ncclWindow_vidmem{buff, size, winFlags};
  return ncclSuccess;
}

ncclResult_t CommWindowDeregister(ncclComm_t comm, ncclWindow_t win) {
  HN_CHECK(CheckComm(comm, "ncclCommWindowDeregister"));
  HN_CHECK(PtrCheck(win, "ncclCommWindowDeregister", "win"));
  delete win;
  return ncclSuccess;
}

ncclResult_t RedOpCreatePreMulSum(ncclRedOp_t* op, void* scalar, ncclDataType_t datatype,
                                  ncclScalarResidence_t residence, ncclComm_t comm) {
  HN_CHECK(CheckComm(comm, "ncclRedOpCreatePreMulSum"));
  HN_CHECK(PtrCheck(op, "ncclRedOpCreatePreMulSum", "op"));
  HN_CHECK(PtrCheck(scalar, "ncclRedOpCreatePreMulSum", "scalar"));
  Comm* c = AsComm(comm);
  HN_CHECK(EnsureReady(c));
  if (static_cast<int>(datatype) < 0 || static_cast<int>(datatype) >= ncclNumTypes) {
    return Fail(ncclInvalidArgument, "ncclRedOpCreatePreMulSum : invalid type %d", static_cast<int>(datatype));
  }
  if (residence != ncclScalarDevice && residence != ncclScalarHostImmediate) {
    return Fail(ncclInvalidArgument, "ncclRedOpCreatePreMulSum : invalid residence %d", static_cast<int>(residence));
  }
  std::lock_guard<std::mutex> lk(c->op_mu);
  size_t ix = 0;
  while (ix < c->redops.size() && c->redops[ix].used) ++ix;
  if (ix == c->redops.size()) c->redops.emplace_back();
  UserRedOp& u = c->redops[ix];
  u.used = true;
  u.type = datatype;
  u.full = RedOpFull{};
  u.full.kind = RedKind::kPreMulSum;
  if (residence == ncclScalarHostImmediate)
    memcpy(&u.full.scalar, scalar, TypeSize(datatype));
  else
    u.full.scalar_ptr = scalar;  // "device" residence: dereferenced when the operation runs
  *op = static_cast<ncclRedOp_t>(static_cast<int>(ncclNumOps) + static_cast<int>(ix));
  return ncclSuccess;
}

ncclResult_t RedOpDestroy(ncclRedOp_t op, ncclComm_t comm) {
  if (static_cast<int>(op) >= 0 && static_cast<int>(op) < static_cast<int>(ncclNumOps)) {
    return Fail(ncclInvalidArgument, "ncclRedOpDestroy : operator is a NCCL builtin.");
  }
  if (static_cast<int>(op) < 0) return Fail(ncclInvalidArgument, "ncclRedOpDestroy :  operator is garbage.");
  if (!comm) return Fail(ncclInvalidArgument, "ncclRedOpDestroy : invalid communicator passed.");
  HN_CHECK(CheckComm(comm, "ncclRedOpDestroy"));
  Comm* c = AsComm(comm);
  std::lock_guard<std::mutex> lk(c->op_mu);
  size_t ix = static_cast<size_t>(op) - ncclNumOps;
  if (ix >= c->redops.size() || !c->redops[ix].used) {
    return Fail(ncclInvalidArgument, "ncclRedOpDestroy : operator unknown to this communicator.");
  }
  c->redops[ix].used = false;
  return ncclSuccess;
}

ncclResult_t Reduce(const void* s, void* r, size_t count, ncclDataType_t t, ncclRedOp_t op, int root, ncclComm_t comm,
                    cudaStream_t) {
  return Enqueue(Kind::kReduce, "Reduce", s, r, count, t, op, true, root, comm);
}
ncclResult_t Bcast(void* buff, size_t count, ncclDataType_t t, int root, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kBroadcast, "Broadcast", buff, buff, count, t, ncclSum, false, root, comm);
}
ncclResult_t Broadcast(const void* s, void* r, size_t count, ncclDataType_t t, int root, ncclComm_t comm,
                       cudaStream_t) {
  return Enqueue(Kind::kBroadcast, "Broadcast", s, r, count, t, ncclSum, false, root, comm);
}
ncclResult_t AllReduce(const void* s, void* r, size_t count, ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm,
                       cudaStream_t) {
  return Enqueue(Kind::kAllReduce, "AllReduce", s, r, count, t, op, true, 0, comm);
}
ncclResult_t ReduceScatter(const void* s, void* r, size_t count, ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t) {
  return Enqueue(Kind::kReduceScatter, "ReduceScatter", s, r, count, t, op, true, 0, comm);
}
ncclResult_t AllGather(const void* s, void* r, size_t count, ncclDataType_t t, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kAllGather, "AllGather", s, r, count, t, ncclSum, false, 0, comm);
}
ncclResult_t AlltoAll(const void* s, void* r, size_t count, ncclDataType_t t, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kAlltoAll, "AlltoAll", s, r, count, t, ncclSum, false, 0, comm);
}
ncclResult_t Gather(const void* s, void* r, size_t count, ncclDataType_t t, int root, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kGather, "Gather", s, r, count, t, ncclSum, false, root, comm);
}
ncclResult_t Scatter(const void* s, void* r, size_t count, ncclDataType_t t, int root, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kScatter, "Scatter", s, r, count, t, ncclSum, false, root, comm);
}
ncclResult_t Send(const void* s, size_t count, ncclDataType_t t, int peer, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kSend, "Send", s, nullptr, count, t, ncclSum, false, peer, comm);
}
ncclResult_t Recv(void* r, size_t count, ncclDataType_t t, int peer, ncclComm_t comm, cudaStream_t) {
  return Enqueue(Kind::kRecv, "Recv", nullptr, r, count, t, ncclSum, false, peer, comm);
}

ncclResult_t GroupStart() {
  g_group.depth++;
  return ncclSuccess;
}

ncclResult_t GroupEnd() {
  if (g_group.depth == 0) return Fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call.");
  if (--g_group.depth > 0) return ncclSuccess;
  ncclResult_t err = g_group.error;
  g_group.error = ncclSuccess;
  if (err != ncclSuccess) {
    g_group.tasks.clear();
    return err;
  }
  return RunGroup(g_group.tasks);
}

ncclResult_t GroupSimulateEnd(ncclSimInfo_t* simInfo) {
  // As NCCL's ncclGroupEndInternal(simInfo): NULL is a plain ncclGroupEnd; otherwise the outermost level
  // checks the group error and the struct, estimates the time and ends the group without running it.
  if (g_group.depth == 0) return Fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call.");
  if (!simInfo) return GroupEnd();
  if (--g_group.depth > 0) return ncclSuccess;
  ncclResult_t err = g_group.error;
  g_group.error = ncclSuccess;
  std::vector<Task> tasks;
  tasks.swap(g_group.tasks);
  if (err != ncclSuccess) return err;
  ncclSimInfo_t local = NCCL_SIM_INFO_INITIALIZER;
  local.magic = 0;  // a struct too small to hold the magic is not initialised
  size_t size;
  memcpy(&size, &simInfo->size, sizeof(size));
  size = std::min(size, sizeof(ncclSimInfo_t));
  memcpy(&local, simInfo, size);
  if (local.magic != kSimInfoMagic) {
    return Fail(ncclInvalidArgument, "ncclSimInfo_t argument not initialized via NCCL_SIM_INFO_INITIALIZER");
  }
  // Estimate: the bytes each rank moves, at 1 GB/s, in microseconds.
  double bytes = 0;
  for (const Task& t : tasks) bytes += static_cast<double>(t.count * TypeSize(t.type));
  local.estimatedTime = static_cast<float>(bytes / 1e3);
  memcpy(simInfo, &local, size);
  return ncclSuccess;
}

// ---- host functions of the device API ----
ncclResult_t DevCommCreate(ncclComm_t comm, ncclDevCommRequirements_t const* reqs, ncclDevComm_t*) {
  HN_CHECK(CheckComm(comm, "ncclDevCommCreate"));
  HN_CHECK(PtrCheck(reqs, "ncclDevCommCreate", "reqs"));
  return Fail(ncclInvalidUsage, "Communicator does not support symmetric memory! (hostnccl has no device memory)");
}

ncclResult_t DevCommDestroy(ncclComm_t comm, ncclDevComm_t const* devComm) {
  HN_CHECK(CheckComm(comm, "ncclDevCommDestroy"));
  HN_CHECK(PtrCheck(devComm, "ncclDevCommDestroy", "devComm"));
  return Fail(ncclInvalidArgument, "ncclDevCommDestroy : no device communicator was created by this communicator");
}

ncclResult_t GinBarrierCreateRequirement(ncclComm_t, ncclTeam_t team, int nBarriers, ncclGinBarrierHandle_t* h,
                                         ncclDevResourceRequirements_t* req) {
  HN_CHECK(PtrCheck(h, "ncclGinBarrierCreateRequirement", "outHandle"));
  HN_CHECK(PtrCheck(req, "ncclGinBarrierCreateRequirement", "outReq"));
  *req = ncclDevResourceRequirements{};
  req->ginSignalCount = nBarriers * team.nRanks;
  req->outGinSignalStart = &h->signal0;
  return ncclSuccess;
}

ncclResult_t LsaBarrierCreateRequirement(ncclTeam_t team, int nBarriers, ncclLsaBarrierHandle_t* h,
                                         ncclDevResourceRequirements_t* req) {
  HN_CHECK(PtrCheck(h, "ncclLsaBarrierCreateRequirement", "outHandle"));
  HN_CHECK(PtrCheck(req, "ncclLsaBarrierCreateRequirement", "outReq"));
  *req = ncclDevResourceRequirements{};
  h->nBarriers = nBarriers;
  // One arrival word per barrier and rank, plus three control words per barrier.
  req->bufferSize = static_cast<size_t>(nBarriers) * (3 + team.nRanks) * sizeof(uint32_t);
  req->bufferAlign = alignof(uint32_t);
  req->outBufferHandle = &h->bufHandle;
  return ncclSuccess;
}

int LLA2ACalcSlots(int maxElts, int maxEltSize) { return maxElts * ((maxEltSize + 7) / 8); }

ncclResult_t LLA2ACreateRequirement(int nBlocks, int nSlots, ncclLLA2AHandle_t* h, ncclDevResourceRequirements_t* req) {
  HN_CHECK(PtrCheck(h, "ncclLLA2ACreateRequirement", "outHandle"));
  HN_CHECK(PtrCheck(req, "ncclLLA2ACreateRequirement", "outReq"));
  h->nSlots = static_cast<uint32_t>(nSlots);
  *req = ncclDevResourceRequirements{};
  req->bufferSize = static_cast<size_t>(nBlocks) * (1 + 2 * static_cast<size_t>(nSlots)) * 16;
  req->bufferAlign = 16;
  req->outBufferHandle = &h->bufHandle;
  return ncclSuccess;
}

// No device memory is load/store accessible across ranks here: the LSA team is the rank alone, and the rail
// team (same LSA index across LSA teams) is therefore the world.
ncclTeam_t TeamWorld(ncclComm_t comm) {
  if (CheckComm(comm, "ncclTeamWorld") != ncclSuccess) return ncclTeam_t{0, 0, 0};
  return ncclTeam_t{AsComm(comm)->nranks, AsComm(comm)->rank, 1};
}
ncclTeam_t TeamLsa(ncclComm_t comm) {
  if (CheckComm(comm, "ncclTeamLsa") != ncclSuccess) return ncclTeam_t{0, 0, 0};
  return ncclTeam_t{1, 0, 1};
}
ncclTeam_t TeamRail(ncclComm_t comm) {
  if (CheckComm(comm, "ncclTeamRail") != ncclSuccess) return ncclTeam_t{0, 0, 0};
  return ncclTeam_t{AsComm(comm)->nranks, AsComm(comm)->rank, 1};
}
int TeamRankToWorld(ncclComm_t comm, ncclTeam_t team, int rank) {
  if (CheckComm(comm, "ncclTeamRankToWorld") != ncclSuccess) return -1;
  return AsComm(comm)->rank + (rank - team.rank) * team.stride;
}
int TeamRankToLsa(ncclComm_t comm, ncclTeam_t team, int rank) {
  if (CheckComm(comm, "ncclTeamRankToLsa") != ncclSuccess) return -1;
  // LSA rank of the world rank: the LSA team is the rank itself, whose LSA rank is 0.
  return TeamRankToWorld(comm, team, rank) - AsComm(comm)->rank;
}

}  // namespace api
}  // namespace hn
