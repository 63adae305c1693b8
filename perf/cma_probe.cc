// SPDX-License-Identifier: Apache-2.0
// cma_probe: what a same-host state read costs, one factor at a time (docs/benchmarks.md, "What transfer_bench
// does that ucx_perftest does not"). A forked leaver owns the source pages; the parent reads them in several
// ways, the variants interleaved round by round so that the machine's load hits all of them alike:
//
//   cma-warm        process_vm_readv of pages read before, 256 KiB per call, into populated pages (transfer_bench's
//                   repeated iterations, verify off)
//   cma-warm+hash   the same, each 256 KiB block hashed (BlockHash) right after its call (verify on)
//   cma-warm-4M     the same as cma-warm with 4 MiB per call (system calls and pinning batches)
//   cma-freshdst    cma-warm into pages mapped just before (the destination's page faults inside the read)
//   cma-cold        the first read of pages the leaver has just written (a migration without a warm Prepare)
//   cma-thp-cold    the same with the leaver's region madvised MADV_HUGEPAGE before it wrote it
//   cma-thp-warm    repeated reads of that region
//   cma-thp-hash    cma-thp-warm with the hash (cma-warm+hash on huge pages)
//   cma-thp-thpdst  cma-thp-warm into a destination madvised MADV_HUGEPAGE too
//   cma-untouched   the first read of pages the leaver mapped but never wrote (the read faults them in there)
//   shm-warm        memcpy from the leaver's region shared with us (a memfd both map; what ucx_perftest's get does
//                   on one host: sysv/posix shared memory, a user-space memcpy), mapped and read before
//   shm-cold        the same from a mapping made just before (first touch in this process)
//
// Per variant and round: wall GB/s and CPU GB/s (bytes / this thread's user+system time, which the load's
// preemption does not inflate). GB = 1e9 bytes.
//
//   cma_probe [--size 64M] [--rounds 5] [--variants a,b,...]
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "perf_util.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;

namespace {

constexpr size_t kBlock = tt::kChecksumBlock;

// Leaver commands over a pipe: 'c' allocate and write a fresh private region (cold), 't' the same with
// MADV_HUGEPAGE; the reply is its address. The memfd region and the warm regions exist from the start.
struct Leaver {
  pid_t pid = -1;
  int cmd = -1, reply = -1;
  uint64_t warm = 0, thp_warm = 0;
  int memfd = -1;

  uint64_t Ask(char c) {
    uint64_t a = 0;
    if (write(cmd, &c, 1) != 1 || read(reply, &a, 8) != 8) return 0;
    return a;
  }
};

void* Fill(size_t size, bool thp, bool write = true) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) _exit(1);
  if (thp) madvise(p, size, MADV_HUGEPAGE);
  if (!write) return p;
  for (size_t i = 0; i < size; i += 64) static_cast<unsigned char*>(p)[i] = static_cast<unsigned char>(i * 31);
  return p;
}

Leaver StartLeaver(size_t size) {
  Leaver l;
  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0) return l;
  l.memfd = memfd_create("cma_probe", 0);
  if (l.memfd < 0 || ftruncate(l.memfd, static_cast<off_t>(size)) != 0) return l;
  void* w = Fill(size, false);
  void* tw = Fill(size, true);
  l.pid = fork();
  if (l.pid == 0) {
    close(to[1]);
    close(from[0]);
    void* shm = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, l.memfd, 0);
    if (shm == MAP_FAILED) _exit(1);
    std::memset(w, 3, size);  // the child's own copies (fork shares them copy-on-write until written)
    std::memset(tw, 4, size);
    std::memset(shm, 5, size);
    uint64_t addrs[2] = {reinterpret_cast<uint64_t>(w), reinterpret_cast<uint64_t>(tw)};
    if (write(from[1], addrs, sizeof(addrs)) != sizeof(addrs)) _exit(1);
    void* last = nullptr;
    for (char c; read(to[0], &c, 1) == 1;) {
      if (last != nullptr) munmap(last, size);
      last = Fill(size, c == 't', c != 'z');
      if (c == 'k') {  // written on small pages, then collapsed into huge pages (what Expose does)
        auto t0 = std::chrono::steady_clock::now();
        madvise(last, size, MADV_HUGEPAGE);
        int rc = madvise(last, size, 25 /* MADV_COLLAPSE */);
        fprintf(stderr, "  (leaver: MADV_COLLAPSE of %s: rc %d, %.1f ms)\n", perf::FormatSize(size).c_str(), rc,
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      uint64_t a = reinterpret_cast<uint64_t>(last);
      if (write(from[1], &a, 8) != 8) _exit(1);
    }
    _exit(0);
  }
  munmap(w, size);
  munmap(tw, size);
  close(to[0]);
  close(from[1]);
  l.cmd = to[1];
  l.reply = from[0];
  uint64_t addrs[2] = {0, 0};
  if (read(l.reply, addrs, sizeof(addrs)) != sizeof(addrs)) l.pid = -1;
  l.warm = addrs[0];
  l.thp_warm = addrs[1];
  return l;
}

bool Cma(pid_t pid, char* dst, uint64_t src, size_t size, size_t call, bool hash, uint64_t* sink) {
  for (size_t off = 0; off < size; off += call) {
    size_t len = std::min(call, size - off);
    iovec l{dst + off, len};
    iovec r{reinterpret_cast<void*>(src + off), len};
    if (process_vm_readv(pid, &l, 1, &r, 1, 0) != static_cast<ssize_t>(len)) return false;
    if (hash) {
      for (size_t b = 0; b < len; b += kBlock) *sink ^= tt::BlockHash(dst + off + b, std::min(kBlock, len - b));
    }
  }
  return true;
}

double CpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

struct Sample {
  double wall_gbps, cpu_gbps;
};

}  // namespace

int main(int argc, char** argv) {
  size_t size = size_t{64} << 20;
  int rounds = 5;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    std::string v = i + 1 < argc ? argv[i + 1] : "";
    if (k == "--size") {
      size = perf::ParseSize(v);
      ++i;
    } else if (k == "--rounds") {
      rounds = std::max(1, std::atoi(v.c_str()));
      ++i;
    } else if (k == "--variants") {
      only = "," + v + ",";
      ++i;
    } else {
      fprintf(stderr, "usage: %s [--size S] [--rounds N] [--variants a,b,...]\n", argv[0]);
      return 2;
    }
  }
  Leaver lv = StartLeaver(size);
  if (lv.pid <= 0) {
    fprintf(stderr, "cma_probe: leaver failed\n");
    return 1;
  }
  char* dst = static_cast<char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::memset(dst, 1, size);
  char* thp_dst = static_cast<char*>(Fill(size, true));
  void* shm_warm = mmap(nullptr, size, PROT_READ, MAP_SHARED, lv.memfd, 0);
  uint64_t sink = 0;
  std::memcpy(dst, shm_warm, size);
  Cma(lv.pid, dst, lv.warm, size, kBlock, false, &sink);
  Cma(lv.pid, dst, lv.thp_warm, size, kBlock, false, &sink);

  // Each variant: set-up outside the timing (returns the timed body).
  using Body = std::function<bool()>;
  struct Variant {
    const char* name;
    std::function<Body()> setup;
  };
  char* fresh = nullptr;
  void* shm_cold = nullptr;
  // A first read of a source the leaver prepares on request (`what`: lv.Ask's letter), into the warm destination.
  auto first_read = [&](char what) {
    uint64_t a = lv.Ask(what);
    return Body([&, a] { return a != 0 && Cma(lv.pid, dst, a, size, kBlock, false, &sink); });
  };
  std::vector<Variant> variants = {
      {"cma-warm", [&] { return Body([&] { return Cma(lv.pid, dst, lv.warm, size, kBlock, false, &sink); }); }},
      {"cma-warm+hash", [&] { return Body([&] { return Cma(lv.pid, dst, lv.warm, size, kBlock, true, &sink); }); }},
      {"cma-warm-4M",
       [&] { return Body([&] { return Cma(lv.pid, dst, lv.warm, size, size_t{4} << 20, false, &sink); }); }},
      {"cma-freshdst",
       [&] {
         if (fresh != nullptr) munmap(fresh, size);
         fresh = static_cast<char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
         return Body([&] { return Cma(lv.pid, fresh, lv.warm, size, kBlock, false, &sink); });
       }},
      {"cma-cold",
       [&] { return first_read('c'); }},
      {"cma-thp-cold",
       [&] { return first_read('t'); }},
      {"cma-thp-warm",
       [&] { return Body([&] { return Cma(lv.pid, dst, lv.thp_warm, size, kBlock, false, &sink); }); }},
      {"cma-thp-hash",
       [&] { return Body([&] { return Cma(lv.pid, dst, lv.thp_warm, size, kBlock, true, &sink); }); }},
      {"cma-collapsed",
       [&] { return first_read('k'); }},
      {"cma-thp-hash-1M",
       [&] { return Body([&] { return Cma(lv.pid, dst, lv.thp_warm, size, 4 * kBlock, true, &sink); }); }},
      {"cma-thp-hash-2M",
       [&] { return Body([&] { return Cma(lv.pid, dst, lv.thp_warm, size, 8 * kBlock, true, &sink); }); }},
      {"cma-thp-thpdst",
       [&] { return Body([&] { return Cma(lv.pid, thp_dst, lv.thp_warm, size, kBlock, false, &sink); }); }},
      {"cma-untouched",
       [&] { return first_read('z'); }},
      {"shm-warm",
       [&] {
         return Body([&] {
           std::memcpy(dst, shm_warm, size);
           return true;
         });
       }},
      {"shm-cold",
       [&] {
         if (shm_cold != nullptr) munmap(shm_cold, size);
         shm_cold = mmap(nullptr, size, PROT_READ, MAP_SHARED, lv.memfd, 0);
         return Body([&] {
           std::memcpy(dst, shm_cold, size);
           return true;
         });
       }},
  };
  std::map<std::string, std::vector<Sample>> got;
  for (int r = 0; r < rounds; ++r) {
    for (const Variant& v : variants) {
      if (!only.empty() && only.find(std::string(",") + v.name + ",") == std::string::npos) continue;
      Body body = v.setup();
      double c0 = CpuSeconds();
      auto t0 = std::chrono::steady_clock::now();
      bool ok = body();
      double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double cpu = CpuSeconds() - c0;
      if (!ok) {
        fprintf(stderr, "cma_probe: %s failed: %s\n", v.name, strerror(errno));
        return 1;
      }
      got[v.name].push_back({size / wall / 1e9, cpu > 0 ? size / cpu / 1e9 : 0});
    }
  }
  printf("# cma_probe %s, %d rounds interleaved; GB/s per round (wall | bytes per CPU second of the reader)\n",
         perf::FormatSize(size).c_str(), rounds);
  for (const Variant& v : variants) {
    auto it = got.find(v.name);
    if (it == got.end()) continue;
    std::vector<double> w, c;
    for (const Sample& s : it->second) {
      w.push_back(s.wall_gbps);
      c.push_back(s.cpu_gbps);
    }
    std::sort(w.begin(), w.end());
    std::sort(c.begin(), c.end());
    printf("  %-14s wall %6.2f-%6.2f (median %6.2f)   cpu %6.2f-%6.2f (median %6.2f)\n", v.name, w.front(), w.back(),
           w[w.size() / 2], c.front(), c.back(), c[c.size() / 2]);
  }
  close(lv.cmd);
  waitpid(lv.pid, nullptr, 0);
  return sink == 42 ? 3 : 0;  // keeps the hashes from being optimised away
}
