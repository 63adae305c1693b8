// SPDX-License-Identifier: Apache-2.0
//
// transfer.h: the state hand-off between a leaver and a joiner, one-sided (UCX RMA, or cma on one host).
//
// At a migration the leaver runs a StateServer: it maps its registered state regions for UCX (Expose),
// hands a descriptor (its worker address and, per region, name, remote address, size and packed rkey)
// to the joiner through the coordinator, and at the switch point computes the regions' checksums (Seal)
// while the joiner reads. The joiner runs a StateClient: Prepare connects everything ahead of the switch,
// then Read (or Fetch, both in one) reads every region ONE-SIDED with
// ucp_get_nbx in parallel chunks (many requests outstanding) into its own regions of the same names and
// sizes, fetches the leaver's checksums from a small control block the server exposes alongside the
// regions, hashes what it received and compares. The leaver's CPU does nothing per byte. Two paths
// (FetchPath): on one host the joiner reads the leaver's memory with process_vm_readv (cma), because UCX
// 1.13 never carries ucp_get over cma and, with peer error handling, not over shared memory either; across
// hosts (and for device memory) it uses ucp_get_nbx, which UCX emulates over active messages on tcp,
// answered by the server's progress thread. docs/transfer.md has the measurements behind this choice.
//
// Errors are values (Status), never exceptions, never exit/abort. Nothing here waits without a bound:
// every blocking call takes or inherits a timeout, and the client endpoint uses UCX's peer error
// handling, so a leaver that dies mid-transfer gives an error, not a hang.
//
// CUDA device memory: a Region may be device memory (MemoryType::kCuda, or kAuto to let UCX detect it).
// The mapping passes the memory type to ucp_mem_map; checksums of device memory copy it to host in
// chunks through the libcudart the application loaded (base/cudart.h; this library never links against CUDA
// nor loads it). Without a usable libcudart, device regions fail with kUnsupported. A side whose UCX cannot
// reach device memory (built without CUDA support, as Debian's) stages its device regions through host memory
// (staging.h): the leaver exposes host stand-ins that Seal fills, the joiner reads into host stand-ins and copies
// them to the device with cudaMemcpy at the end of Read.
//
// Thread safety: a StateServer or StateClient is driven by one thread at a time (its methods are not
// reentrant); distinct objects are independent, except the PreparedFetch objects of one StateClient to the same
// leaver process, which share a UCX worker: those are driven by one thread at a time, together. Server-side UCX
// progress runs on the server's own thread. Checksum functions are thread-safe.
#ifndef TRAINMOVER_LIB_TRANSFER_TRANSFER_H_
#define TRAINMOVER_LIB_TRANSFER_TRANSFER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace trainmover::transfer {

// Outcome of an operation. kOk carries no message; every other code carries one that names what failed.
enum class Code : int {
  kOk = 0,
  kInvalidArgument,   // bad region (null pointer with size > 0, empty or duplicate name), bad option
  kMismatch,          // local regions differ from the leaver's: a missing/extra name or a size difference
  kChecksumMismatch,  // data arrived but its checksum differs from the leaver's
  kPeerFailure,       // the peer process died or its endpoint failed (UCX reported an error)
  kTimeout,           // the operation did not finish within the caller's timeout
  kUnsupported,       // e.g. a CUDA region without a usable libcudart
  kBadDescriptor,     // the descriptor blob is truncated, corrupt or of another version
  kState,             // method called in the wrong state (Expose twice, Seal before Expose, ...)
  kUcx,               // another UCX failure (context, worker, mapping)
  kCuda,              // a CUDA runtime call failed (the copy of a staged region into device memory)
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kName: message", or "ok".
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

enum class MemoryType : uint8_t {
  kHost = 0,  // ordinary host memory
  // CUDA device memory (cudaMalloc). Moved directly where UCX has CUDA support, else staged through host memory on
  // that side (StateServer::Expose, StateClient::Prepare), which needs a loaded libcudart.
  kCuda = 1,
  // Let UCX detect the type when mapping (ucp_mem_query reports what it found). On the joiner, a kAuto region that
  // the loaded CUDA runtime calls device memory is staged like a kCuda one when UCX cannot write device memory.
  kAuto = 2,
};

// A region of state. The memory is owned by the caller and must stay valid (and, on the server,
// unchanged between Seal and the client's completion) until the StateServer is closed or Fetch returns.
struct Region {
  std::string name;     // 1..255 bytes, unique within a set of regions
  void* ptr = nullptr;  // may be null only when size == 0
  size_t size = 0;
  MemoryType type = MemoryType::kHost;
};

// The 64-bit checksum of a region. Defined on the bytes alone (independent of chunking, paths and threads):
// the region is cut into kChecksumBlock-byte blocks; each block feeds four CRC32C lanes (the four 8-byte
// words of every 32-byte stripe, one per lane; the crc32 instruction where the CPU has SSE4.2, a table
// otherwise, same values), the lanes are mixed into 64 bits with the block's length, and the block hashes are
// folded in order together with the total size. An error burst of up to 32 bits within a lane (in particular
// any single-bit change) always changes the checksum; random corruption escapes with probability ~2^-64.
// 256 KiB: small enough that a block a reader lane just copied is still in its L2 cache when it hashes it,
// and that 1 MiB of state gives four blocks to share among lanes.
inline constexpr size_t kChecksumBlock = size_t{256} << 10;
uint64_t Checksum(const void* data, size_t size, int threads = 1);
// Hash of one block (size <= kChecksumBlock); Checksum folds these. Exposed for tests and streaming use.
uint64_t BlockHash(const void* data, size_t size);
uint64_t FoldBlockHashes(std::span<const uint64_t> block_hashes, size_t total_size);
// How BlockHash computes on this CPU (same values every way): "vpclmulqdq" (AVX-512 carry-less multiply for
// blocks of 1 KiB and more, the crc32 instruction for the rest), "sse4.2" (the crc32 instruction), "table".
const char* BlockHashImplementation();
// Checksum of a region of either memory type (device memory is staged through host in chunks).
Status RegionChecksum(const Region& region, int threads, uint64_t* out);

// ServerOptions::ptracer_pid: any process may read (PR_SET_PTRACER_ANY).
inline constexpr int64_t kAnyPtracer = -1;

struct ServerOptions {
  // UCX transports (UCX_TLS syntax, e.g. "tcp" or "cma,tcp"); empty: UCX's default from the environment.
  std::string transports;
  // Threads hashing in Seal; 0: min(4, hardware threads).
  int hash_threads = 0;
  // The key of the descriptor's MAC and of the control block's checksum MAC (the migration passes the job's
  // token); the joiner must hold the same (ClientOptions::auth_key). Empty is a key like any other, for tests.
  std::string auth_key;
  // Yama ptrace_scope=1 lets a process read another's memory (process_vm_readv, the same-host path) only when
  // it is an ancestor or the named ptracer. Nonzero: Create names this process as ours (prctl PR_SET_PTRACER:
  // the joiner's pid, which the coordinator tells the leaver; kAnyPtracer for any process of the same user)
  // until Close withdraws it. One ptracer per process: a later server's choice replaces an earlier one's.
  int64_t ptracer_pid = 0;
  // Expose backs each host region's 2 MiB-aligned interior with transparent huge pages (MADV_COLLAPSE; contents
  // unchanged, best effort): a same-host joiner reads huge pages at about twice the speed of 4 KiB ones
  // (docs/transfer.md, "Huge pages"). Costs a copy of the state inside Expose. false: benchmarks' before/after.
  bool huge_pages = true;
};

// The leaver's side. Create, Expose once, hand Descriptor() to the joiner, Seal at the switch point, Close.
// Every mapping is remote-read-only: the joiner never writes into the leaver (it reports its outcome to the
// coordinator). A progress thread serves the joiner's requests between Expose and
// Close (it sleeps on the worker's event fd when idle, so it costs nothing while nothing happens).
class StateServer {
 public:
  static Status Create(const ServerOptions& options, std::unique_ptr<StateServer>* out);
  ~StateServer();  // Close()s if still open
  StateServer(const StateServer&) = delete;
  StateServer& operator=(const StateServer&) = delete;

  // Maps the regions for remote access and packs their rkeys. Regions are copied (the memory is not).
  // Blocking, fast (registration only). Once per server.
  //
  // Device regions (kCuda, or kAuto that the loaded CUDA runtime calls device memory) when UCX here cannot read
  // device memory (no UCS_MEMORY_TYPE_CUDA: Debian's UCX): each is exposed as a host stand-in that Expose allocates
  // and Seal fills (the device drained, then one cudaMemcpy per region). Without a loaded CUDA runtime with
  // cudaMemcpy: kUnsupported, naming the region, before anything is mapped. With a CUDA-capable UCX device regions
  // are exposed directly. Either way the joiner must not read them before Seal returned (DeviceBytes() > 0 says so).
  // A failed Expose leaves nothing exposed or staged.
  Status Expose(const std::vector<Region>& regions);

  // The blob to send to the joiner (bounded: kMaxDescriptorBytes). Empty before Expose.
  const std::vector<uint8_t>& Descriptor() const;
  // Bytes of the exposed regions that Expose put in huge pages (ServerOptions::huge_pages), for the log.
  uint64_t HugePageBytes() const;
  // Bytes of the exposed device regions: readable only once Seal has returned (it drains the device first, so the
  // program's work still in flight on any stream has landed, and copies staged ones to their stand-ins).
  uint64_t DeviceBytes() const;
  // Of those, the bytes exposed through host stand-ins (below).
  uint64_t StagedBytes() const;

  // With device regions: drains the device (cudaDeviceSynchronize, on the regions' device; unbounded, as CUDA has no
  // bounded wait for a device) and copies staged regions to their stand-ins. Then hashes every region (in parallel)
  // and publishes the checksums, with their MAC, to the control block the client polls.
  // Call at the switch point, when the regions no longer change; the client may already be reading host regions.
  // Blocking for the time of the hash. Returns the checksums in Expose's order.
  Status Seal(std::vector<uint64_t>* checksums = nullptr);
  // Checksums computed by Seal (empty before).
  const std::vector<uint64_t>& Checksums() const;

  // Stops the progress thread, unmaps the regions, releases UCX. Idempotent.
  void Close();
  // Close for a hand-off that did not complete: stops the progress thread and unmaps the regions (nothing is
  // readable any more) but keeps the UCX worker and context, which are never released. UCX 1.13 aborts the
  // process when it destroys a worker whose endpoint to a peer that has become unreachable (its host cut off)
  // still holds a connection message (openucx/ucx#8175); an abandoned migration cannot rule that out. Costs one
  // idle worker per abandoned hand-off. Idempotent; Close afterwards does nothing.
  void Abandon();

  struct Impl;

 private:
  explicit StateServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

inline constexpr size_t kMaxDescriptorBytes = size_t{1} << 20;
inline constexpr size_t kMaxRegions = 65536;

// How the joiner reads. kAuto: kCma when the leaver is on this host, in this pid namespace, every region is
// host memory and a probe read is permitted; otherwise kUcx. kCma: process_vm_readv straight from the
// leaver's memory (one-sided, zero-copy, the kernel does the copy), several threads, each hashing the block
// it just read; an error if not possible. kUcx: ucp_get_nbx (any host, device memory).
enum class FetchPath : uint8_t { kAuto = 0, kUcx = 1, kCma = 2 };
const char* FetchPathName(FetchPath path);

struct FetchOptions {
  FetchPath path = FetchPath::kAuto;
  // Bytes per ucp_get_nbx request (>= 1), at most: a small state is cut finer so that max_outstanding
  // gets are in flight (each at least kChecksumBlock). kCma reads kChecksumBlock at a time.
  size_t chunk_bytes = size_t{4} << 20;
  int max_outstanding = 16;  // requests in flight at once (>= 1); kCma: caps the reader lanes; fixed at Prepare
  // Whole Fetch (Prepare: the connection; Read: the data and the leaver's checksums). The migration gives
  // HandOffTimeoutMs(bytes): a floor plus the state's size at a minimum bandwidth (docs/transfer.md).
  int timeout_ms = 60000;
  // Prepare: the pid the leaver registered with the coordinator; a descriptor naming another pid is refused
  // (kBadDescriptor). 0: not checked (callers that know no pid, e.g. snapshot buddies).
  uint32_t leaver_pid = 0;
  // kCma: reader lanes (each reads and hashes its blocks); 0: one per 4 hardware threads (at most 4) and per
  // 4 MiB of state. UCX path: threads hashing device regions after the data; 0: min(4, hardware threads).
  int hash_threads = 0;
  bool verify = true;  // false: skip checksums (benchmarks of the raw read only)
  // kCma only, used by Prepare: read every byte once there, into the joiner's regions, unhashed (what the leaver
  // holds then is not what Read will fetch). A page's first read by process_vm_readv costs 10-20x its later
  // reads on a virtual machine (docs/transfer.md, "Warm read"); this moves that cost from the switch into the
  // build phase, at the price of one more copy of the state there. The UCX path ignores it.
  bool warm = false;
  // Use these checksums instead of polling the leaver's control block (e.g. sent by the coordinator).
  std::vector<uint64_t> expected_checksums;
  // Called on the Fetch thread after completions, at most once per completed chunk, never concurrently.
  std::function<void(uint64_t bytes_done, uint64_t bytes_total)> progress;
};

struct FetchResult {
  uint64_t bytes = 0;
  double seconds = 0;                // the data reads, from the first request to the last completion
  double gbps = 0;                   // bytes / seconds / 1e9
  double verify_seconds = 0;         // after the data: waiting for the leaver's checksums, comparing (hashing
                                     // overlaps the data; device regions are hashed here)
  double prepare_seconds = 0;        // Fetch only: the Prepare part (connection, rkeys, registrations, lanes)
  std::vector<uint64_t> checksums;   // the client's, in the order of the local regions passed to Fetch
  bool verified = false;             // every checksum compared equal (and staged regions reached the device)
  FetchPath path = FetchPath::kUcx;  // the path actually taken (kUcx or kCma)
  // Device regions staged through host (StateClient::Prepare): the host->device copies of the bounce buffers,
  // after the data and the verification (on the read's critical path, not part of `seconds`); 0 when none.
  double stage_seconds = 0;
};

struct ClientOptions {
  std::string transports;  // as ServerOptions::transports
  std::string auth_key;    // as ServerOptions::auth_key: a descriptor or checksum block of another key is refused
  // UCP_ERR_HANDLING_MODE_PEER on the endpoint (default): a dead or unreachable leaver is an error. UCX
  // 1.13 then needs transports with peer-failure support for every lane, which on one host excludes the
  // shared-memory transports (sysv, posix) and leaves tcp (get emulated over active messages). false:
  // UCX may use shared memory (several times faster on one host, see docs/transfer.md), but a transport
  // failure is fatal to the process inside UCX; only for benchmarks and trusted single-host use.
  bool peer_error_handling = true;
  // Prepare backs the joiner's host regions with huge pages (as ServerOptions::huge_pages) before it populates
  // them; false: benchmarks' before/after.
  bool huge_pages = true;
};

class PreparedFetch;

// The joiner's side. One client may Fetch several times (from the same or different servers).
class StateClient {
 public:
  // Cheap: UCX (context and worker, ~20 ms) is initialised by the first Prepare that takes the UCX path or has a
  // device region (to ask UCX whether it supports CUDA), so a bad ClientOptions::transports is reported there;
  // the same-host path with host regions never initialises it.
  static Status Create(const ClientOptions& options, std::unique_ptr<StateClient>* out);
  ~StateClient();
  StateClient(const StateClient&) = delete;
  StateClient& operator=(const StateClient&) = delete;

  // Everything but the bytes, meant for the build phase, before the switch: checks the descriptor's MAC (else
  // kBadDescriptor) and, when options.leaver_pid is set, its pid; decodes it, matches
  // the regions (names and sizes must match exactly, as sets; order may differ), picks the path, and
  // connects it: cma: a probe read of the leaver's control block and the reader lanes started; UCX: the
  // endpoint, rkeys unpacked, local host regions mapped, the wire-up completed by one round trip. Uses
  // options.path, max_outstanding and hash_threads (lanes) and timeout_ms (for the connection). The leaver
  // need not have sealed. The local regions must keep their addresses until the PreparedFetch is destroyed;
  // it must not outlive this client, and is driven by one thread at a time.
  //
  // Device regions (kCuda, or kAuto that the loaded CUDA runtime calls device memory) when UCX here cannot write
  // device memory (ucp_context_query: no UCS_MEMORY_TYPE_CUDA; Debian's UCX is built without CUDA): each is read
  // into a host bounce buffer that Prepare allocates (kept until the PreparedFetch is destroyed), and Read copies
  // it to the device with cudaMemcpy once every byte is there and, with options.verify, the checksums compared
  // equal (FetchResult::stage_seconds; a failed copy is kCuda and names the region). The plan treats the buffer as
  // a host region: on one host the cma path may read into it, huge pages and populating apply. Costs one more
  // host copy's worth of memory and a host->device copy per region on the read's critical path. Without a loaded
  // CUDA runtime (with cudaMemcpy) a kCuda region is refused with kUnsupported. Checking UCX makes its context
  // here, only when there is a device region. With a CUDA-capable UCX device regions are read directly.
  Status Prepare(std::span<const uint8_t> descriptor, const std::vector<Region>& local, const FetchOptions& options,
                 std::unique_ptr<PreparedFetch>* out);

  // Prepare + Read in one call (result->prepare_seconds tells the Prepare part). On failure the local regions
  // hold unspecified bytes.
  Status Fetch(std::span<const uint8_t> descriptor, const std::vector<Region>& local, const FetchOptions& options,
               FetchResult* result);

  struct Impl;

 private:
  explicit StateClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A connected fetch (StateClient::Prepare). Read moves the bytes at the switch point.
class PreparedFetch {
 public:
  ~PreparedFetch();  // closes the endpoint, unmaps, joins the lanes; bounded (UCX teardown: <= 2 s)
  PreparedFetch(const PreparedFetch&) = delete;
  PreparedFetch& operator=(const PreparedFetch&) = delete;

  // Reads every region (each checksum block hashed as soon as it landed), then, unless options.verify is
  // false, waits for the leaver's checksums (or takes options.expected_checksums), checks their MAC (a
  // failure is kChecksumMismatch) and compares. Uses options.chunk_bytes, timeout_ms, verify, expected_checksums, progress (the
  // path and lanes were fixed by Prepare). May be called again (reads and verifies everything again); after a
  // failure other than kChecksumMismatch, Prepare again.
  Status Read(const FetchOptions& options, FetchResult* result);

  FetchPath path() const;  // kUcx or kCma
  uint64_t bytes() const;  // total bytes one Read moves
  uint64_t huge_page_bytes() const;  // of the joiner's regions, in huge pages after Prepare (ClientOptions::huge_pages)

  struct Impl;

 private:
  friend class StateClient;
  explicit PreparedFetch(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace trainmover::transfer

#endif  // TRAINMOVER_LIB_TRANSFER_TRANSFER_H_
