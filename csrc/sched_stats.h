// Counters and histograms of one scheduler, read by engine.stats() and
// exported to Prometheus by serve/. Plain data: the scheduler updates them
// under its own lock and hands out copies.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace textfleet {

// Cumulative-friendly histogram: counts[i] observations <= bounds[i], the
// last count is the overflow (+Inf) bucket, as Prometheus wants them.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  double sum = 0;
  uint64_t count = 0;

  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1) {}
  void observe(double v) {
    const size_t i = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
    ++counts[i];
    sum += v;
    ++count;
  }
};

inline std::vector<double> seconds_buckets() {
  return {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30};
}
inline std::vector<double> size_buckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
}

struct SchedulerStats {
  // Admission.
  uint64_t requests = 0;          // admitted
  uint64_t sequences = 0;         // texts (or pairs) admitted
  uint64_t rejected = 0;          // refused: queue full
  uint64_t rejected_too_large = 0;  // refused: larger than the whole queue bound
  // Removal before compute.
  uint64_t cancelled_requests = 0;  // cancel() on a request with work left
  uint64_t expired_requests = 0;    // deadline passed with work left
  uint64_t dropped_sequences = 0;   // never computed because of the two above
  uint64_t tokenize_errors = 0;
  double tokenize_s = 0;  // thread-seconds spent tokenizing
  // Batches handed to the executor.
  uint64_t batches = 0;
  uint64_t batch_sequences = 0;
  uint64_t real_tokens = 0;
  uint64_t padded_tokens = 0;
  uint64_t prefetched_batches = 0;  // collated ahead while the executor computed
  // Reported back by the executor.
  uint64_t failed_batches = 0;
  // Outcomes as callers saw them (reported by engine/scheduler.py).
  uint64_t ok_requests = 0;
  uint64_t failed_requests = 0;
  uint64_t timeouts = 0;
  uint64_t cancellations = 0;
  // Gauges, filled in by stats().
  uint64_t queue_sequences = 0;
  uint64_t queue_tokens = 0;
  uint64_t reserved_tokens = 0;  // admitted, still being tokenized
  uint64_t prefetched_tokens = 0;  // in the batch collated ahead
  uint64_t live_requests = 0;
  uint64_t tokenize_tasks = 0;

  Histogram batch_size{size_buckets()};
  Histogram queue_wait_s{seconds_buckets()};  // submit -> handed to the executor, per sequence
  Histogram compute_s{seconds_buckets()};     // per batch
};

}  // namespace textfleet
