// SPDX-License-Identifier: Apache-2.0
// A small 2D-parallel training program for the migration tests: tensor parallel (TP) x data parallel (DP), both
// made with ncclCommSplit from a world communicator (the DP one non-blocking, progressed with
// ncclCommGetAsyncError). Every size comes from the communicators themselves (ncclCommCount, ncclCommUserRank),
// as a framework does: a sandbox that answered a split child's size wrongly makes this program fail its checks
// (or overrun its buffers, which is what happened before the sandbox had the leaver's table).
//
// Each rank holds one TP shard of the parameters (replicated over DP) and, ZeRO-1 style, the momentum of its DP
// slice of that shard. A step: an AllReduce on TP (the shard's partial activations), a ReduceScatter of the
// gradient on DP, the update of its slice, an AllGather of the slices on DP, and a grouped Send/Recv ring on the
// world communicator. The state (shard, momentum slice, ring value) is registered; tmSafePoint every step. At the
// end every rank's state is gathered over the world and digested, so every rank prints the same
// "final-state sha256:<hex>" (any rank's state differing changes it). A watchdog thread polls ncclCommGetAsyncError
// on every communicator all along (as PyTorch's ProcessGroupNCCL does), through every migration's switch; an
// error it sees ends the program. Usage (under tmrun, WORLD_SIZE = TP * DP):
//   tp_dp_app STEPS STEP_MS [TP]
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "test_app.h"
#include "trainmover/trainmover.h"

using test_app::Check;

namespace {

constexpr int kShard = 2048;  // parameters per TP shard

void Expect(bool ok, const char* what, int got, int want) {
  if (ok) return;
  std::fprintf(stderr, "tp_dp_app: %s is %d, expected %d\n", what, got, want);
  std::exit(1);
}

// A non-blocking creation: ncclInProgress, then ncclCommGetAsyncError until it reports success.
void WaitReady(ncclResult_t r, ncclComm_t c, const char* what) {
  while (r == ncclInProgress) {
    ncclResult_t async = ncclSuccess;
    Check(ncclCommGetAsyncError(c, &async), "ncclCommGetAsyncError");
    r = async;
  }
  Check(r, what);
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 3) return 2;
  const long steps = std::atol(argv[1]), step_ms = std::atol(argv[2]);
  const int tp = argc > 3 ? std::atoi(argv[3]) : 2;
  const int rank = test_app::EnvInt("RANK", 0), world = test_app::EnvInt("WORLD_SIZE", 1);
  if (tp < 1 || world % tp != 0) return 2;

  const ncclUniqueId id = test_app::WorldId(rank, "tp-dp-app/id");
  ncclComm_t comm, tpc, dpc;
  Check(ncclCommInitRank(&comm, world, id, rank), "ncclCommInitRank");
  Check(ncclCommSplit(comm, rank / tp, rank, &tpc, nullptr), "ncclCommSplit tp");
  ncclConfig_t nb = NCCL_CONFIG_INITIALIZER;
  nb.blocking = 0;
  const ncclResult_t split = ncclCommSplit(comm, rank % tp, rank, &dpc, &nb);
  WaitReady(split, dpc, "ncclCommSplit dp");

  // Sizes as the communicators report them (what the buffers are sized from).
  int n = 0, tp_n = 0, tp_r = 0, dp_n = 0, dp_r = 0;
  Check(ncclCommCount(comm, &n), "ncclCommCount world");
  Check(ncclCommCount(tpc, &tp_n), "ncclCommCount tp");
  Check(ncclCommUserRank(tpc, &tp_r), "ncclCommUserRank tp");
  Check(ncclCommCount(dpc, &dp_n), "ncclCommCount dp");
  Check(ncclCommUserRank(dpc, &dp_r), "ncclCommUserRank dp");
  Expect(n == world, "world size", n, world);
  Expect(tp_n == tp, "tp size", tp_n, tp);
  Expect(tp_r == rank % tp, "tp rank", tp_r, rank % tp);
  Expect(dp_n == world / tp, "dp size", dp_n, world / tp);
  Expect(dp_r == rank / tp, "dp rank", dp_r, rank / tp);
  if (kShard % dp_n != 0) return 2;
  const int slice = kShard / dp_n;

  std::vector<float> w(static_cast<size_t>(kShard)), m(static_cast<size_t>(slice), 0.0f), ring(1, 0.0f);
  for (int i = 0; i < kShard; ++i) w[i] = static_cast<float>((i + 31 * tp_r) % 97) * 0.01f;
  if (tmRegister("w", w.data(), w.size() * sizeof(float)) != tmSuccess ||
      tmRegister("m", m.data(), m.size() * sizeof(float)) != tmSuccess ||
      tmRegister("ring", ring.data(), sizeof(float)) != tmSuccess) {
    return 1;
  }
  std::atomic<bool> stop{false};
  std::thread watchdog([&] {
    while (!stop.load()) {
      for (ncclComm_t c : {comm, tpc, dpc}) {
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(c, &async) != ncclSuccess || async != ncclSuccess) {
          std::fprintf(stderr, "tp_dp_app: watchdog: communicator error %d\n", static_cast<int>(async));
          std::_Exit(1);
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<float> act(256), g(static_cast<size_t>(kShard)), gs(static_cast<size_t>(slice)), ws(static_cast<size_t>(slice));
  std::vector<float> out(4), in(4);
  const int next = (rank + 1) % n, prev = (rank + n - 1) % n;

  for (long step = 0;;) {
    step = tmSafePoint(step);
    if (step >= steps) break;
    // TP: partial activations of this shard, summed over the TP group.
    for (size_t i = 0; i < act.size(); ++i) act[i] = w[i * 7 % kShard] * static_cast<float>(tp_r + 1) * 0.01f;
    Check(ncclAllReduce(act.data(), act.data(), act.size(), ncclFloat, ncclSum, tpc, nullptr), "tp allreduce");
    // The gradient of the shard on this DP rank's data.
    for (int i = 0; i < kShard; ++i) {
      g[i] = w[i] * 0.05f + act[i % act.size()] + static_cast<float>((dp_r + 1) * (step + 1) % 11) * 0.001f;
    }
    // DP: ZeRO-1: each rank updates its slice with its slice of the summed gradient, then the slices are gathered.
    Check(ncclReduceScatter(g.data(), gs.data(), slice, ncclFloat, ncclSum, dpc, nullptr), "dp reducescatter");
    for (int i = 0; i < slice; ++i) {
      m[i] = 0.9f * m[i] + gs[i] / static_cast<float>(dp_n);
      ws[i] = w[dp_r * slice + i] - 0.01f * m[i] + 0.0001f * ring[0];
    }
    Check(ncclAllGather(ws.data(), w.data(), slice, ncclFloat, dpc, nullptr), "dp allgather");
    // World: a ring of grouped Send/Recv (pipeline-style point-to-point).
    for (int i = 0; i < 4; ++i) out[i] = w[i] + static_cast<float>(rank);
    Check(ncclGroupStart(), "ncclGroupStart");
    Check(ncclSend(out.data(), out.size(), ncclFloat, next, comm, nullptr), "ring send");
    Check(ncclRecv(in.data(), in.size(), ncclFloat, prev, comm, nullptr), "ring recv");
    Check(ncclGroupEnd(), "ncclGroupEnd");
    ring[0] = 0.5f * ring[0] + 0.25f * (in[0] + in[3]);
    if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    ++step;
  }
  stop = true;
  watchdog.join();
  // Every rank's state, gathered over the world: the same digest everywhere.
  std::vector<float> mine(w);
  mine.insert(mine.end(), m.begin(), m.end());
  mine.push_back(ring[0]);
  std::vector<float> all(mine.size() * static_cast<size_t>(n));
  Check(ncclAllGather(mine.data(), all.data(), mine.size(), ncclFloat, comm, nullptr), "final allgather");
  Check(ncclCommDestroy(dpc), "destroy dp");
  Check(ncclCommDestroy(tpc), "destroy tp");
  Check(ncclCommDestroy(comm), "destroy world");
  test_app::PrintDigest(all.data(), all.size() * sizeof(float));
  return 0;
}
