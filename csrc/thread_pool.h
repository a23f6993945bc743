// A fixed set of worker threads for batch tokenization. The calling thread
// works too, so a pool of N threads starts N - 1 workers and a pool of 1
// runs everything inline. Workers start on first use; in a process forked
// after that (the workers did not follow), run() works inline.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace textfleet {

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads) : threads_(threads < 1 ? 1 : threads) {}
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t threads() const { return threads_; }

  // Calls task(i) for every i in [0, n_tasks), spread over the threads,
  // and returns when all are done; the first exception thrown is rethrown.
  // Concurrent calls are served one after the other.
  void run(size_t n_tasks, const std::function<void(size_t)>& task);

 private:
  bool start_workers();  // false when the workers cannot be used here
  void worker_loop();
  void drain();

  const size_t threads_;
  pid_t owner_ = 0;  // process that started the workers
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one run() at a time owns the workers
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t n_tasks_ = 0;
  std::atomic<size_t> next_{0};
  size_t active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace textfleet
