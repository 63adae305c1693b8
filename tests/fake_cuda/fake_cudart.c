// SPDX-License-Identifier: Apache-2.0
// A stand-in for libcudart with the one call the shim's capture check makes (cudaStreamIsCapturing). Loaded
// with LD_PRELOAD by the migration tests (soname libcudart.so.12, so dlopen(RTLD_NOLOAD) finds it); every
// stream reports an active capture when TM_FAKE_CAPTURE=1. Never installed, never linked against.
#include <stdlib.h>

typedef struct CUstream_st* cudaStream_t;

__attribute__((visibility("default"))) int cudaStreamIsCapturing(cudaStream_t stream, int* status) {
  (void)stream;
  const char* v = getenv("TM_FAKE_CAPTURE");
  *status = (v && v[0] == '1') ? 1 : 0;  // cudaStreamCaptureStatusActive : None
  return 0;                              // cudaSuccess
}
