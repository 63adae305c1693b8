// SPDX-License-Identifier: Apache-2.0
#include "ucx_util.h"

#include <cstdlib>
#include <filesystem>

#include "base/host.h"
#include "ucx_tcp_connect.h"

namespace trainmover::transfer::detail {

Status UcxError(const std::string& what, ucs_status_t st) {
  return Status(Code::kUcx, what + ": " + ucs_status_string(st));
}

namespace {

bool HasRdmaDevices() {
  std::error_code ec;
  return std::filesystem::is_directory("/sys/class/infiniband", ec) &&
         !std::filesystem::is_empty("/sys/class/infiniband", ec);
}

}  // namespace

Status MakeContext(const std::string& transports, bool wakeup, ucp_context_h* context) {
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return UcxError("ucp_config_read", st);
  if (!transports.empty()) {
    st = ucp_config_modify(config, "TLS", transports.c_str());
    if (st != UCS_OK) {
      ucp_config_release(config);
      return Status(Code::kInvalidArgument, "bad UCX transports '" + transports + "': " + ucs_status_string(st));
    }
  }
  if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) (void)ucp_config_modify(config, "KEEPALIVE_INTERVAL", "1s");
  (void)common::PreferNonBlockingTcpConnect(config);  // a cut-off peer costs a deadline, not 2 minutes
  // Between hosts over TCP, the network the job runs on: the interface of the address the coordinator knows
  // this host by (base/host.h). UCX_NET_DEVICES, when set, is the user's choice and wins; loopback restricts
  // nothing; where there are RDMA devices, UCX chooses among them itself (a netdev name would exclude them).
  if (std::getenv("UCX_NET_DEVICES") == nullptr && !HasRdmaDevices()) {
    const std::string dev = base::InterfaceOf(base::HostAddress());
    if (!dev.empty()) (void)ucp_config_modify(config, "NET_DEVICES", dev.c_str());
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | (wakeup ? UCP_FEATURE_WAKEUP : 0);
  st = ucp_init(&params, config, context);
  ucp_config_release(config);
  if (st != UCS_OK) {
    *context = nullptr;
    return UcxError("ucp_init", st);
  }
  return Status::Ok();
}

Status MakeWorker(ucp_context_h context, ucp_worker_h* worker) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // one thread at a time, not always the same one
  ucs_status_t st = ucp_worker_create(context, &params, worker);
  if (st != UCS_OK) {
    *worker = nullptr;
    return UcxError("ucp_worker_create", st);
  }
  return Status::Ok();
}

Status MakeContextAndWorker(const std::string& transports, bool wakeup, ucp_context_h* context, ucp_worker_h* worker) {
  Status s = MakeContext(transports, wakeup, context);
  if (!s.ok()) return s;
  s = MakeWorker(*context, worker);
  if (!s.ok()) {
    ucp_cleanup(*context);
    *context = nullptr;
  }
  return s;
}

ucs_memory_type_t UcsType(MemoryType t) { return t == MemoryType::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST; }

Status MapRegion(ucp_context_h context, void* ptr, size_t size, MemoryType type, Access access, ucp_mem_h* memh,
                 std::vector<uint8_t>* rkey, MemoryType* found) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT;
  params.address = ptr;
  params.length = size;
  params.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE |
                (access == Access::kRemoteRead ? UCP_MEM_MAP_PROT_REMOTE_READ : 0);
  if (type != MemoryType::kAuto) {
    params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.memory_type = UcsType(type);
  }
  ucs_status_t st = ucp_mem_map(context, &params, memh);
  if (st != UCS_OK) return UcxError("ucp_mem_map", st);
  if (found != nullptr) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_MEM_TYPE;
    *found = type;
    if (ucp_mem_query(*memh, &attr) == UCS_OK) {
      *found = attr.mem_type == UCS_MEMORY_TYPE_CUDA || attr.mem_type == UCS_MEMORY_TYPE_CUDA_MANAGED
                   ? MemoryType::kCuda
                   : MemoryType::kHost;
    }
    if (*found == MemoryType::kAuto) *found = MemoryType::kHost;
  }
  if (rkey == nullptr) return Status::Ok();
  void* buf = nullptr;
  size_t len = 0;
  st = ucp_rkey_pack(context, *memh, &buf, &len);
  if (st != UCS_OK) {
    ucp_mem_unmap(context, *memh);
    *memh = nullptr;
    return UcxError("ucp_rkey_pack", st);
  }
  rkey->assign(static_cast<uint8_t*>(buf), static_cast<uint8_t*>(buf) + len);
  ucp_rkey_buffer_release(buf);
  return Status::Ok();
}

}  // namespace trainmover::transfer::detail
