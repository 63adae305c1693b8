// SPDX-License-Identifier: Apache-2.0
#include "json.h"

#include <cstdlib>

namespace tm_tools {

namespace {

struct Parser {
  const std::string& s;
  size_t i = 0;
  int depth = 0;

  void Ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool Lit(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s.compare(i, n, w) != 0) return false;
    i += n;
    return true;
  }
  bool String(std::string* out) {
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c == '\\') {
        if (i >= s.size()) return false;
        char e = s[i++];
        switch (e) {
          case 'n':
            *out += '\n';
            break;
          case 't':
            *out += '\t';
            break;
          case 'r':
            *out += '\r';
            break;
          case 'b':
            *out += '\b';
            break;
          case 'f':
            *out += '\f';
            break;
          case 'u': {
            if (i + 4 > s.size()) return false;
            long v = std::strtol(s.substr(i, 4).c_str(), nullptr, 16);
            *out += v < 0x80 ? static_cast<char>(v) : '?';
            i += 4;
            break;
          }
          default:
            *out += e;
        }
      } else {
        *out += c;
      }
    }
    if (i >= s.size()) return false;
    ++i;
    return true;
  }
  bool Value(Json* v) {
    if (++depth > 64) return false;
    Ws();
    if (i >= s.size()) return false;
    bool ok = true;
    char c = s[i];
    if (c == '{') {
      v->type = Json::kObj;
      ++i;
      Ws();
      if (i < s.size() && s[i] == '}') {
        ++i;
      } else {
        for (;;) {
          Ws();
          std::string k;
          if (!String(&k)) return false;
          Ws();
          if (i >= s.size() || s[i++] != ':') return false;
          if (!Value(&v->obj[k])) return false;
          Ws();
          if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
          }
          if (i < s.size() && s[i] == '}') {
            ++i;
            break;
          }
          return false;
        }
      }
    } else if (c == '[') {
      v->type = Json::kArr;
      ++i;
      Ws();
      if (i < s.size() && s[i] == ']') {
        ++i;
      } else {
        for (;;) {
          v->arr.emplace_back();
          if (!Value(&v->arr.back())) return false;
          Ws();
          if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
          }
          if (i < s.size() && s[i] == ']') {
            ++i;
            break;
          }
          return false;
        }
      }
    } else if (c == '"') {
      v->type = Json::kStr;
      ok = String(&v->str);
    } else if (Lit("true")) {
      v->type = Json::kBool;
      v->b = true;
    } else if (Lit("false")) {
      v->type = Json::kBool;
    } else if (Lit("null")) {
      v->type = Json::kNull;
    } else {
      char* end = nullptr;
      v->type = Json::kNum;
      v->num = std::strtod(s.c_str() + i, &end);
      if (end == s.c_str() + i) return false;
      i = static_cast<size_t>(end - s.c_str());
    }
    --depth;
    return ok;
  }
};

}  // namespace

bool ParseJson(const std::string& text, Json* out) {
  Parser p{text};
  if (!p.Value(out)) return false;
  p.Ws();
  return p.i == text.size();
}

}  // namespace tm_tools
