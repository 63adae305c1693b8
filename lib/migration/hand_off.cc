// SPDX-License-Identifier: Apache-2.0
#include "hand_off.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "base/crypto.h"
#include "base/host.h"
#include "core/shim_state.h"

namespace trainmover::migration {

namespace {
// The hand-off's own key, derived from the job's token (HKDF, its own label): the token itself never keys
// anything but the control protocol's handshake.
std::string TransferKey() {
  namespace crypto = base::crypto;
  uint8_t key[32];
  if (!crypto::HkdfSha256(crypto::AsBytes(shim::ProcessConfig().token), {},
                          crypto::AsBytes("trainmover transfer descriptor key v1"), key, sizeof(key))) {
    return "";  // both sides fail alike only if OpenSSL is broken; the descriptors then fail their MAC
  }
  return std::string(reinterpret_cast<const char*>(key), sizeof(key));
}
}  // namespace

transfer::ServerOptions HandOffServerOptions(const std::string& destination) {
  transfer::ServerOptions o;
  o.auth_key = TransferKey();
  o.huge_pages = shim::ProcessConfig().huge_pages != "off";
  // "host H pid P": only a joiner on this host can read with process_vm_readv, so only it is named.
  const std::string host = "host " + base::HostName() + " pid ";
  if (destination.rfind(host, 0) == 0) {
    const long long pid = std::strtoll(destination.c_str() + host.size(), nullptr, 10);
    if (pid > 0) o.ptracer_pid = pid;
  }
  return o;
}

transfer::ClientOptions HandOffClientOptions() {
  transfer::ClientOptions o;
  o.auth_key = TransferKey();
  o.huge_pages = shim::ProcessConfig().huge_pages != "off";
  return o;
}

namespace {
uint64_t BudgetMs(uint64_t bytes) {
  const shim::Config& c = shim::ProcessConfig();
  // bytes / (MB/s * 10^6) seconds = bytes / (MB/s * 1000) milliseconds, rounded up.
  const uint64_t per_ms = static_cast<uint64_t>(c.transfer_min_mbps) * 1000;
  return static_cast<uint64_t>(c.transfer_floor_ms) + (bytes + per_ms - 1) / per_ms;
}
}  // namespace

int HandOffTimeoutMs(uint64_t bytes) { return static_cast<int>(std::min<uint64_t>(BudgetMs(bytes), INT_MAX)); }

std::string HandOffTooSlow(uint64_t bytes) {
  const shim::Config& c = shim::ProcessConfig();
  const uint64_t budget = BudgetMs(bytes), half_hold = static_cast<uint64_t>(c.hold_timeout_ms) / 2;
  if (budget <= half_hold) return "";
  return "the state (" + std::to_string(bytes) + " bytes) may take up to " + std::to_string(budget) +
         " ms at TRAINMOVER_TRANSFER_MIN_MBPS=" + std::to_string(c.transfer_min_mbps) +
         " (plus TRAINMOVER_TRANSFER_FLOOR_MS), more than half of TRAINMOVER_HOLD_TIMEOUT_MS (" +
         std::to_string(half_hold) + " ms): raise the hold timeout, or the minimum bandwidth where the network "
         "guarantees it";
}

}  // namespace trainmover::migration
