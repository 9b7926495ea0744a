// Logging on fmt, with levels.
//
//   VIRTIOFS_LOG(kWarning, "queue {}: dropped chain: {}", index, status);
//
// The arguments are formatted only when the level is enabled. The default sink
// writes one line per message to stderr; an embedder (or the daemon, for
// syslog) installs its own sink with SetLogSink.
#ifndef VIRTIOFS_LOG_H_
#define VIRTIOFS_LOG_H_

#include <fmt/format.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include <atomic>
#include <functional>
#include <optional>
#include <string_view>
#include <utility>

namespace virtiofs {

enum class LogLevel : int { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

// "error", "warn", "info", "debug", "trace" (also "warning").
std::optional<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

// Messages above `level` are dropped. Thread-safe.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

// The sink receives every enabled message; it must be thread-safe. An empty
// function restores the stderr sink.
using LogSink = std::function<void(LogLevel, std::string_view message)>;
void SetLogSink(LogSink sink);

namespace log_internal {
extern std::atomic<int> g_level;
void Emit(LogLevel level, std::string_view message);
}  // namespace log_internal

inline bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) <= log_internal::g_level.load(std::memory_order_relaxed);
}

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (!LogEnabled(level)) return;
  log_internal::Emit(level, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace virtiofs

// Log arguments may be absl::Status and absl::string_view.
template <>
struct fmt::formatter<absl::Status> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const absl::Status& s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(s.ToString(), ctx);
  }
};
#if !defined(ABSL_USES_STD_STRING_VIEW)
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(s.data(), s.size()), ctx);
  }
};
#endif

#define VIRTIOFS_LOG(level, ...)                                        \
  do {                                                                  \
    if (::virtiofs::LogEnabled(::virtiofs::LogLevel::level))            \
      ::virtiofs::Log(::virtiofs::LogLevel::level, __VA_ARGS__);        \
  } while (0)

#endif  // VIRTIOFS_LOG_H_
