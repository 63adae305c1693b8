// SPDX-License-Identifier: Apache-2.0
// Device regions staged through host memory when UCX here cannot reach device memory (Debian's UCX is built without
// CUDA): a forked leaver exposes host regions (sizes 1, odd, one checksum block, 3 MiB + 5 and 0), the parent reads
// them into regions it cudaMalloc'ed (kCuda, and one kAuto that the runtime calls device memory) over the UCX path and
// over kAuto (the cma path into the bounce buffers on this host), copies them back with cudaMemcpy and compares bit
// for bit; then a prepared fetch read twice, and once unverified. Then the same against a leaver whose regions are
// device memory (the server's stand-ins, filled by Seal). Runs with the stand-in libcudart
// preloaded (tests/fake_cuda, LD_PRELOAD from meson), or a real one. Exits 77 with the reason where the preloaded
// runtime lacks the calls used here, or where UCX supports CUDA (then nothing is staged; transfer_cuda covers that).
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "test_pattern.h"
#include "test_support.h"
#include "transfer/staging.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;
using transfer_test::Fill;
using transfer_test::SeedOf;

namespace {

// The runtime's calls with their real signatures (cudaError_t and cudaMemcpyKind as int).
struct Runtime {
  int (*malloc_)(void**, size_t) = nullptr;
  int (*free_)(void*) = nullptr;
  int (*memcpy_)(void*, const void*, size_t, int) = nullptr;
  int (*device_count)(int*) = nullptr;
  int (*get_device)(int*) = nullptr;
  int (*set_device)(int) = nullptr;
  long (*synchronizes)(int) = nullptr;  // the stand-in's tmFakeCudaSynchronizes: device drains per current device
};
constexpr int kHostToDevice = 1;
constexpr int kDeviceToHost = 2;

int g_failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    ++g_failures;
    printf("FAIL: %s\n", what.c_str());
  }
}

using transfer_test::ReadAll;
using transfer_test::WriteAll;

// In a child, so that the parent forks the leaver before it has any UCX object: 0 when UCX (default configuration,
// as the client's) has CUDA memory support, 1 when not, 2 when UCX does not start.
int UcxCudaSupportInChild() {
  pid_t pid = fork();
  if (pid < 0) return 2;
  if (pid == 0) {
    const int cuda = transfer_test::UcxSupportsCuda();
    _exit(cuda < 0 ? 2 : cuda == 1 ? 0 : 1);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 2;
  return WEXITSTATUS(status);
}

struct Spec {
  std::string name;
  size_t size;
  tt::MemoryType type;  // of the joiner's region; the leaver's are host memory
};

const std::vector<Spec> kSpecs = {
    {"one", 1, tt::MemoryType::kCuda},
    {"odd", 65537, tt::MemoryType::kAuto},
    {"block", tt::kChecksumBlock, tt::MemoryType::kCuda},
    {"big", (size_t{3} << 20) + 5, tt::MemoryType::kCuda},  // not a multiple of the checksum block
    {"empty", 0, tt::MemoryType::kCuda},
};

// The leaver: regions filled with their pattern, exposed, sealed, the descriptor written to `fd`; serves until the
// parent closes `release`. Never returns. Host regions, or (`rt` set) device regions of the kinds in kSpecs, which
// this UCX cannot read, so the server stages them: they hold junk when exposed and get their pattern only between
// Expose and Seal, and junk again after Seal, so a reader sees the pattern only if Seal (not Expose) copied them to
// the host and what it exposes is that copy, not the device memory (which the stand-in makes unreadable to the CPU).
[[noreturn]] void Leaver(int fd, int release, const Runtime* rt) {
  std::vector<std::vector<unsigned char>> bufs(kSpecs.size());
  std::vector<tt::Region> regions;
  uint64_t device_bytes = 0;
  for (size_t i = 0; i < kSpecs.size(); ++i) {
    bufs[i].resize(kSpecs[i].size);
    Fill(&bufs[i], SeedOf(kSpecs[i].name));
    void* p = bufs[i].data();
    if (rt != nullptr && kSpecs[i].size > 0) {
      std::vector<unsigned char> junk(kSpecs[i].size, 0x5A);
      if (rt->malloc_(&p, kSpecs[i].size) != 0 || rt->memcpy_(p, junk.data(), junk.size(), kHostToDevice) != 0) {
        _exit(2);
      }
      device_bytes += kSpecs[i].size;
    }
    regions.push_back({kSpecs[i].name, p, bufs[i].size(), rt != nullptr ? kSpecs[i].type : tt::MemoryType::kHost});
  }
  std::unique_ptr<tt::StateServer> server;
  if (!tt::StateServer::Create({}, &server).ok()) _exit(1);
  if (tt::Status s = server->Expose(regions); !s.ok()) {
    printf("FAIL: leaver: Expose: %s\n", s.ToString().c_str());
    _exit(1);
  }
  if (server->StagedBytes() != device_bytes || server->DeviceBytes() != device_bytes) {
    printf("FAIL: leaver: %llu bytes staged, %llu of device regions, %llu expected\n",
           static_cast<unsigned long long>(server->StagedBytes()),
           static_cast<unsigned long long>(server->DeviceBytes()), static_cast<unsigned long long>(device_bytes));
    _exit(1);
  }
  auto set_device = [&](bool pattern) {
    for (size_t i = 0; rt != nullptr && i < kSpecs.size(); ++i) {
      std::vector<unsigned char> junk(bufs[i].size(), 0x3C);
      const unsigned char* from = pattern ? bufs[i].data() : junk.data();
      if (bufs[i].size() > 0 && rt->memcpy_(regions[i].ptr, from, bufs[i].size(), kHostToDevice) != 0) _exit(2);
    }
  };
  set_device(true);
  if (tt::Status s = server->Seal(); !s.ok()) {
    printf("FAIL: leaver: Seal: %s\n", s.ToString().c_str());
    _exit(1);
  }
  set_device(false);
  const std::vector<uint8_t>& d = server->Descriptor();
  const uint64_t n = d.size();
  if (!WriteAll(fd, &n, sizeof(n)) || !WriteAll(fd, d.data(), d.size())) _exit(1);
  char c;
  while (read(release, &c, 1) > 0) {
  }
  server->Close();
  _exit(0);
}

// Device regions for kSpecs, each filled with a byte the leaver's pattern does not consist of.
class DeviceRegions {
 public:
  explicit DeviceRegions(const Runtime& rt) : rt_(rt) {
    for (const Spec& s : kSpecs) {
      void* p = nullptr;
      if (s.size > 0 && rt_.malloc_(&p, s.size) != 0) Check(false, "cudaMalloc of " + std::to_string(s.size));
      regions_.push_back({s.name, p, s.size, s.type});
    }
    Scrub();
  }
  ~DeviceRegions() {
    for (const tt::Region& r : regions_) {
      if (r.ptr != nullptr) rt_.free_(r.ptr);
    }
  }
  const std::vector<tt::Region>& regions() const { return regions_; }

  void Scrub() {
    for (const tt::Region& r : regions_) {
      std::vector<unsigned char> junk(r.size, 0xA5);
      if (r.size > 0) Check(rt_.memcpy_(r.ptr, junk.data(), r.size, kHostToDevice) == 0, "cudaMemcpy scrub");
    }
  }

  // Regions whose device bytes differ from the leaver's (copied back to host, compared whole).
  size_t Wrong() const {
    size_t wrong = 0;
    for (const tt::Region& r : regions_) {
      std::vector<unsigned char> expect(r.size), back(r.size);
      Fill(&expect, SeedOf(r.name));
      if (r.size > 0 && rt_.memcpy_(back.data(), r.ptr, r.size, kDeviceToHost) != 0) {
        Check(false, "cudaMemcpy back of '" + r.name + "'");
      }
      if (back != expect) {
        printf("region '%s' differs on the device\n", r.name.c_str());
        ++wrong;
      }
    }
    return wrong;
  }

 private:
  const Runtime& rt_;
  std::vector<tt::Region> regions_;
};

void FetchInto(tt::StateClient* client, const std::vector<uint8_t>& descriptor, pid_t leaver, tt::FetchPath path,
               const Runtime& rt) {
  DeviceRegions dev(rt);
  tt::FetchOptions o;
  o.path = path;
  o.timeout_ms = 30000;
  o.leaver_pid = static_cast<uint32_t>(leaver);
  o.chunk_bytes = 100003;  // odd: chunks end inside checksum blocks
  tt::FetchResult r;
  const std::string what = std::string("fetch, path ") + tt::FetchPathName(path);
  tt::Status s = client->Fetch(descriptor, dev.regions(), o, &r);
  Check(s.ok(), what + ": " + s.ToString());
  Check(r.verified, what + ": verified");
  Check(r.stage_seconds > 0, what + ": stage_seconds set");
  if (path == tt::FetchPath::kUcx) Check(r.path == tt::FetchPath::kUcx, what + ": took the UCX path");
  Check(dev.Wrong() == 0, what + ": device bytes equal the leaver's");
  printf("%s: %llu bytes over %s, read %.4f s, staged to the device in %.6f s, verified %d\n", what.c_str(),
         static_cast<unsigned long long>(r.bytes), tt::FetchPathName(r.path), r.seconds, r.stage_seconds, r.verified);
}

// One Prepare, Read twice (the bounce buffers are kept across Reads), then once unverified: the copies happen
// after every Read that has all the bytes.
void PrepareAndReadAgain(tt::StateClient* client, const std::vector<uint8_t>& descriptor, pid_t leaver,
                         const Runtime& rt) {
  DeviceRegions dev(rt);
  tt::FetchOptions o;
  o.timeout_ms = 30000;
  o.leaver_pid = static_cast<uint32_t>(leaver);
  std::unique_ptr<tt::PreparedFetch> prepared;
  tt::Status s = client->Prepare(descriptor, dev.regions(), o, &prepared);
  Check(s.ok(), "prepare: " + s.ToString());
  if (!s.ok()) return;
  for (int round = 0; round < 3; ++round) {
    const std::string what = "prepared read " + std::to_string(round + 1);
    o.verify = round < 2;
    dev.Scrub();
    tt::FetchResult r;
    s = prepared->Read(o, &r);
    Check(s.ok(), what + ": " + s.ToString());
    Check(r.verified == o.verify, what + ": verified when verifying");
    Check(r.stage_seconds > 0, what + ": stage_seconds set");
    Check(dev.Wrong() == 0, what + ": device bytes equal the leaver's");
  }
}

// The staging decision alone (lib/transfer/staging.h): a device region is staged only when UCX cannot reach device
// memory; either way its side learns the runtime, the device and the bytes it must drain before the region is read
// (a leaver with a CUDA-aware UCX exposes it directly and still drains the device in Seal).
void StagingDecision(const Runtime& rt) {
  void* p = nullptr;
  if (rt.malloc_(&p, 4096) != 0) {
    Check(false, "cudaMalloc of 4096");
    return;
  }
  std::vector<unsigned char> host(100);
  for (const bool reaches : {true, false}) {
    const std::string what = std::string("staging decision, UCX ") + (reaches ? "reaches" : "cannot reach") + " CUDA";
    std::vector<tt::Region> regions = {{"d", p, 4096, tt::MemoryType::kCuda}, {"h", host.data(), host.size()},
                                       {"e", nullptr, 0, tt::MemoryType::kCuda}};
    std::vector<std::unique_ptr<tt::detail::StagedRegion>> staged;
    tt::detail::DeviceAccess device;
    tt::Status s = tt::detail::StageDeviceRegions(
        &regions,
        [&](bool* out) {
          *out = reaches;
          return tt::Status::Ok();
        },
        &staged, &device);
    Check(s.ok(), what + ": " + s.ToString());
    Check(device.rt != nullptr && device.device == 0 && device.bytes == 4096, what + ": the device access");
    Check(staged.size() == (reaches ? 0u : 1u), what + ": staged regions");
    Check(regions[0].ptr == (reaches ? p : (staged.empty() ? nullptr : staged[0]->host)), what + ": exposed pointer");
    Check(regions[0].type == (reaches ? tt::MemoryType::kCuda : tt::MemoryType::kHost), what + ": exposed type");
    Check(regions[1].ptr == host.data() && regions[1].type == tt::MemoryType::kHost, what + ": host region untouched");
  }
  rt.free_(p);
}

// Regions on device 1 read by a thread whose current device is 0, as the migration's job threads are: the joiner's
// drains and copies must run on device 1 (a drain of device 0 would not order the program's work on device 1), and
// the thread's current device is set back afterwards.
void FetchOnDeviceOne(tt::StateClient* client, const std::vector<uint8_t>& descriptor, pid_t leaver,
                      const Runtime& rt) {
  if (rt.set_device(1) != 0) {
    Check(false, "cudaSetDevice(1)");
    return;
  }
  DeviceRegions dev(rt);
  rt.set_device(0);
  const long before0 = rt.synchronizes(0), before1 = rt.synchronizes(1);
  tt::Status s;
  tt::FetchResult r;
  int current = -1;
  std::thread([&] {
    tt::FetchOptions o;
    o.timeout_ms = 30000;
    o.leaver_pid = static_cast<uint32_t>(leaver);
    s = client->Fetch(descriptor, dev.regions(), o, &r);
    rt.get_device(&current);
  }).join();
  Check(s.ok() && r.verified, "fetch into device 1 from a thread on device 0: " + s.ToString());
  Check(dev.Wrong() == 0, "device 1: bytes equal the leaver's");
  Check(rt.synchronizes(1) > before1, "the device drains ran with device 1 current");
  Check(rt.synchronizes(0) == before0, "no drain ran on device 0");
  Check(current == 0, "the reading thread's current device is set back to 0");
  printf("device 1 from a thread on device 0: %ld drains on device 1, %ld on device 0\n",
         rt.synchronizes(1) - before1, rt.synchronizes(0) - before0);
}

}  // namespace

int main() {
  void* lib = nullptr;
  for (const char* name : {"libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so"}) {
    if ((lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) != nullptr) break;
  }
  if (lib == nullptr) {
    printf("SKIP: no libcudart loaded (meson test preloads the stand-in from tests/fake_cuda)\n");
    return 77;
  }
  Runtime rt;
  rt.malloc_ = reinterpret_cast<decltype(rt.malloc_)>(dlsym(lib, "cudaMalloc"));
  rt.free_ = reinterpret_cast<decltype(rt.free_)>(dlsym(lib, "cudaFree"));
  rt.memcpy_ = reinterpret_cast<decltype(rt.memcpy_)>(dlsym(lib, "cudaMemcpy"));
  rt.device_count = reinterpret_cast<decltype(rt.device_count)>(dlsym(lib, "cudaGetDeviceCount"));
  rt.get_device = reinterpret_cast<decltype(rt.get_device)>(dlsym(lib, "cudaGetDevice"));
  rt.set_device = reinterpret_cast<decltype(rt.set_device)>(dlsym(lib, "cudaSetDevice"));
  rt.synchronizes = reinterpret_cast<decltype(rt.synchronizes)>(dlsym(lib, "tmFakeCudaSynchronizes"));
  const bool has_attributes = dlsym(lib, "cudaPointerGetAttributes") != nullptr;
  if (rt.malloc_ == nullptr || rt.free_ == nullptr || rt.memcpy_ == nullptr || rt.device_count == nullptr ||
      !has_attributes) {
    printf("SKIP: the loaded libcudart lacks one of cudaMalloc, cudaFree, cudaMemcpy, cudaGetDeviceCount, %s\n",
           "cudaPointerGetAttributes");
    return 77;
  }
  int devices = 0;
  if (rt.device_count(&devices) != 0 || devices == 0) {
    printf("SKIP: the CUDA runtime reports no device\n");
    return 77;
  }
  switch (UcxCudaSupportInChild()) {
    case 0:
      printf("SKIP: UCX here supports CUDA: device regions are read directly, nothing is staged\n");
      return 77;
    case 1:
      break;
    default:
      printf("FAIL: UCX does not start\n");
      return 1;
  }

  StagingDecision(rt);
  // Against a leaver of host regions, then (the stand-in runtime only: a real one cannot be used in a child forked
  // after the parent used it) one of device regions, staged on both sides.
  const bool stand_in = dlsym(lib, "tmFakeCudaHostRegistrations") != nullptr;
  if (!stand_in) printf("a real CUDA runtime: the leaver's device regions are not tried (fork)\n");
  for (const bool device_leaver : {false, true}) {
    if (device_leaver && !stand_in) break;
    printf("leaver with %s regions\n", device_leaver ? "device" : "host");
    int desc[2], release[2];
    if (pipe(desc) != 0 || pipe(release) != 0) return 1;
    const pid_t leaver = fork();
    if (leaver < 0) return 1;
    if (leaver == 0) {
      close(desc[0]);
      close(release[1]);
      Leaver(desc[1], release[0], device_leaver ? &rt : nullptr);
    }
    close(desc[1]);
    close(release[0]);
    uint64_t n = 0;
    std::vector<uint8_t> descriptor;
    if (!ReadAll(desc[0], &n, sizeof(n)) || n > tt::kMaxDescriptorBytes) {
      printf("FAIL: no descriptor from the leaver\n");
      return 1;
    }
    descriptor.resize(n);
    if (!ReadAll(desc[0], descriptor.data(), n)) return 1;
    close(desc[0]);
    {
      std::unique_ptr<tt::StateClient> client;
      tt::Status s = tt::StateClient::Create({}, &client);
      Check(s.ok(), "client: " + s.ToString());
      if (s.ok()) {
        FetchInto(client.get(), descriptor, leaver, tt::FetchPath::kUcx, rt);
        FetchInto(client.get(), descriptor, leaver, tt::FetchPath::kAuto, rt);
        PrepareAndReadAgain(client.get(), descriptor, leaver, rt);
        if (devices >= 2 && rt.get_device && rt.set_device && rt.synchronizes) {
          FetchOnDeviceOne(client.get(), descriptor, leaver, rt);
        } else if (!device_leaver) {
          printf("one device (or a real runtime): the reads on another device are not tried\n");
        }
      }
    }
    close(release[1]);
    int status = 0;
    Check(waitpid(leaver, &status, 0) == leaver && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the leaver exits cleanly");
  }
  if (g_failures > 0) return 1;
  printf("ok\n");
  return 0;
}
