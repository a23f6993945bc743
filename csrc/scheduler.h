// The scheduler: requests in, padded batches out, with no Python inside.
//
// submit() admits a request (or fails at once when the queue is full),
// tokenizes it (small requests on the calling thread, larger ones in chunks
// on worker threads) and queues its sequences. Executor threads (one, or a
// few computing batches side by side) call next_batch() in a loop, each
// getting a different batch: it blocks until the batch former (batch_former.h)
// says a batch is ready, and gets the padded int64 arrays plus, for every
// row, the request id and text index it belongs to. While the executor
// computes, new sequences queue up (the next batch grows), and a batch that
// is already full is collated ahead by a worker (at most one prefetched; it
// goes back to the queue when a request of a more urgent class arrives).
// cancel() and per-request deadlines remove sequences before they are
// computed. The Python side (engine/scheduler.py) owns the futures and
// reassembles rows per request.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "batch_former.h"
#include "encoders.h"
#include "sched_stats.h"

namespace textfleet {

// submit() when the queue bound is reached (-> engine.errors.Overloaded).
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// submit() of a request larger than the whole queue bound (-> TooLarge).
class RequestTooLarge : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SchedulerOptions {
  BatchKnobs knobs;
  uint64_t max_queue_tokens = 1'000'000;
  // Per priority class (index: the class), the queued tokens past which its
  // requests are refused, each in [1, max_queue_tokens]; empty: max_queue_tokens
  // for all. Lower bounds for the less urgent classes keep room in the queue for
  // urgent requests while others flood it.
  std::vector<uint64_t> class_queue_tokens;
  uint32_t tokenizer_threads = 1;
  // Requests with at most this many bytes of text are tokenized by the
  // submitting thread: a thread hop costs more than tokenizing them.
  size_t inline_max_bytes = 4096;
  // Texts per tokenization task: big requests are tokenized in parallel and
  // their first sequences can be batched before the last are tokenized.
  uint32_t chunk_texts = 64;
};

// A collated batch. data holds input_ids, attention_mask and token_type_ids
// back to back, each [rows, width] int64, in one malloc'd block that the
// binding hands to numpy without copying.
struct ReadyBatch {
  struct FreeDeleter {
    void operator()(int64_t* p) const;
  };
  uint64_t id = 0;
  uint32_t rows = 0;
  uint32_t width = 0;
  uint64_t real_tokens = 0;
  std::unique_ptr<int64_t[], FreeDeleter> data;
  std::vector<uint64_t> request_ids;  // per row
  std::vector<uint32_t> indices;      // per row: the text's index in its request
  double max_queue_wait_s = 0;        // of the oldest row
  // Requests that failed outside any batch (rows == 0 when only these).
  std::vector<std::pair<uint64_t, std::string>> failures;
};

class Scheduler {
 public:
  Scheduler(std::shared_ptr<const SequenceEncoder> encoder, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues request `id` (chosen by the caller, unique among live requests).
  // pairs is empty or as long as texts. timeout_s <= 0: no deadline. priority:
  // its class (batch_former.h; lower is more urgent). Throws QueueFull,
  // RequestTooLarge, or std::invalid_argument.
  void submit(uint64_t id, std::vector<std::string> texts, std::vector<std::string> pairs,
              double timeout_s, int32_t priority = kDefaultPriority);
  // The same for sequences tokenized elsewhere (the Hugging Face fallback).
  void submit_tokens(uint64_t id, std::vector<TokenSeq> seqs, double timeout_s,
                     int32_t priority = kDefaultPriority);
  // Removes the request's sequences that are not computed yet. False if it
  // had none left (finished, all dispatched, or unknown).
  bool cancel(uint64_t id, bool timed_out = false);
  // Blocks until a batch is ready (or requests failed outside a batch, see
  // ReadyBatch::failures); nullptr once shut down (after draining the queue
  // when shutdown(drain=true)). Safe to call from several executor threads.
  std::unique_ptr<ReadyBatch> next_batch();
  // Stops accepting requests and wakes every waiter.
  void shutdown(bool drain);

  // Executor reports: one batch of padded_tokens (rows x width) computed (or
  // failed), and caller outcomes.
  void record_compute(double seconds, bool failed, uint64_t padded_tokens = 0);
  void record_outcomes(uint64_t ok, uint64_t failed, uint64_t timeouts, uint64_t cancellations);
  SchedulerStats stats() const;
  const BatchKnobs& knobs() const { return opt_.knobs; }
  // Per priority class, most urgent first: the queued tokens past which its
  // requests are refused.
  std::vector<uint64_t> class_queue_tokens() const;

 private:
  struct Input {
    std::vector<std::string> texts;
    std::vector<std::string> pairs;  // empty, or one per text
  };
  struct Request {
    uint64_t order = 0;
    int64_t arrival_ns = 0;
    int64_t deadline_ns = kNever;
    int32_t priority = kDefaultPriority;
    std::vector<TokenSeq> seqs;  // by index; moved out when taken into a batch
    uint32_t undispatched = 0;   // not yet handed to the executor
    uint32_t tasks_left = 0;     // tokenization tasks not finished
    bool cancelled = false;
  };
  struct Task {
    bool prefetch = false;  // else: tokenize texts [begin, end) of request id
    uint64_t id = 0;
    std::shared_ptr<const Input> input;
    uint32_t begin = 0;
    uint32_t end = 0;
    uint64_t reserved = 0;  // admission estimate for these texts
  };
  // Rows taken out of the queue, in batch order, with their tokens.
  struct Taken {
    std::vector<uint64_t> ids;
    std::vector<uint32_t> indices;
    std::vector<int64_t> arrival_ns;
    std::vector<TokenSeq> seqs;
    uint32_t width = 0;
    uint64_t real_tokens = 0;
  };
  struct Deadline {
    int64_t at_ns;
    uint64_t id;
    uint64_t order;  // tells a request apart from a later one with the same id
    bool operator>(const Deadline& o) const { return at_ns > o.at_ns; }
  };

  void admit_locked(uint64_t id, uint64_t reserve, size_t n_seqs, double timeout_s,
                    int32_t priority, int64_t now);
  uint64_t queue_limit(int32_t priority) const;
  void enqueue_locked(uint64_t id, uint32_t first, std::vector<TokenSeq>& seqs);
  int64_t overtake_ns_locked(uint64_t tokens) const;
  void worker_loop();
  void tokenize_task(const Task& task);
  void prefetch();
  void post_prefetch_locked(int64_t now_ns);
  bool cancel_locked(uint64_t id, bool timed_out);
  void expire_locked(int64_t now_ns);
  Taken take_locked(const BatchPlan& plan);
  bool drop_cancelled_rows_locked(Taken& rows);
  void requeue_overtaken_prefetch_locked();
  void dispatched_locked(const Taken& rows, int64_t now_ns);
  void maybe_erase_locked(uint64_t id);
  bool drained_locked() const;
  std::unique_ptr<ReadyBatch> collate(const Taken& rows) const;

  const std::shared_ptr<const SequenceEncoder> encoder_;
  const SchedulerOptions opt_;

  mutable std::mutex mu_;
  std::condition_variable exec_cv_;  // the executor waits here
  std::condition_variable work_cv_;  // workers wait here
  std::deque<Task> tasks_;
  BatchQueue queue_;
  std::unordered_map<uint64_t, Request> requests_;
  std::unordered_map<uint64_t, uint64_t> id_of_order_;
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<>> deadlines_;
  // Requests that failed outside a batch (tokenizer error), reported with
  // the next next_batch().
  std::vector<std::pair<uint64_t, std::string>> failures_;
  uint64_t next_order_ = 0;
  uint64_t next_batch_id_ = 0;
  uint64_t reserved_tokens_ = 0;  // admission estimates of untokenized texts
  uint64_t prefetched_tokens_ = 0;  // in the prefetched batch
  // The prefetched batch (at most one): kept as rows, with their tokens, so
  // that rows cancelled meanwhile are dropped before it is computed.
  std::unique_ptr<Taken> prefetched_;
  std::unique_ptr<ReadyBatch> prefetched_batch_;
  bool prefetching_ = false;
  bool prefetch_posted_ = false;
  int executors_waiting_ = 0;  // executor threads blocked in next_batch()
  bool stopping_ = false;
  bool draining_ = false;
  SchedulerStats stats_;
  // Measured compute per padded token (a moving average over the batches
  // computed; 0 until the first): sizes the overtaking allowances.
  double ns_per_token_ = 0;
  std::vector<std::thread> workers_;
};

int64_t steady_now_ns();

}  // namespace textfleet
