// SPDX-License-Identifier: Apache-2.0
// transfer_peer: one side of a state transfer, for tests that put the two sides in different places
// (network namespaces). The descriptor travels through a file.
//   transfer_peer serve <descriptor-file> <bytes> <regions>   expose, seal, publish, wait for the client
//   transfer_peer fetch <descriptor-file> <bytes> <regions>   fetch over UCX (path ucx), compare bit for bit
//   transfer_peer fetch-cut <descriptor-file> <bytes> <regions>   once <descriptor-file>.cut exists (the leaver's
//       host cut off), fetch with a 2 s timeout: it must fail, and the client's teardown must neither hang nor
//       abort the process (requests to the cut-off host may still be in flight inside UCX)
// Exit 0 on success. UCX_TLS / UCX_NET_DEVICES come from the environment.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <thread>

#include "test_pattern.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s serve|fetch <descriptor-file> <bytes> <regions>\n", argv[0]);
    return 2;
  }
  std::string mode = argv[1], file = argv[2];
  size_t bytes = std::strtoull(argv[3], nullptr, 10);
  int n = std::atoi(argv[4]);
  std::vector<std::vector<unsigned char>> bufs(n);
  std::vector<tt::Region> regions;
  for (int i = 0; i < n; ++i) {
    std::string name = "region." + std::to_string(i);
    bufs[i].resize(bytes + i);  // different sizes
    if (mode == "serve") transfer_test::Fill(&bufs[i], transfer_test::SeedOf(name));
    regions.push_back({name, bufs[i].data(), bufs[i].size()});
  }
  if (mode == "serve") {
    std::unique_ptr<tt::StateServer> server;
    tt::Status s = tt::StateServer::Create({}, &server);
    if (s.ok()) s = server->Expose(regions);
    if (s.ok()) s = server->Seal();
    if (!s.ok()) {
      fprintf(stderr, "serve: %s\n", s.ToString().c_str());
      return 1;
    }
    {
      std::ofstream out(file + ".tmp", std::ios::binary);
      out.write(reinterpret_cast<const char*>(server->Descriptor().data()), server->Descriptor().size());
    }
    rename((file + ".tmp").c_str(), file.c_str());
    // Served until the client's side of the test says it is done (the joiner never writes into the leaver).
    for (int i = 0; i < 300 && !std::ifstream(file + ".done"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const bool done = static_cast<bool>(std::ifstream(file + ".done"));
    printf("serve: client %s\n", done ? "done" : "never done");
    return done ? 0 : 1;
  }
  std::vector<uint8_t> desc;
  for (int i = 0; i < 200 && desc.empty(); ++i) {
    std::ifstream in(file, std::ios::binary);
    if (in) desc.assign(std::istreambuf_iterator<char>(in), {});
    if (desc.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const bool cut = mode == "fetch-cut";
  for (int i = 0; cut && i < 200 && !std::ifstream(file + ".cut"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::unique_ptr<tt::StateClient> client;
  tt::Status s = tt::StateClient::Create({}, &client);
  tt::FetchOptions o;
  o.path = tt::FetchPath::kUcx;
  o.chunk_bytes = 256 << 10;
  o.timeout_ms = cut ? 2000 : 30000;
  tt::FetchResult r;
  const auto t0 = std::chrono::steady_clock::now();
  if (s.ok()) s = client->Fetch(desc, regions, o, &r);
  if (cut) {  // the timeout, then at most the teardown's 2 s bound
    const auto t1 = std::chrono::steady_clock::now();
    client.reset();
    const auto t2 = std::chrono::steady_clock::now();
    const double fetch_s = std::chrono::duration<double>(t1 - t0).count();
    const double teardown_s = std::chrono::duration<double>(t2 - t1).count();
    printf("fetch-cut: %s in %.3f s; the client's teardown took %.3f s\n", s.ToString().c_str(), fetch_s, teardown_s);
    const bool expected = s.code() == tt::Code::kTimeout || s.code() == tt::Code::kPeerFailure;
    return expected && fetch_s < 10 && teardown_s < 10 ? 0 : 1;
  }
  size_t wrong = 0;
  for (int i = 0; i < n; ++i) {
    std::vector<unsigned char> expect(bufs[i].size());
    transfer_test::Fill(&expect, transfer_test::SeedOf(regions[i].name));
    wrong += expect != bufs[i];
  }
  std::ofstream(file + ".done").put('1');
  printf("fetch: %s, %llu bytes in %.3f s (%.3f GB/s), verified %d, wrong regions %zu\n", s.ToString().c_str(),
         static_cast<unsigned long long>(r.bytes), r.seconds, r.gbps, r.verified, wrong);
  return s.ok() && r.verified && wrong == 0 ? 0 : 1;
}
