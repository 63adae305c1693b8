// SPDX-License-Identifier: Apache-2.0
// json_out.h: writing JSON text (the coordinator's status and timeline documents).
#ifndef TRAINMOVER_LIB_CONTROL_JSON_OUT_H_
#define TRAINMOVER_LIB_CONTROL_JSON_OUT_H_

#include <cstdio>
#include <string>

namespace trainmover::control {

// `s` as the inside of a JSON string (quotes, backslashes and control characters escaped).
inline std::string JsonEscape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        o += "\\\"";
        break;
      case '\\':
        o += "\\\\";
        break;
      case '\n':
        o += "\\n";
        break;
      case '\r':
        o += "\\r";
        break;
      case '\t':
        o += "\\t";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          snprintf(b, sizeof(b), "\\u%04x", c);
          o += b;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o;
}

// `s` as a JSON string, quotes included.
inline std::string JsonQuote(const std::string& s) { return "\"" + JsonEscape(s) + "\""; }

// A number with `decimals` digits after the point; null when it is not finite.
inline std::string JsonNumber(double v, int decimals) {
  if (!(v == v) || v > 1e300 || v < -1e300) return "null";
  char b[64];
  snprintf(b, sizeof(b), "%.*f", decimals, v);
  return b;
}

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_JSON_OUT_H_
