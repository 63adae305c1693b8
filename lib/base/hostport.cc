// SPDX-License-Identifier: Apache-2.0
#include "base/hostport.h"

namespace trainmover::base {

Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    return Status::Error("expected host:port, got '" + s + "'");
  }
  std::string h = s.substr(0, colon);
  if (h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') return Status::Error("unbalanced brackets in '" + s + "'");
    h = h.substr(1, h.size() - 2);
  }
  uint32_t p = 0;
  for (size_t i = colon + 1; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9' || p > 65535) return Status::Error("bad port in '" + s + "'");
    p = p * 10 + static_cast<uint32_t>(s[i] - '0');
  }
  if (p > 65535) return Status::Error("port out of range (0..65535) in '" + s + "'");
  *host = h;
  *port = static_cast<uint16_t>(p);
  return Status::Ok();
}

}  // namespace trainmover::base
