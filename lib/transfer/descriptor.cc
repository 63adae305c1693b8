// SPDX-License-Identifier: Apache-2.0
#include "descriptor.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>

#include "base/crypto.h"
#include "base/host.h"

namespace trainmover::transfer::detail {
namespace {

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* out) : out_(out) {}
  template <typename T>
  void Put(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_->push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
  }
  void Bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_->insert(out_->end(), b, b + n);
  }

 private:
  std::vector<uint8_t>* out_;
};

class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() - pos_ < sizeof(T)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= static_cast<uint64_t>(in_[pos_ + i]) << (8 * i);
    pos_ += sizeof(T);
    *v = static_cast<T>(x);
    return true;
  }
  bool Bytes(size_t n, std::vector<uint8_t>* out) {
    if (in_.size() - pos_ < n) return false;
    out->assign(in_.begin() + pos_, in_.begin() + pos_ + n);
    pos_ += n;
    return true;
  }
  bool Done() const { return pos_ == in_.size(); }
  size_t Position() const { return pos_; }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

Status Bad(const std::string& what) { return Status(Code::kBadDescriptor, "descriptor: " + what); }

constexpr char kDescriptorLabel[] = "trainmover transfer descriptor v4";
constexpr char kChecksumLabel[] = "trainmover transfer checksums v4";

namespace crypto = base::crypto;
static_assert(kMacBytes == crypto::kHmacBytes);

// HMAC-SHA256(key, label || data). A failure of OpenSSL leaves a MAC of zeros, which no check accepts (the
// other side computes a real one).
void Mac(std::string_view key, std::string_view label, std::span<const uint8_t> data, uint8_t (&mac)[kMacBytes]) {
  crypto::Hmac h{};
  if (!crypto::HmacSha256(crypto::AsBytes(key), {crypto::AsBytes(label), data}, &h)) h.fill(0);
  std::memcpy(mac, h.data(), kMacBytes);
}

}  // namespace

bool MacEqual(const uint8_t* a, const uint8_t* b) { return crypto::ConstantTimeEqual(a, b, kMacBytes); }

void ChecksumMac(std::string_view key, const uint8_t (&nonce)[kNonceBytes], std::span<const uint64_t> checksums,
                 uint8_t (&mac)[kMacBytes]) {
  std::vector<uint8_t> data(nonce, nonce + kNonceBytes);
  Writer w(&data);
  w.Put<uint64_t>(checksums.size());
  for (uint64_t c : checksums) w.Put<uint64_t>(c);
  Mac(key, kChecksumLabel, data, mac);
}

Status EncodeDescriptor(const DescriptorData& data, std::string_view key, std::vector<uint8_t>* out) {
  if (data.regions.size() > kMaxRegions) return Status(Code::kInvalidArgument, "too many regions");
  out->clear();
  Writer w(out);
  w.Put<uint32_t>(kDescriptorMagic);
  w.Put<uint16_t>(kDescriptorVersion);
  w.Put<uint16_t>(0);
  w.Bytes(data.nonce, sizeof(data.nonce));
  w.Bytes(data.host.boot_id, sizeof(data.host.boot_id));
  w.Put<uint64_t>(data.host.pid_namespace);
  w.Put<uint32_t>(data.host.pid);
  w.Put<uint32_t>(static_cast<uint32_t>(data.worker_address.size()));
  w.Bytes(data.worker_address.data(), data.worker_address.size());
  w.Put<uint64_t>(data.control.address);
  w.Put<uint64_t>(data.control.size);
  w.Put<uint32_t>(static_cast<uint32_t>(data.control.rkey.size()));
  w.Bytes(data.control.rkey.data(), data.control.rkey.size());
  w.Put<uint32_t>(static_cast<uint32_t>(data.regions.size()));
  for (const RemoteRegion& r : data.regions) {
    if (r.name.empty() || r.name.size() > 255) return Status(Code::kInvalidArgument, "bad region name length");
    w.Put<uint8_t>(static_cast<uint8_t>(r.name.size()));
    w.Bytes(r.name.data(), r.name.size());
    w.Put<uint64_t>(r.address);
    w.Put<uint64_t>(r.size);
    w.Put<uint8_t>(r.memory_type);
    w.Put<uint32_t>(static_cast<uint32_t>(r.rkey.size()));
    w.Bytes(r.rkey.data(), r.rkey.size());
  }
  uint8_t mac[kMacBytes];
  Mac(key, kDescriptorLabel, *out, mac);
  w.Bytes(mac, sizeof(mac));
  if (out->size() > kMaxDescriptorBytes) {
    return Status(Code::kInvalidArgument, "descriptor of " + std::to_string(out->size()) + " bytes exceeds the limit");
  }
  return Status::Ok();
}

namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

HostIdentity ReadIdentity() {
  HostIdentity id;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string text;
  std::getline(f, text);
  // "xxxxxxxx-xxxx-...": keep the 32 hex digits as 16 bytes; an unreadable or malformed file leaves zeros
  // (never "same host").
  size_t n = 0;
  int high = -1;
  for (char c : text) {
    if (c == '-') continue;
    int v = HexDigit(c);
    if (v < 0 || n == 16) return HostIdentity{};
    if (high < 0) {
      high = v;
    } else {
      id.boot_id[n++] = static_cast<uint8_t>(high << 4 | v);
      high = -1;
    }
  }
  if (n != 16) return HostIdentity{};
  struct stat st {};
  if (stat("/proc/self/ns/pid", &st) == 0) id.pid_namespace = st.st_ino;
  // Hosts that share a kernel (network namespaces, containers: TRAINMOVER_HOST tells them apart) are
  // different hosts for the hand-off: the bytes go over the network as between machines. The host's name
  // and network namespace are folded into the boot id, so the descriptor's layout stays as it is.
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
  };
  const std::string& name = base::HostName();
  mix(name.data(), name.size());
  if (stat("/proc/self/ns/net", &st) == 0) mix(&st.st_ino, sizeof(st.st_ino));
  for (int i = 0; i < 8; ++i) id.boot_id[i] ^= static_cast<uint8_t>(h >> (8 * i));
  return id;
}

}  // namespace

HostIdentity LocalIdentity() {
  // Boot id and namespace do not change in a process's life; a fork keeps them too (only the pid differs), so
  // the file is read once per process, not on every fetch.
  static const HostIdentity kCached = ReadIdentity();
  HostIdentity id = kCached;
  id.pid = static_cast<uint32_t>(getpid());
  return id;
}

bool SameHostAndPidNamespace(const HostIdentity& a, const HostIdentity& b) {
  static const uint8_t kZero[16] = {};
  return std::memcmp(a.boot_id, kZero, 16) != 0 && std::memcmp(a.boot_id, b.boot_id, 16) == 0 && a.pid_namespace != 0 &&
         a.pid_namespace == b.pid_namespace && a.pid != 0;
}

Status DecodeDescriptor(std::span<const uint8_t> blob, std::string_view key, DescriptorData* out) {
  *out = DescriptorData{};
  if (blob.size() > kMaxDescriptorBytes) return Bad("larger than the limit");
  if (blob.size() < kMacBytes) return Bad("shorter than its MAC");
  const std::span<const uint8_t> body = blob.first(blob.size() - kMacBytes);
  uint8_t mac[kMacBytes];
  Mac(key, kDescriptorLabel, body, mac);
  // Nothing of an unauthenticated blob is parsed: a forged or altered descriptor (another key, a byte changed
  // on the way) stops here.
  if (!MacEqual(mac, blob.data() + body.size())) return Bad("MAC mismatch (changed in transit, or another job's key)");
  return DecodeDescriptorBody(body, out);
}

Status DecodeDescriptorBody(std::span<const uint8_t> blob, DescriptorData* out) {
  *out = DescriptorData{};
  if (blob.size() > kMaxDescriptorBytes) return Bad("larger than the limit");
  Reader r(blob);
  uint32_t magic = 0, len = 0, count = 0;
  uint16_t version = 0, reserved = 0;
  if (!r.Get(&magic) || magic != kDescriptorMagic) return Bad("bad magic");
  if (!r.Get(&version) || version != kDescriptorVersion) return Bad("unsupported version " + std::to_string(version));
  // Reserved for flags a later version may define: refused unless zero, so that no bit is silently ignored.
  if (!r.Get(&reserved) || reserved != 0) return Bad("truncated header or nonzero reserved field");
  std::vector<uint8_t> nonce, boot;
  if (!r.Bytes(kNonceBytes, &nonce)) return Bad("truncated nonce");
  std::memcpy(out->nonce, nonce.data(), kNonceBytes);
  if (!r.Bytes(sizeof(out->host.boot_id), &boot) || !r.Get(&out->host.pid_namespace) || !r.Get(&out->host.pid)) {
    return Bad("truncated host identity");
  }
  std::memcpy(out->host.boot_id, boot.data(), sizeof(out->host.boot_id));
  if (!r.Get(&len) || len == 0 || !r.Bytes(len, &out->worker_address)) return Bad("bad worker address");
  if (!r.Get(&out->control.address) || !r.Get(&out->control.size) || !r.Get(&len) ||
      !r.Bytes(len, &out->control.rkey)) {
    return Bad("truncated control block");
  }
  if (!r.Get(&count) || count > kMaxRegions) return Bad("bad region count");
  if (out->control.size != ControlBytes(count)) return Bad("control block size disagrees with count");
  if (out->control.address == 0 || out->control.address + out->control.size < out->control.address ||
      out->control.rkey.empty()) {
    return Bad("bad control block");
  }
  // Every region takes at least 23 bytes (name length, one name byte, address, size, type, rkey length): a count
  // the remaining bytes cannot hold is refused before anything is allocated for it.
  if (count > (blob.size() - r.Position()) / 23) return Bad("region count exceeds the descriptor's size");
  std::set<std::string> names;
  out->regions.assign(count, {});
  for (RemoteRegion& reg : out->regions) {
    uint8_t name_len = 0;
    std::vector<uint8_t> name;
    if (!r.Get(&name_len) || name_len == 0 || !r.Bytes(name_len, &name)) return Bad("bad region name");
    reg.name.assign(name.begin(), name.end());
    if (!r.Get(&reg.address) || !r.Get(&reg.size) || !r.Get(&reg.memory_type) || !r.Get(&len) ||
        !r.Bytes(len, &reg.rkey)) {
      return Bad("truncated region '" + reg.name + "'");
    }
    if (reg.memory_type > static_cast<uint8_t>(MemoryType::kCuda)) return Bad("bad memory type");
    if (reg.size > 0 && reg.rkey.empty()) return Bad("region '" + reg.name + "' has no rkey");
    // A range that wraps around the address space cannot be a mapping; reads at address + offset would wrap.
    if (reg.address + reg.size < reg.address) return Bad("region '" + reg.name + "' wraps the address space");
    // Regions are matched by name: a repeated name would leave one of them unread yet "matched".
    if (!names.insert(reg.name).second) return Bad("region '" + reg.name + "' appears twice");
  }
  if (!r.Done()) return Bad("trailing bytes");
  return Status::Ok();
}

Status ValidateRegions(const std::vector<Region>& regions) {
  if (regions.size() > kMaxRegions) return Status(Code::kInvalidArgument, "too many regions");
  std::set<std::string> names;
  for (const Region& r : regions) {
    if (r.name.empty() || r.name.size() > 255) {
      return Status(Code::kInvalidArgument, "region name must be 1..255 bytes: '" + r.name + "'");
    }
    if (!names.insert(r.name).second) return Status(Code::kInvalidArgument, "duplicate region name '" + r.name + "'");
    if (r.ptr == nullptr && r.size > 0) return Status(Code::kInvalidArgument, "region '" + r.name + "' is null");
    if (r.type > MemoryType::kAuto) return Status(Code::kInvalidArgument, "region '" + r.name + "': bad type");
  }
  return Status::Ok();
}

}  // namespace trainmover::transfer::detail
