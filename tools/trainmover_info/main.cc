// SPDX-License-Identifier: Apache-2.0
// trainmover-info: prints every TRAINMOVER_* parameter of libtrainmover (lib/base/params.h), its value in this
// environment (a secret's as "(set, hidden)"), its default, accepted values and description, like ucc_info. Exits 1 naming the variable
// when a value is invalid (the shim would fail its first NCCL call with the same message).
// --markdown prints the table of docs/configuration.md instead (tests/lib/test_config_doc.sh compares them).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/config.h"
#include "base/spawn_process.h"  // IsSecretEnvName
#include "tm_build_config.h"  // TM_VERSION

using trainmover::base::Status;
using trainmover::shim::Config;
using trainmover::shim::ConfigParams;
using trainmover::shim::ConfigParse;
using trainmover::shim::ParamSpec;

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--markdown") == 0) {
      std::fputs(trainmover::shim::ConfigMarkdownTable().c_str(), stdout);
      return 0;
    }
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      std::printf(
          "usage: trainmover-info [--markdown]\n  Prints the TRAINMOVER_* parameters, their values and documentation;\n"
          "  exits 1 when a value in the environment is invalid.\n"
          "  --markdown: the parameter table of docs/configuration.md.\n");
      return 0;
    }
    std::fprintf(stderr, "trainmover-info: unknown argument '%s' (--help)\n", argv[i]);
    return 2;
  }
  std::printf("# libtrainmover %s parameters (environment variables)\n#\n", TM_VERSION);
  for (const ParamSpec& p : ConfigParams()) {
    const char* v = getenv(p.name);
    std::string value = (v && *v) ? std::string(v) : std::string("(unset)");
    if (v && *v && trainmover::base::IsSecretEnvName(p.name)) value = "(set, hidden)";  // the token never shows
    std::printf("%s = %s\n", p.name, value.c_str());
    std::printf("#   default: %s\n", p.default_value[0] ? p.default_value : "(none)");
    std::printf("#   accepted: %s\n", p.accepted);
    std::printf("#   %s\n#\n", p.doc);
  }
  Config c;
  if (Status st = ConfigParse([](const char* n) { return static_cast<const char*>(getenv(n)); }, &c); !st.ok()) {
    std::fprintf(stderr, "trainmover-info: invalid configuration: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("# configuration valid\n");
  return 0;
}
