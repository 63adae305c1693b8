// SPDX-License-Identifier: Apache-2.0
// The 3D-parallel workload (docs/tm-train.md, "3D parallel"): tensor x pipeline x data parallelism as
// Megatron-LM lays it out, over four communicators made the four ways real frameworks make them:
//   world  ncclCommInitRank, the id rank 0 publishes in the store (key tm-train/nccl-unique-id);
//   tp     ncclCommSplit of world (color = the (stage, dp) pair, key = the TP rank);
//   dp     ncclCommInitRank from a fresh id its first member publishes (torch.distributed.new_group);
//   pp     ncclCommInitRankConfig with config.blocking = 0 from a fresh id, progressed with
//          ncclCommGetAsyncError until it is no longer ncclInProgress.
// Each step: the micro-batches go forward then backward through the stages (GPipe) with grouped
// ncclSend/ncclRecv on pp, the block's partial sums all-reduced on tp, the gradient reduce-scattered on dp,
// Adam on this rank's shard only (ZeRO-1), the parameters all-gathered on dp, the loss all-reduced on world.
// A watchdog thread polls every communicator meanwhile.
#include "parallel.h"

#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "base/thread.h"
#include "block.h"
#include "driver.h"
#include "model.h"

namespace tm_train {

Grid::Grid(int rank, int world, int tp_degree, int pp_degree) : tp(tp_degree), pp(pp_degree) {
  if (world % (tp * pp) != 0)
    Die("--tp %d --pp %d: WORLD_SIZE=%d is not a multiple of tp x pp = %d", tp, pp, world, tp * pp);
  dp = world / (tp * pp);
  tp_rank = rank % tp;
  dp_rank = (rank / tp) % dp;
  stage = rank / (tp * dp);
}

Watchdog::Watchdog(std::vector<NamedComm> comms, int64_t period_ms)
    : comms_(std::move(comms)), period_ms_(period_ms) {
  thread_ = trainmover::base::StartThread("tm-watchdog", [this] { Run(); });
}

Watchdog::~Watchdog() { Stop(); }

int64_t Watchdog::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  return rounds_;
}

void Watchdog::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, std::chrono::milliseconds(period_ms_), [this] { return stop_; })) {
    for (const NamedComm& c : comms_) {
      ncclResult_t async = ncclSuccess;
      ncclResult_t res = ncclCommGetAsyncError(c.comm, &async);
      if (res != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
        Die("watchdog: communicator %s: ncclCommGetAsyncError returned %s, asynchronous error %s; last error: %s",
            c.name, ncclGetErrorString(res), ncclGetErrorString(async), ncclGetLastError(c.comm));
      }
    }
    ++rounds_;
  }
}

namespace {

// How long a non-blocking communicator may stay ncclInProgress (its init, or an operation on it).
constexpr auto kSettleDeadline = std::chrono::seconds(120);

// A call on a non-blocking communicator may return ncclInProgress: poll ncclCommGetAsyncError until the
// communicator is no longer in progress, as NCCL's documentation prescribes; any other error ends the program.
void Settle(ncclComm_t comm, ncclResult_t res, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + kSettleDeadline;
  while (res == ncclInProgress) {
    if (std::chrono::steady_clock::now() > deadline) Die("%s: still in progress after 120 s", what);
    std::this_thread::yield();
    ncclResult_t poll = ncclCommGetAsyncError(comm, &res);
    if (poll != ncclSuccess) res = poll;
  }
  if (res != ncclSuccess)
    Die("%s: %s (%d); last error: %s", what, ncclGetErrorString(res), static_cast<int>(res), ncclGetLastError(comm));
}

// Every communicator answers its queries as the layout says (ncclCommCount, ncclCommUserRank): a program
// that sizes its buffers from them would otherwise write past them.
void CheckShape(ncclComm_t comm, const char* name, int want_count, int want_rank) {
  int count = -1, rank = -1;
  NCCLCHECK(ncclCommCount(comm, &count));
  NCCLCHECK(ncclCommUserRank(comm, &rank));
  if (count != want_count || rank != want_rank)
    Die("communicator %s: ncclCommCount %d, ncclCommUserRank %d; the layout says %d and %d", name, count, rank,
        want_count, want_rank);
}

struct Comms {
  ncclComm_t world = nullptr, tp = nullptr, dp = nullptr, pp = nullptr;
  std::vector<NamedComm> Named() const { return {{"world", world}, {"tp", tp}, {"dp", dp}, {"pp", pp}}; }
};

// The DP group's communicator comes first, as PyTorch's lazy initialisation makes it (a group's NCCL
// communicator is created at its first collective, here the DP broadcast of the parameters): the first
// communicator of a process is not the world's, so its rank there is not the process's rank.
Comms MakeComms(const Grid& g, int rank, int world, IdStore& ids) {
  Comms c;
  ncclUniqueId id =
      ids.Get("tm-train/dp/" + std::to_string(g.stage) + "." + std::to_string(g.tp_rank), g.dp_rank == 0);
  NCCLCHECK(ncclCommInitRank(&c.dp, g.dp, id, g.dp_rank));
  id = ids.Get("tm-train/nccl-unique-id", rank == 0);
  NCCLCHECK(ncclCommInitRank(&c.world, world, id, rank));
  NCCLCHECK(ncclCommSplit(c.world, g.stage * g.dp + g.dp_rank, g.tp_rank, &c.tp, nullptr));
  id = ids.Get("tm-train/pp/" + std::to_string(g.dp_rank) + "." + std::to_string(g.tp_rank), g.stage == 0);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  Settle(c.pp, ncclCommInitRankConfig(&c.pp, g.pp, id, g.stage, &config), "ncclCommInitRankConfig (pp, non-blocking)");
  CheckShape(c.world, "world", world, rank);
  CheckShape(c.tp, "tp", g.tp, g.tp_rank);
  CheckShape(c.dp, "dp", g.dp, g.dp_rank);
  CheckShape(c.pp, "pp", g.pp, g.stage);
  return c;
}

// One point-to-point exchange of the pipeline, grouped: at most a receive from one neighbour stage and a
// send to the other. Nothing to do: no group at all.
struct P2p {
  float* recv = nullptr;
  int from = -1;
  const float* send = nullptr;
  int to = -1;
};

void Exchange(ncclComm_t pp, const P2p& x, size_t count) {
  if (!x.recv && !x.send) return;
  NCCLCHECK(ncclGroupStart());
  if (x.recv) Settle(pp, ncclRecv(x.recv, count, ncclFloat, x.from, pp, nullptr), "ncclRecv (pp)");
  if (x.send) Settle(pp, ncclSend(x.send, count, ncclFloat, x.to, pp, nullptr), "ncclSend (pp)");
  Settle(pp, ncclGroupEnd(), "ncclGroupEnd (pp)");
}

}  // namespace

int RunParallel3D(const Flags& f, const RankInfo& start, std::chrono::steady_clock::time_point t_start) {
  RankInfo who = start;  // the rank changes when a standby takes a failed rank's place (TrainLoop)
  const int rank = who.rank, world = who.world;
  Grid g(rank, world, static_cast<int>(f.tp), static_cast<int>(f.pp));
  if (f.init_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.init_ms));
  const double init_emulated_ms = MsSince(t_start);

  BlockDims dims = BlockDimsForParams(f.params, g.pp, g.tp);
  const int64_t M = f.micro_batches;
  const size_t n = static_cast<size_t>(dims.ShardParams());
  const size_t shard = (n + static_cast<size_t>(g.dp) - 1) / static_cast<size_t>(g.dp);  // ZeRO-1 shard
  const size_t padded = shard * static_cast<size_t>(g.dp);
  const size_t act = static_cast<size_t>(dims.rows * dims.width), hid = static_cast<size_t>(dims.rows * dims.Shard());
  // Registered state: the stage's TP shard of the parameters (whole, as every DP replica holds it), this
  // rank's DP shard of Adam's moments, the step.
  std::vector<float> params(padded, 0.0f), adam_m(shard, 0.0f), adam_v(shard, 0.0f);
  int64_t step_state = 0;
  const size_t extra_words = static_cast<size_t>(f.extra_state_mb) * (1u << 20) / sizeof(uint64_t);
  std::vector<uint64_t> extra(extra_words);
  InitBlockShard(dims, f.seed, g.stage, g.tp_rank, params.data());
  InitExtraState(f.seed, extra.data(), extra.size());
  std::vector<Region> regions = {{"params", params.data(), padded * sizeof(float)},
                                 {"adam_m", adam_m.data(), shard * sizeof(float)},
                                 {"adam_v", adam_v.data(), shard * sizeof(float)},
                                 {"step", &step_state, sizeof(step_state)}};
  if (extra_words > 0) regions.push_back({"extra", extra.data(), extra_words * sizeof(uint64_t)});
  RegisterRegions(regions);
  const CheckpointMeta meta{f.seed, static_cast<int64_t>(n), rank, world};
  const int64_t start_step = PrepareCheckpoint(f, meta, regions);

  const auto t_comm = std::chrono::steady_clock::now();
  IdStore ids(world, f);
  Comms c = MakeComms(g, rank, world, ids);
  const double comm_init_ms = MsSince(t_comm);
  const auto t_bcast = std::chrono::steady_clock::now();
  if (!f.resume) NCCLCHECK(ncclBroadcast(params.data(), params.data(), n, ncclFloat, 0, c.dp, nullptr));
  const double bcast_ms = MsSince(t_bcast);
  printf("[rank %d] init world=%d role=%s layout=tp%dxpp%dxdp%d stage=%d tp_rank=%d dp_rank=%d params=%zu "
         "dims=%" PRId64 "x%" PRId64 "x%" PRId64 " micro_batches=%" PRId64 " state_bytes=%zu init_emulated_ms=%.1f "
         "comm_init_ms=%.1f bcast_ms=%.1f startup_ms=%.1f start_step=%" PRId64 "\n",
         rank, world, who.role, g.tp, g.pp, g.dp, g.stage, g.tp_rank, g.dp_rank, n, dims.width, dims.hidden,
         dims.width, M, (padded + 2 * shard) * sizeof(float) + sizeof(step_state) + extra_words * sizeof(uint64_t),
         init_emulated_ms, comm_init_ms, bcast_ms, MsSince(t_start), start_step);

  // Per micro-batch: the stage's input, its hidden activations, its output, the gradient arriving from
  // the next stage (or the loss) and the one going back.
  const Task task(Dims{dims.width, 0, dims.width, dims.rows}, f.seed);
  std::vector<float> x(M * act), hidden(M * hid), y(M * act), dy(M * act), dx(M * act), target(M * act);
  std::vector<float> grad(padded), grad_shard(shard), scratch(hid), other_x(act);
  const AdamConfig adam;
  const float grad_scale = 1.0f / static_cast<float>(M * g.dp);
  auto valid = [M](int64_t m) { return m >= 0 && m < M; };

  Watchdog watchdog(c.Named(), f.watchdog_ms);
  TrainLoop(f, who, meta, regions, start_step, [&](int64_t step) {
    g = Grid(who.rank, world, g.tp, g.pp);  // the layout of the rank held now
    std::fill(grad.begin(), grad.end(), 0.0f);
    float loss = 0.0f;
    // Forward: at tick t stage s works on micro-batch t - s; the exchange before it receives that
    // micro-batch's input and sends the previous one's output on.
    for (int64_t t = 0; t < M + g.pp - 1; ++t) {
      const int64_t m = t - g.stage;
      P2p p2p;
      if (!g.FirstStage() && valid(m)) p2p = {&x[m * act], g.stage - 1, nullptr, -1};
      if (!g.LastStage() && valid(m - 1)) p2p.send = &y[(m - 1) * act], p2p.to = g.stage + 1;
      Exchange(c.pp, p2p, act);
      if (!valid(m)) continue;
      // Every stage draws the micro-batch: the first uses its inputs, the last its targets.
      task.Batch(static_cast<int>(g.dp_rank * M + m), step, g.FirstStage() ? &x[m * act] : other_x.data(),
                 &target[m * act]);
      BlockForward(dims, params.data(), &x[m * act], &hidden[m * hid], &y[m * act]);
      NCCLCHECK(ncclAllReduce(&y[m * act], &y[m * act], act, ncclFloat, ncclSum, c.tp, nullptr));
      FinishForward(dims, params.data(), &x[m * act], &y[m * act]);
      if (g.LastStage()) loss += MseLoss(dims, &y[m * act], &target[m * act], &dy[m * act]);
    }
    // Backward, the stages in reverse: at tick t stage s works on micro-batch t - (P - 1 - s).
    for (int64_t t = 0; t < M + g.pp - 1; ++t) {
      const int64_t m = t - (g.pp - 1 - g.stage);
      P2p p2p;
      if (!g.LastStage() && valid(m)) p2p = {&dy[m * act], g.stage + 1, nullptr, -1};
      if (!g.FirstStage() && valid(m - 1)) p2p.send = &dx[(m - 1) * act], p2p.to = g.stage - 1;
      Exchange(c.pp, p2p, act);
      if (!valid(m)) continue;
      BlockBackward(dims, params.data(), &x[m * act], &hidden[m * hid], &dy[m * act], grad.data(), &dx[m * act],
                    scratch.data());
      if (g.FirstStage()) continue;  // the input needs no gradient
      NCCLCHECK(ncclAllReduce(&dx[m * act], &dx[m * act], act, ncclFloat, ncclSum, c.tp, nullptr));
      FinishBackward(dims, &dy[m * act], &dx[m * act]);
    }
    // ZeRO-1: each DP rank owns one shard of the optimizer state and updates that shard of the parameters.
    NCCLCHECK(ncclReduceScatter(grad.data(), grad_shard.data(), shard, ncclFloat, ncclSum, c.dp, nullptr));
    for (float& v : grad_shard) v *= grad_scale;
    float* mine = params.data() + static_cast<size_t>(g.dp_rank) * shard;
    AdamStep(adam, step, shard, grad_shard.data(), mine, adam_m.data(), adam_v.data());
    NCCLCHECK(ncclAllGather(mine, params.data(), shard, ncclFloat, c.dp, nullptr));
    UpdateExtraState(f.seed, step, extra.data(), extra.size());
    // The loss: each pipeline's last stage counts once (its TP rank 0).
    float total = g.LastStage() && g.tp_rank == 0 ? loss : 0.0f;
    NCCLCHECK(ncclAllReduce(&total, &total, 1, ncclFloat, ncclSum, c.world, nullptr));
    step_state = step + 1;
    return total / static_cast<float>(M * g.dp);
  });
  const int64_t rounds = watchdog.Stop();
  printf("[rank %d] watchdog: %" PRId64 " polling rounds over 4 communicators, no error\n", who.rank, rounds);

  for (ncclComm_t comm : {c.pp, c.dp, c.tp, c.world}) NCCLCHECK(ncclCommDestroy(comm));
  printf("final-state sha256:%s\n", StateDigest(regions).c_str());
  fflush(stdout);
  return 0;
}

}  // namespace tm_train
