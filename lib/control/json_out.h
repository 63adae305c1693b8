// SPDX-License-Identifier: Apache-2.0
// json_out.h: writing text for other programs to parse: JSON (the coordinator's status and timeline documents)
// and Prometheus label values (its /metrics). Strings that came from agents (hosts, roles, phase and region
// names, reasons) go through these escapers, so no agent can break or inject into either document; bytes that
// are not valid UTF-8 become U+FFFD, as both formats require UTF-8.
#ifndef TRAINMOVER_LIB_CONTROL_JSON_OUT_H_
#define TRAINMOVER_LIB_CONTROL_JSON_OUT_H_

#include <cstdio>
#include <string>

namespace trainmover::control {

// The length of the valid UTF-8 sequence that starts at s[i] (1 to 4), or 0 when it is not one (a stray
// continuation byte, a truncated or overlong sequence, a surrogate, above U+10FFFF).
inline size_t Utf8SequenceAt(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
  }
  if ((c == 0xe0 && b(i + 1) < 0xa0) || (c == 0xed && b(i + 1) > 0x9f) || (c == 0xf0 && b(i + 1) < 0x90) ||
      (c == 0xf4 && b(i + 1) > 0x8f)) {
    return 0;  // overlong, a surrogate, or above U+10FFFF
  }
  return n;
}

// `s` as the inside of a JSON string (quotes, backslashes and control characters escaped).
inline std::string JsonEscape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = Utf8SequenceAt(s, i);
    if (n == 0) {
      o += "\\ufffd";
      ++i;
      continue;
    }
    if (n > 1) {
      o.append(s, i, n);
      i += n;
      continue;
    }
    ++i;
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
        if (c < 0x20 || c == 0x7f) {
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

// `s` as a Prometheus label value, quotes included (text format 0.0.4: backslash, double quote and line feed
// escaped; other control characters and invalid UTF-8 replaced, so a line never breaks).
inline std::string PromLabel(const std::string& s) {
  std::string o = "\"";
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = Utf8SequenceAt(s, i);
    if (n > 1) {
      o.append(s, i, n);
    } else if (n == 0 || c < 0x20 || c == 0x7f) {
      o += c == '\n' ? "\\n" : "\xef\xbf\xbd";  // U+FFFD
    } else {
      if (c == '"' || c == '\\') o += '\\';
      o += static_cast<char>(c);
    }
    i += n ? n : 1;
  }
  return o + "\"";
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
