// SPDX-License-Identifier: Apache-2.0
// Registry internals shared by state.cc and shim_api.cc (not for other parts: use shim_state.h).
#pragma once

#include "shim_state.h"

namespace trainmover::shim {

// Makes and publishes a live VComm (assigns lineage.index, computes comm_key; notifies the observer when
// `complete`: a non-blocking creation in progress is completed later by CompleteVComm).
VComm* CreateVComm(ncclComm_t real, Lineage lineage, const void* ids, size_t ids_bytes, bool complete = true);
// Marks `v` complete (its lineage now holds the real answers) and notifies the observer, once.
void CompleteVComm(VComm* v);
// Notifies the observer, releases the VComm's registrations/windows/ops and marks it dead.
void RetireVComm(VComm* v);

RegHandle* AcquireReg();
void ReleaseReg(RegHandle* r);
WinHandle* AcquireWin();
void ReleaseWin(WinHandle* w);

uint64_t HashBytes(const void* p, size_t n);
int64_t SafePointImpl(int64_t step);

}  // namespace trainmover::shim
