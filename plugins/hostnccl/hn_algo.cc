// SPDX-License-Identifier: Apache-2.0
// Chunked, pipelined collective algorithms. Each one is a small state machine over segments: post what the
// windows allow, reduce or forward what has arrived, otherwise wait for at least one request (WaitSome), so a
// rank always has up to kPipelineDepth segments per peer moving while it reduces or forwards another.
#include "hn_algo.h"

#include <algorithm>
#include <cstring>

namespace hn {
namespace {

// Request ids: [kind:4][peer:20][index:40].
enum ReqKind : uint64_t { kRsSend = 0, kRsRecv = 1, kAgSend = 2, kAgRecv = 3, kFwdSend = 4, kFwdRecv = 5 };
uint64_t ReqId(ReqKind k, int peer, uint64_t index) {
  return (static_cast<uint64_t>(k) << 60) | (static_cast<uint64_t>(peer & 0xfffff) << 40) | (index & 0xffffffffffull);
}
ReqKind IdKind(uint64_t id) { return static_cast<ReqKind>(id >> 60); }
int IdPeer(uint64_t id) { return static_cast<int>((id >> 40) & 0xfffff); }
uint64_t IdIndex(uint64_t id) { return id & 0xffffffffffull; }

// Per-communicator scratch, kept between operations so large collectives do not fault in fresh pages each time.
// Grown without zero-filling (every byte read from it was received first).
char* Scratch(Comm* c, size_t bytes) {
  if (c->scratch_bytes < bytes) {
    c->scratch.reset(new char[bytes]);
    c->scratch_bytes = bytes;
  }
  return c->scratch.get();
}

size_t DivUp(size_t a, size_t b) { return (a + b - 1) / b; }

}  // namespace

ncclResult_t PipelinedReduce(Comm* c, const void* send, void* out, void* all, const std::vector<Block>& blocks,
                             ncclDataType_t type, const RedOpFull& op, bool allgather) {
  const int n = c->nranks, me = c->rank;
  const size_t es = TypeSize(type);
  const size_t seg = std::max<size_t>(1, c->env.chunk_bytes / es);  // elements per segment
  const int depth = kPipelineDepth;
  const char* in = static_cast<const char*>(send);
  char* outp = static_cast<char*>(out);
  char* allp = static_cast<char*>(all);
  auto nseg = [&](int b) { return DivUp(blocks[b].len, seg); };
  auto seg_len = [&](int b, size_t s) { return std::min(seg, blocks[b].len - s * seg); };
  // In place (AllReduce with send == recv): the reduced segment s of block p lands where this rank's own input
  // for it was, so it is received only once this rank's send of that input has completed.
  const bool guard = allgather && send == all;
  const size_t my_nseg = nseg(me);
  // Receive slots for my block: depth segments x n ranks (slot of rank me unused), each as large as the
  // largest segment of my block (small operations need small slots).
  const size_t slot_bytes = std::min(seg, blocks[me].len) * es;
  char* scratch = n > 1 && slot_bytes ? Scratch(c, slot_bytes * static_cast<size_t>(depth) * n) : nullptr;
  auto slot = [&](size_t s, int r) { return scratch + ((s % depth) * n + r) * slot_bytes; };

  std::vector<size_t> rs_sent(n, 0), rs_inflight(n, 0), rs_prefix(n, 0), ag_posted(n, 0), ag_inflight(n, 0);
  std::vector<std::vector<uint8_t>> rs_done(n);
  size_t expected = 0;
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    rs_done[p].assign(nseg(p), 0);
    expected += nseg(p) + my_nseg;                 // RS sends to p, RS receives from p
    if (allgather) expected += nseg(p) + my_nseg;  // AG receives from p, AG sends to p
  }
  std::vector<int> got(depth, 0);  // receives completed per slot
  size_t rs_posted = 0, next_reduce = 0, completed = 0;
  std::vector<Pending> reqs;
  std::vector<uint64_t> done;
  std::vector<const void*> inputs(n);
  ncclResult_t res = ncclSuccess;
  for (;;) {
    // 1. Post everything the windows allow.
    for (int p = 0; p < n && res == ncclSuccess; ++p) {
      if (p == me) continue;
      while (res == ncclSuccess && rs_sent[p] < nseg(p) && rs_inflight[p] < static_cast<size_t>(depth)) {
        const size_t s = rs_sent[p]++;
        ++rs_inflight[p];
        res = PostSend(c, p, CollTag(c, me, 0, s), in + (blocks[p].off + s * seg) * es, seg_len(p, s) * es, &reqs,
                       ReqId(kRsSend, p, s));
      }
      while (res == ncclSuccess && allgather && ag_posted[p] < nseg(p) && ag_inflight[p] < static_cast<size_t>(depth) &&
             (!guard || ag_posted[p] < rs_prefix[p])) {
        const size_t s = ag_posted[p]++;
        ++ag_inflight[p];
        res = PostRecv(c, p, CollTag(c, p, 1, s), allp + (blocks[p].off + s * seg) * es, seg_len(p, s) * es, &reqs,
                       ReqId(kAgRecv, p, s));
      }
    }
    while (res == ncclSuccess && rs_posted < my_nseg && rs_posted < next_reduce + depth) {
      const size_t s = rs_posted++;
      for (int p = 0; p < n && res == ncclSuccess; ++p) {
        if (p != me)
          res = PostRecv(c, p, CollTag(c, p, 0, s), slot(s, p), seg_len(me, s) * es, &reqs, ReqId(kRsRecv, p, s));
      }
    }
    if (res != ncclSuccess) break;
    // 2. Reduce the next segment of my block once every rank's share of it is here.
    if (next_reduce < rs_posted && got[next_reduce % depth] == n - 1) {
      const size_t s = next_reduce++;
      got[s % depth] = 0;
      for (int r = 0; r < n; ++r) inputs[r] = r == me ? in + (blocks[me].off + s * seg) * es : slot(s, r);
      char* dst = outp + s * seg * es;
      ReduceInOrder(type, op, inputs.data(), n, dst, seg_len(me, s));
      for (int p = 0; allgather && p < n && res == ncclSuccess; ++p) {
        if (p != me) res = PostSend(c, p, CollTag(c, me, 1, s), dst, seg_len(me, s) * es, &reqs, ReqId(kAgSend, p, s));
      }
      if (res != ncclSuccess) break;
      continue;
    }
    if (completed == expected && next_reduce == my_nseg) break;
    // 3. Wait for at least one request.
    done.clear();
    res = WaitSome(c, &reqs, &done);
    if (res != ncclSuccess) return res;  // WaitSome cancelled the rest
    for (uint64_t id : done) {
      ++completed;
      const int p = IdPeer(id);
      const size_t s = IdIndex(id);
      switch (IdKind(id)) {
        case kRsSend:
          --rs_inflight[p];
          rs_done[p][s] = 1;
          while (rs_prefix[p] < rs_done[p].size() && rs_done[p][rs_prefix[p]]) ++rs_prefix[p];
          break;
        case kRsRecv:
          ++got[s % depth];
          break;
        case kAgRecv:
          --ag_inflight[p];
          break;
        default:
          break;
      }
    }
  }
  if (res != ncclSuccess) CancelPending(c, &reqs);
  return res;
}

ncclResult_t ChainAllReduce(Comm* c, const void* send, void* recv, size_t count, ncclDataType_t type,
                            const RedOpFull& op) {
  const int n = c->nranks, me = c->rank;
  const size_t es = TypeSize(type);
  const size_t seg = std::max<size_t>(1, c->env.chunk_bytes / es);  // elements per segment
  const size_t nseg = DivUp(count, seg);
  const size_t depth = kPipelineDepth;
  const char* in = static_cast<const char*>(send);
  char* out = static_cast<char*>(recv);
  auto at = [&](auto* base, size_t s) { return base + s * seg * es; };
  auto len = [&](size_t s) { return std::min(seg, count - s * seg); };
  const int prev = (me + n - 1) % n, next = (me + 1) % n;
  // Up: partial sums 0 -> 1 -> ... -> n-1 (rank 0 sends its raw input). Down: final sums n-1 -> 0 -> ... -> n-2.
  const bool up_in = me != 0, up_out = me != n - 1, down_in = me != n - 1, down_out = me != n - 2;
  // Partial sums arrive in depth scratch slots; my link writes out[s] (rank n-1's is final). A final sum is
  // received into out[s] only once this rank's up send of segment s has completed: that send reads out[s] (or,
  // rank 0 in place, in[s] == out[s]).
  const size_t slot_bytes = std::min(seg, count) * es;
  char* scratch = up_in ? Scratch(c, slot_bytes * depth) : nullptr;
  auto slot = [&](size_t s) { return scratch + (s % depth) * slot_bytes; };
  const FoldPart part{me > 1, me == n - 1};  // rank 1 starts the fold from x0, rank n-1 finishes it

  // Request kinds: the up stream is the reduce-scatter's (kRs*), the down stream the all-gather's (kAg*).
  std::vector<uint8_t> up_arrived(nseg, 0), up_sent_done(nseg, 0), down_arrived(nseg, 0);
  size_t up_posted = 0, reduced = 0, up_sent = 0, up_send_inflight = 0, up_done_prefix = 0;
  size_t down_posted = 0, down_inflight = 0, down_prefix = 0, down_sent = 0, down_send_inflight = 0;
  const size_t expected = nseg * (up_in + up_out + down_in + down_out);
  size_t completed = 0;
  std::vector<Pending> reqs;
  std::vector<uint64_t> done;
  ncclResult_t res = ncclSuccess;
  for (;;) {
    while (res == ncclSuccess && up_in && up_posted < nseg && up_posted < reduced + depth) {
      const size_t s = up_posted++;
      res = PostRecv(c, prev, CollTag(c, prev, 0, s), slot(s), len(s) * es, &reqs, ReqId(kRsRecv, prev, s));
    }
    while (res == ncclSuccess && up_out && up_sent < (up_in ? reduced : nseg) && up_send_inflight < depth) {
      const size_t s = up_sent++;
      ++up_send_inflight;
      res = PostSend(c, next, CollTag(c, me, 0, s), at(up_in ? out : in, s), len(s) * es, &reqs,
                     ReqId(kRsSend, next, s));
    }
    while (res == ncclSuccess && down_in && down_posted < nseg && down_inflight < depth &&
           down_posted < up_done_prefix) {
      const size_t s = down_posted++;
      ++down_inflight;
      res = PostRecv(c, prev, CollTag(c, prev, 1, s), at(out, s), len(s) * es, &reqs, ReqId(kAgRecv, prev, s));
    }
    while (res == ncclSuccess && down_out && down_sent < (down_in ? down_prefix : reduced) &&
           down_send_inflight < depth) {
      const size_t s = down_sent++;
      ++down_send_inflight;
      res = PostSend(c, next, CollTag(c, me, 1, s), at(out, s), len(s) * es, &reqs, ReqId(kAgSend, next, s));
    }
    if (res != ncclSuccess) break;
    // My link of the fold for the next segment, once the partial sum from prev is in.
    if (reduced < up_posted && up_arrived[reduced]) {
      const size_t s = reduced++;
      const void* inputs[2] = {slot(s), at(in, s)};
      ReduceInOrder(type, op, inputs, 2, at(out, s), len(s), part);
      continue;
    }
    if (completed == expected && (!up_in || reduced == nseg)) break;
    done.clear();
    res = WaitSome(c, &reqs, &done);
    if (res != ncclSuccess) return res;  // WaitSome cancelled the rest
    for (uint64_t id : done) {
      ++completed;
      const size_t s = IdIndex(id);
      switch (IdKind(id)) {
        case kRsRecv:
          up_arrived[s] = 1;
          break;
        case kRsSend:
          --up_send_inflight;
          up_sent_done[s] = 1;
          while (up_done_prefix < nseg && up_sent_done[up_done_prefix]) ++up_done_prefix;
          break;
        case kAgRecv:
          --down_inflight;
          down_arrived[s] = 1;
          while (down_prefix < nseg && down_arrived[down_prefix]) ++down_prefix;
          break;
        default:
          --down_send_inflight;
          break;
      }
    }
  }
  if (res != ncclSuccess) CancelPending(c, &reqs);
  return res;
}

namespace {

// The segment stream through one rank of a ring or chain: receives recv_total segments from prev (segment m into
// recv_seg(m)) and sends send_total segments to next (send_seg(m)), segment m only once may_send(m, arrived) holds
// (arrived[m] says whether received segment m is in). Up to kPipelineDepth of each in flight. RingAllGather and
// ChainBroadcast are this loop with different segment maps. On failure no request stays posted: a failed
// WaitSome has cancelled the rest itself, a failed post is followed by CancelPending.
struct Segment {
  char* ptr;
  size_t len;
};
template <typename RecvSeg, typename SendSeg, typename MaySend>
ncclResult_t ForwardStream(Comm* c, int prev, size_t recv_total, RecvSeg recv_seg, int next, size_t send_total,
                           SendSeg send_seg, MaySend may_send) {
  std::vector<uint8_t> arrived(recv_total, 0);
  size_t sent = 0, send_inflight = 0, posted = 0, recv_inflight = 0, completed = 0;
  std::vector<Pending> reqs;
  std::vector<uint64_t> done;
  ncclResult_t res = ncclSuccess;
  for (;;) {
    while (res == ncclSuccess && posted < recv_total && recv_inflight < static_cast<size_t>(kPipelineDepth)) {
      const size_t m = posted++;
      ++recv_inflight;
      const Segment sg = recv_seg(m);
      res = PostRecv(c, prev, CollTag(c, prev, 0, m), sg.ptr, sg.len, &reqs, ReqId(kFwdRecv, prev, m));
    }
    while (res == ncclSuccess && sent < send_total && send_inflight < static_cast<size_t>(kPipelineDepth) &&
           may_send(sent, arrived)) {
      const size_t m = sent++;
      ++send_inflight;
      const Segment sg = send_seg(m);
      res = PostSend(c, next, CollTag(c, c->rank, 0, m), sg.ptr, sg.len, &reqs, ReqId(kFwdSend, next, m));
    }
    if (res != ncclSuccess) break;
    if (completed == recv_total + send_total) break;
    done.clear();
    res = WaitSome(c, &reqs, &done);
    if (res != ncclSuccess) return res;
    for (uint64_t id : done) {
      ++completed;
      if (IdKind(id) == kFwdRecv) {
        arrived[IdIndex(id)] = 1;
        --recv_inflight;
      } else {
        --send_inflight;
      }
    }
  }
  if (res != ncclSuccess) CancelPending(c, &reqs);  // a post failed: the requests posted before it
  return res;
}

}  // namespace

ncclResult_t RingAllGather(Comm* c, const void* send, void* recv, size_t bytes) {
  const int n = c->nranks, me = c->rank;
  char* rp = static_cast<char*>(recv);
  if (send != rp + bytes * me && bytes) memmove(rp + bytes * me, send, bytes);
  if (n == 1 || bytes == 0) return ncclSuccess;
  const size_t chunk = c->env.chunk_bytes;
  const size_t nseg = DivUp(bytes, chunk);
  const int prev = (me + n - 1) % n, next = (me + 1) % n;
  // Stream index m = k * nseg + s: step k carries block (owner - k) for the sender, segment s. Every rank sends
  // n-1 blocks to next and receives n-1 blocks from prev; the message received at index m is sent on at m + nseg.
  const size_t total = static_cast<size_t>(n - 1) * nseg;
  auto seg = [&](int owner, size_t m) {
    const int block = (owner - static_cast<int>(m / nseg) + n) % n;
    const size_t s = m % nseg;
    return Segment{rp + bytes * block + s * chunk, std::min(chunk, bytes - s * chunk)};
  };
  return ForwardStream(
      c, prev, total, [&](size_t m) { return seg(prev, m); }, next, total, [&](size_t m) { return seg(me, m); },
      [&](size_t m, const std::vector<uint8_t>& arrived) { return m < nseg || arrived[m - nseg]; });
}

ncclResult_t ChainBroadcast(Comm* c, const void* send, void* recv, size_t bytes, int root) {
  const int n = c->nranks, me = c->rank;
  char* rp = static_cast<char*>(recv);
  const int rel = (me - root + n) % n;
  if (rel == 0 && send != recv && bytes) memmove(rp, send, bytes);
  if (n == 1 || bytes == 0) return ncclSuccess;
  const size_t chunk = c->env.chunk_bytes;
  const size_t nseg = DivUp(bytes, chunk);
  const int prev = (me + n - 1) % n, next = (me + 1) % n;
  // The root sends from its send buffer; the others forward from their receive buffer once a segment is in.
  char* src = rel == 0 ? const_cast<char*>(static_cast<const char*>(send)) : rp;
  auto len = [&](size_t s) { return std::min(chunk, bytes - s * chunk); };
  return ForwardStream(
      c, prev, rel > 0 ? nseg : 0, [&](size_t s) { return Segment{rp + s * chunk, len(s)}; }, next,
      rel < n - 1 ? nseg : 0, [&](size_t s) { return Segment{src + s * chunk, len(s)}; },
      [&](size_t s, const std::vector<uint8_t>& arrived) { return rel == 0 || arrived[s]; });
}

}  // namespace hn
