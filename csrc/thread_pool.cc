#include "thread_pool.h"

#include <unistd.h>

namespace textfleet {

ThreadPool::~ThreadPool() {
  if (workers_.empty()) return;
  if (owner_ != getpid()) {
    // Forked child: the workers exist only in the parent; joining would hang.
    for (auto& w : workers_) w.detach();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

bool ThreadPool::start_workers() {
  if (!workers_.empty()) return owner_ == getpid();
  owner_ = getpid();
  for (size_t i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  return true;
}

void ThreadPool::drain() {
  for (size_t i = next_.fetch_add(1); i < n_tasks_; i = next_.fetch_add(1)) {
    try {
      (*task_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::run(size_t n_tasks, const std::function<void(size_t)>& task) {
  if (n_tasks == 0) return;
  std::unique_lock<std::mutex> run_lock(run_mu_);
  if (threads_ == 1 || n_tasks == 1 || !start_workers()) {
    run_lock.unlock();
    for (size_t i = 0; i < n_tasks; ++i) task(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    task_ = &task;
    n_tasks_ = n_tasks;
    next_.store(0);
    active_ = workers_.size();
    error_ = nullptr;
    ++generation_;
  }
  wake_.notify_all();
  drain();
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return active_ == 0; });
    task_ = nullptr;
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    drain();
    std::lock_guard<std::mutex> lock(mu_);
    if (--active_ == 0) done_.notify_all();
  }
}

}  // namespace textfleet
