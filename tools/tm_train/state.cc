// SPDX-License-Identifier: Apache-2.0
#include "state.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace tm_train {

using trainmover::base::Status;
namespace {

constexpr char kMagic[8] = {'T', 'M', 'C', 'K', 'P', 'T', '0', '1'};

struct MdDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdDeleter>;

MdCtx NewSha256() {
  MdCtx ctx(EVP_MD_CTX_new());
  if (ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) ctx.reset();
  return ctx;
}

std::string Hex(const unsigned char* d, size_t n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += k[d[i] >> 4];
    s += k[d[i] & 15];
  }
  return s;
}

// Writes and hashes at the same time.
class HashedWriter {
 public:
  HashedWriter(int fd, EVP_MD_CTX* md) : fd_(fd), md_(md) {}
  bool Put(const void* p, size_t n) {
    EVP_DigestUpdate(md_, p, n);
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = write(fd_, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  template <typename T>
  bool Val(const T& v) {
    return Put(&v, sizeof(v));
  }

 private:
  int fd_;
  EVP_MD_CTX* md_;
};

class HashedReader {
 public:
  HashedReader(int fd, EVP_MD_CTX* md) : fd_(fd), md_(md) {}
  bool Get(void* p, size_t n, bool hash = true) {
    char* c = static_cast<char*>(p);
    size_t left = n;
    while (left > 0) {
      ssize_t r = read(fd_, c, left);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      c += r;
      left -= static_cast<size_t>(r);
    }
    if (hash) EVP_DigestUpdate(md_, p, n);
    return true;
  }
  template <typename T>
  bool Val(T* v) {
    return Get(v, sizeof(*v));
  }

 private:
  int fd_;
  EVP_MD_CTX* md_;
};

}  // namespace

std::string StateDigest(const std::vector<Region>& regions) {
  MdCtx ctx = NewSha256();
  for (const Region& r : regions) EVP_DigestUpdate(ctx.get(), r.ptr, r.bytes);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  return Hex(d, n);
}

std::string CheckpointPath(const std::string& dir, int rank) { return dir + "/rank-" + std::to_string(rank) + ".ckpt"; }

Status SaveCheckpoint(const std::string& path, const CheckpointMeta& meta, int64_t step,
                      const std::vector<Region>& regions) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status::Error("cannot create " + tmp + ": " + strerror(errno));
  }
  MdCtx ctx = NewSha256();
  HashedWriter w(fd, ctx.get());
  bool ok = w.Put(kMagic, sizeof(kMagic)) && w.Val(meta.seed) && w.Val(meta.params) && w.Val(int32_t{meta.rank}) &&
            w.Val(int32_t{meta.world}) && w.Val(step) && w.Val(static_cast<uint32_t>(regions.size()));
  for (const Region& r : regions) {
    if (!ok) break;
    ok = w.Val(static_cast<uint32_t>(r.name.size())) && w.Put(r.name.data(), r.name.size()) &&
         w.Val(static_cast<uint64_t>(r.bytes)) && w.Put(r.ptr, r.bytes);
  }
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  MdCtx unused = NewSha256();
  HashedWriter tail(fd, unused.get());
  ok = ok && tail.Put(d, n) && fsync(fd) == 0;
  int close_rc = close(fd);
  if (!ok || close_rc != 0) {
    Status st = Status::Error("cannot write " + tmp + ": " + strerror(errno));
    unlink(tmp.c_str());
    return st;
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = Status::Error("cannot rename " + tmp + " to " + path + ": " + strerror(errno));
    unlink(tmp.c_str());
    return st;
  }
  return Status::Ok();
}

Status LoadCheckpoint(const std::string& path, const CheckpointMeta& meta, const std::vector<Region>& regions,
                      int64_t* step) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::Error("cannot open " + path + ": " + strerror(errno));
  }
  MdCtx ctx = NewSha256();
  HashedReader r(fd, ctx.get());
  auto fail = [&](const std::string& why) {
    close(fd);
    return Status::Error(path + ": " + why);
  };
  char magic[8];
  CheckpointMeta m;
  int32_t rank = 0, world = 0;
  uint32_t nreg = 0;
  if (!r.Get(magic, 8) || memcmp(magic, kMagic, 8) != 0) return fail("not a tm-train checkpoint");
  if (!r.Val(&m.seed) || !r.Val(&m.params) || !r.Val(&rank) || !r.Val(&world) || !r.Val(step) || !r.Val(&nreg)) {
    return fail("truncated header");
  }
  if (m.seed != meta.seed || m.params != meta.params || rank != meta.rank || world != meta.world) {
    return fail("written by a different run (seed " + std::to_string(m.seed) + ", params " + std::to_string(m.params) +
                ", rank " + std::to_string(rank) + "/" + std::to_string(world) + ")");
  }
  if (nreg != regions.size())
    return fail("has " + std::to_string(nreg) + " regions, expected " + std::to_string(regions.size()));
  for (const Region& reg : regions) {
    uint32_t len = 0;
    uint64_t bytes = 0;
    if (!r.Val(&len) || len > 4096) return fail("bad region name");
    std::string name(len, '\0');
    if (!r.Get(name.data(), len) || !r.Val(&bytes)) return fail("truncated region header");
    if (name != reg.name || bytes != reg.bytes) {
      return fail("region '" + name + "' (" + std::to_string(bytes) + " bytes) where '" + reg.name + "' (" +
                  std::to_string(reg.bytes) + " bytes) was expected");
    }
    if (!r.Get(reg.ptr, reg.bytes)) return fail("truncated region '" + name + "'");
  }
  unsigned char d[EVP_MAX_MD_SIZE], stored[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  if (!r.Get(stored, n, false) || memcmp(d, stored, n) != 0) return fail("checksum mismatch (corrupt file)");
  char extra;
  if (read(fd, &extra, 1) != 0) return fail("trailing bytes");
  close(fd);
  return Status::Ok();
}

}  // namespace tm_train
