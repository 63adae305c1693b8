// SPDX-License-Identifier: Apache-2.0
// json.h: a minimal JSON reader for the tools (the coordinator's status and timeline documents: tmctl, tmrun). Parses
// objects, arrays, strings (with \uXXXX below 0x80 only), numbers, true/false/null; depth-bounded.
#ifndef TRAINMOVER_TOOLS_COMMON_JSON_H_
#define TRAINMOVER_TOOLS_COMMON_JSON_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tm_tools {

struct Json {
  enum Type { kNull, kBool, kNum, kStr, kArr, kObj } type = kNull;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> arr;
  std::map<std::string, Json> obj;

  const Json& operator[](const std::string& k) const {
    static const Json kNullJson;
    auto it = obj.find(k);
    return it == obj.end() ? kNullJson : it->second;
  }
  double Num(double def = 0) const { return type == kNum ? num : def; }
  long long Int(long long def = 0) const { return type == kNum ? static_cast<long long>(num) : def; }
  std::string Str(const std::string& def = "") const { return type == kStr ? str : def; }
  bool Bool() const { return type == kBool && b; }
};

// Parses `text`; false on a syntax error.
bool ParseJson(const std::string& text, Json* out);

}  // namespace tm_tools

#endif  // TRAINMOVER_TOOLS_COMMON_JSON_H_
