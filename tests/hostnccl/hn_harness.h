// SPDX-License-Identifier: Apache-2.0
// Multi-process test harness for the NCCL API (nccl.h only, so the same programs run on hostnccl, under the
// shim, or on the real library). The parent creates the unique id before forking and stays alive (its
// rendezvous thread serves the children); each child is one rank and exits with its failure count.
#pragma once

#include <nccl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define HT_EXPECT(cond, ...)                                                                 \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "[pid %d] %s:%d: expected %s: ", getpid(), __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fprintf(stderr, "\n");                                                                 \
      ++failures;                                                                            \
    }                                                                                        \
  } while (0)

#define HT_NCCL(call)                                                                         \
  do {                                                                                        \
    ncclResult_t ht_r_ = (call);                                                              \
    if (ht_r_ != ncclSuccess) {                                                               \
      fprintf(stderr, "[pid %d] %s:%d: %s -> %s (%s)\n", getpid(), __FILE__, __LINE__, #call, \
              ncclGetErrorString(ht_r_), ncclGetLastError(nullptr));                          \
      return failures + 1;                                                                    \
    }                                                                                         \
  } while (0)

namespace ht {

using Body = std::function<int(int rank, int nranks, const ncclUniqueId& id)>;

// A hang guard's seconds times TM_TEST_TIMEOUT_SCALE (`./run test --sanitize` sets 3: sanitized ranks run
// several times slower).
inline int ScaledTimeout(int seconds) {
  const char* v = getenv("TM_TEST_TIMEOUT_SCALE");
  int scale = v ? atoi(v) : 1;
  return seconds * (scale > 1 ? scale : 1);
}

// Forks nranks children running body; returns the total failures (a crash, a signal or the timeout counts,
// except SIGKILL of a rank in killed_ok, a bit mask of ranks that are meant to be killed). The timeout is
// scaled by ScaledTimeout.
inline int RunRanks(int nranks, const Body& body, int timeout_s = 50, uint64_t killed_ok = 0) {
  timeout_s = ScaledTimeout(timeout_s);
  // The ranks are forked before the unique id exists, while this process has one thread: ncclGetUniqueId
  // starts the rendezvous thread, and a child of a multi-threaded process may not start threads of its own
  // (ThreadSanitizer refuses it). Each rank reads the id from its pipe; a rank that reads none exits failed.
  fflush(stdout);
  fflush(stderr);
  std::vector<pid_t> pids;
  std::vector<int> id_pipes;
  int failures = 0;
  for (int r = 0; r < nranks && failures == 0; ++r) {
    int fds[2];
    if (pipe(fds) != 0) {
      perror("pipe");  // the ranks forked so far read no id
      ++failures;
      break;
    }
    pid_t p = fork();
    if (p == 0) {
      for (int w : id_pipes) close(w);
      close(fds[1]);
      ncclUniqueId id;
      bool got = read(fds[0], &id, sizeof id) == static_cast<ssize_t>(sizeof id);  // a pipe: one write, whole
      close(fds[0]);
      int f = got ? body(r, nranks, id) : 1;
      fflush(stdout);
      fflush(stderr);
      _exit(f > 100 ? 100 : f);
    }
    close(fds[0]);
    id_pipes.push_back(fds[1]);
    pids.push_back(p);
  }
  ncclUniqueId id;
  bool have_id = failures == 0 && ncclGetUniqueId(&id) == ncclSuccess;
  if (failures == 0 && !have_id) {
    fprintf(stderr, "ncclGetUniqueId failed: %s\n", ncclGetLastError(nullptr));
    ++failures;
  }
  for (int w : id_pipes) {
    if (have_id && write(w, &id, sizeof id) != static_cast<ssize_t>(sizeof id)) ++failures;
    close(w);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  size_t left = pids.size();
  std::vector<bool> done(pids.size(), false);
  while (left) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int st;
      if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        done[i] = true;
        --left;
        if (WIFEXITED(st))
          failures += WEXITSTATUS(st);
        else if (WTERMSIG(st) == SIGKILL && ((killed_ok >> i) & 1))
          continue;
        else {
          fprintf(stderr, "rank %zu died with signal %d\n", i, WTERMSIG(st));
          ++failures;
        }
      }
    }
    if (left && std::chrono::steady_clock::now() > deadline) {
      fprintf(stderr, "timeout: killing %zu ranks\n", left);
      for (size_t i = 0; i < pids.size(); ++i) {
        if (!done[i]) kill(pids[i], SIGKILL);
      }
      failures += static_cast<int>(left);
      deadline = std::chrono::steady_clock::time_point::max();  // once: the killed ranks are reaped above
    }
    if (left) usleep(2000);
  }
  return failures;
}

// ---- exact values in every NCCL type (the test's own encoder; values must be exactly representable) ----
inline size_t Size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    default:
      return 8;
  }
}

inline bool IsFloat(ncclDataType_t t) {
  return t == ncclFloat16 || t == ncclFloat32 || t == ncclFloat64 || t == ncclBfloat16 || t == ncclFloat8e4m3 ||
         t == ncclFloat8e5m2;
}

// Small float formats: mbits mantissa bits, exponent bias.
inline uint32_t EncodeSmall(double v, int ebits, int mbits, int bias) {
  uint32_t sign = v < 0 ? 1u << (ebits + mbits) : 0;
  v = std::fabs(v);
  if (v == 0) return sign;
  int e;
  double m = std::frexp(v, &e);  // v = m 2^e, m in [0.5,1)
  int exp = e - 1 + bias;
  if (exp <= 0) return sign | static_cast<uint32_t>(std::ldexp(v, mbits + bias - 1));  // subnormal
  uint32_t mant = static_cast<uint32_t>(std::ldexp(m * 2 - 1, mbits));
  return sign | (static_cast<uint32_t>(exp) << mbits) | mant;
}
inline double DecodeSmall(uint32_t b, int ebits, int mbits, int bias) {
  bool neg = (b >> (ebits + mbits)) & 1;
  uint32_t e = (b >> mbits) & ((1u << ebits) - 1), m = b & ((1u << mbits) - 1);
  double v =
      e == 0 ? std::ldexp(m, 1 - bias - mbits) : std::ldexp((1u << mbits) | m, static_cast<int>(e) - bias - mbits);
  return neg ? -v : v;
}

inline void Put(ncclDataType_t t, void* buf, size_t i, double v) {
  char* p = static_cast<char*>(buf) + i * Size(t);
  switch (t) {
    case ncclInt8: {
      int8_t x = static_cast<int8_t>(v);
      memcpy(p, &x, 1);
      break;
    }
    case ncclUint8: {
      uint8_t x = static_cast<uint8_t>(v);
      memcpy(p, &x, 1);
      break;
    }
    case ncclInt32: {
      int32_t x = static_cast<int32_t>(v);
      memcpy(p, &x, 4);
      break;
    }
    case ncclUint32: {
      uint32_t x = static_cast<uint32_t>(v);
      memcpy(p, &x, 4);
      break;
    }
    case ncclInt64: {
      int64_t x = static_cast<int64_t>(v);
      memcpy(p, &x, 8);
      break;
    }
    case ncclUint64: {
      uint64_t x = static_cast<uint64_t>(v);
      memcpy(p, &x, 8);
      break;
    }
    case ncclFloat32: {
      float x = static_cast<float>(v);
      memcpy(p, &x, 4);
      break;
    }
    case ncclFloat64:
      memcpy(p, &v, 8);
      break;
    case ncclFloat16: {
      uint16_t x = static_cast<uint16_t>(EncodeSmall(v, 5, 10, 15));
      memcpy(p, &x, 2);
      break;
    }
    case ncclBfloat16: {
      uint16_t x = static_cast<uint16_t>(EncodeSmall(v, 8, 7, 127));
      memcpy(p, &x, 2);
      break;
    }
    case ncclFloat8e4m3: {
      uint8_t x = static_cast<uint8_t>(EncodeSmall(v, 4, 3, 7));
      memcpy(p, &x, 1);
      break;
    }
    case ncclFloat8e5m2: {
      uint8_t x = static_cast<uint8_t>(EncodeSmall(v, 5, 2, 15));
      memcpy(p, &x, 1);
      break;
    }
    default:
      break;
  }
}

inline double Get(ncclDataType_t t, const void* buf, size_t i) {
  const char* p = static_cast<const char*>(buf) + i * Size(t);
  switch (t) {
    case ncclInt8: {
      int8_t x;
      memcpy(&x, p, 1);
      return x;
    }
    case ncclUint8: {
      uint8_t x;
      memcpy(&x, p, 1);
      return x;
    }
    case ncclInt32: {
      int32_t x;
      memcpy(&x, p, 4);
      return x;
    }
    case ncclUint32: {
      uint32_t x;
      memcpy(&x, p, 4);
      return x;
    }
    case ncclInt64: {
      int64_t x;
      memcpy(&x, p, 8);
      return static_cast<double>(x);
    }
    case ncclUint64: {
      uint64_t x;
      memcpy(&x, p, 8);
      return static_cast<double>(x);
    }
    case ncclFloat32: {
      float x;
      memcpy(&x, p, 4);
      return x;
    }
    case ncclFloat64: {
      double x;
      memcpy(&x, p, 8);
      return x;
    }
    case ncclFloat16: {
      uint16_t x;
      memcpy(&x, p, 2);
      return DecodeSmall(x, 5, 10, 15);
    }
    case ncclBfloat16: {
      uint16_t x;
      memcpy(&x, p, 2);
      return DecodeSmall(x, 8, 7, 127);
    }
    case ncclFloat8e4m3: {
      uint8_t x;
      memcpy(&x, p, 1);
      return DecodeSmall(x, 4, 3, 7);
    }
    case ncclFloat8e5m2: {
      uint8_t x;
      memcpy(&x, p, 1);
      return DecodeSmall(x, 5, 2, 15);
    }
    default:
      return NAN;
  }
}

inline const char* TypeName(ncclDataType_t t) {
  static const char* n[] = {"int8", "uint8", "int32",  "uint32",   "int64", "uint64",
                            "half", "float", "double", "bfloat16", "e4m3",  "e5m2"};
  return (t >= 0 && t < 12) ? n[t] : "?";
}

}  // namespace ht
