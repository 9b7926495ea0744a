// A program under test (the daemon, an example server) run as a child
// process: its stdout and stderr go to a log file, it is killed if the test
// process dies (PR_SET_PDEATHSIG), and it is always reaped (SIGKILL on
// destruction if it has not exited by then).
#ifndef VIRTIOFS_TESTS_SUPPORT_DAEMON_PROCESS_H_
#define VIRTIOFS_TESTS_SUPPORT_DAEMON_PROCESS_H_

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace virtiofs::testing {

class DaemonProcess {
 public:
  struct Options {
    // Appends to the log instead of truncating it (several runs, one log).
    bool append_log = false;
    // An fd the child keeps across exec (its close-on-exec flag cleared).
    int inherit_fd = -1;
    // Non-zero: the child drops its supplementary groups and becomes this
    // user and group before exec (exit status 126 if it cannot).
    uid_t run_as = 0;
  };

  // Starts `args` (args[0] is the program's path). Aborts the test
  // (REQUIRE) when the log cannot be opened or fork fails; a failed exec
  // shows as exit status 127.
  DaemonProcess(std::vector<std::string> args, const std::string& log, Options options) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int out =
        open(log.c_str(),
             O_WRONLY | O_CREAT | (options.append_log ? O_APPEND : O_TRUNC) | O_CLOEXEC, 0600);
    REQUIRE(out >= 0);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(out, 1);
      dup2(out, 2);
      if (options.inherit_fd >= 0) fcntl(options.inherit_fd, F_SETFD, 0);
      if (const uid_t user = options.run_as; user != 0) {
        if (setgroups(0, nullptr) != 0 || setresgid(user, user, user) != 0 ||
            setresuid(user, user, user) != 0) {
          _exit(126);
        }
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out);
    REQUIRE(pid_ > 0);
  }
  DaemonProcess(std::vector<std::string> args, const std::string& log)
      : DaemonProcess(std::move(args), log, Options{}) {}
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  ~DaemonProcess() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      Wait(5000);
    }
  }

  // The wait status once the child has exited, polling for up to
  // `timeout_ms` (0: one look); nullopt while it runs.
  std::optional<int> Wait(int timeout_ms) {
    for (int waited = 0; !status_ && waited <= timeout_ms; waited += 10) {
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = st;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_DAEMON_PROCESS_H_
