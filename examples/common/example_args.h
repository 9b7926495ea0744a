// The command-line walk the example programs share: "--name value" or
// "--name=value" options, -h/--help, and --log-level's value. Each program
// keeps its own options and usage text; the messages name the program.
#ifndef VIRTIOFS_EXAMPLES_COMMON_EXAMPLE_ARGS_H_
#define VIRTIOFS_EXAMPLES_COMMON_EXAMPLE_ARGS_H_

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string_view>

#include "virtiofs/log.h"

namespace examples {

// What a program's handler says about one option.
enum class OptionResult {
  kOk,
  kUnknown,  // Not one of the program's options.
  kBad,      // A bad value (the handler printed why).
};

// Hands each option of argv to `handle`. -h and --help print `usage` and
// exit 0. False (after a message to stderr) when an option has no value, is
// unknown, or its handler answers kBad.
inline bool ParseOptions(
    int argc, char** argv, const char* program, const char* usage,
    const std::function<OptionResult(std::string_view name, std::string_view value)>& handle) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    std::string_view name = arg, value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "%s: %s needs a value\n%s", program, argv[i], usage);
      return false;
    }
    switch (handle(name, value)) {
      case OptionResult::kOk:
        break;
      case OptionResult::kUnknown:
        std::fprintf(stderr, "%s: unknown option %.*s\n%s", program, static_cast<int>(name.size()),
                     name.data(), usage);
        return false;
      case OptionResult::kBad:
        return false;
    }
  }
  return true;
}

// The value of --log-level; nullopt after a message to stderr.
inline std::optional<virtiofs::LogLevel> ParseLogLevelOption(const char* program,
                                                             std::string_view value) {
  auto level = virtiofs::ParseLogLevel(value);
  if (!level) {
    std::fprintf(stderr, "%s: unknown log level '%.*s'\n", program, static_cast<int>(value.size()),
                 value.data());
  }
  return level;
}

}  // namespace examples

#endif  // VIRTIOFS_EXAMPLES_COMMON_EXAMPLE_ARGS_H_
