#include "scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>

#include "collate.h"

namespace textfleet {

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {

std::chrono::steady_clock::time_point to_time_point(int64_t ns) {
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(ns)));
}

int64_t deadline_after(int64_t now_ns, double timeout_s) {
  if (!(timeout_s > 0)) return kNever;
  const double ns = timeout_s * 1e9;
  return ns >= static_cast<double>(kNever - now_ns) ? kNever : now_ns + static_cast<int64_t>(ns);
}

}  // namespace

void ReadyBatch::FreeDeleter::operator()(int64_t* p) const { std::free(p); }

// ---- lifecycle ---------------------------------------------------------------

Scheduler::Scheduler(std::shared_ptr<const SequenceEncoder> encoder, SchedulerOptions options)
    : encoder_(std::move(encoder)), opt_(options) {
  if (!encoder_) throw std::invalid_argument("encoder must not be null");
  if (opt_.knobs.max_batch_size < 1) throw std::invalid_argument("max_batch_size must be >= 1");
  if (opt_.knobs.max_batch_tokens < 1) throw std::invalid_argument("max_batch_tokens must be >= 1");
  if (opt_.max_queue_tokens < 1) throw std::invalid_argument("max_queue_tokens must be >= 1");
  if (opt_.chunk_texts < 1) throw std::invalid_argument("chunk_texts must be >= 1");
  if (!opt_.class_queue_tokens.empty()) {
    if (opt_.class_queue_tokens.size() != static_cast<size_t>(kLeastUrgentPriority) + 1) {
      throw std::invalid_argument("class_queue_tokens needs one bound per priority class (" +
                                  std::to_string(kLeastUrgentPriority + 1) + "), got " +
                                  std::to_string(opt_.class_queue_tokens.size()));
    }
    for (const uint64_t bound : opt_.class_queue_tokens) {
      if (bound < 1 || bound > opt_.max_queue_tokens) {
        throw std::invalid_argument("class_queue_tokens must lie in [1, max_queue_tokens], got " +
                                    std::to_string(bound));
      }
    }
  }
  if (opt_.knobs.max_priority_wait_ns < 0) {
    throw std::invalid_argument("max_priority_wait must be >= 0");
  }
  const uint32_t threads = std::max<uint32_t>(opt_.tokenizer_threads, 1);
  workers_.reserve(threads);
  for (uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

Scheduler::~Scheduler() {
  shutdown(false);
  for (std::thread& t : workers_) t.join();
}

void Scheduler::shutdown(bool drain) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_ && !(draining_ && !drain)) return;
  stopping_ = true;
  draining_ = drain;
  exec_cv_.notify_all();
  work_cv_.notify_all();
}

// ---- submission --------------------------------------------------------------

// Called with the lock held: refuses or registers request id. reserve is the
// number of tokens it may add to the queue (exact when already tokenized).
void Scheduler::admit_locked(uint64_t id, uint64_t reserve, size_t n_seqs, double timeout_s,
                             int32_t priority, int64_t now) {
  if (stopping_) throw std::runtime_error("the scheduler is shut down");
  if (requests_.count(id)) throw std::invalid_argument("request id is already in use");
  expire_locked(now);  // expired sequences must not count against the bound
  if (reserve > opt_.max_queue_tokens) {
    ++stats_.rejected_too_large;
    throw RequestTooLarge("request needs about " + std::to_string(reserve) +
                          " tokens, more than max_queue_tokens (" +
                          std::to_string(opt_.max_queue_tokens) + ")");
  }
  const uint64_t used = queue_.tokens() + reserved_tokens_ + prefetched_tokens_;
  const uint64_t limit = queue_limit(priority);
  // A request that finds the queue empty is taken whatever its class's bound:
  // waiting would not make more room for it.
  if (used > 0 && used + reserve > limit) {
    ++stats_.rejected;
    const std::string p = std::to_string(priority);
    throw QueueFull("queue full for priority " + p + ": " + std::to_string(used) +
                    " tokens waiting and " + std::to_string(reserve) +
                    " more for this request pass the " + std::to_string(limit) +
                    " that priority " + p + " may fill (max_queue_tokens is " +
                    std::to_string(opt_.max_queue_tokens) + ")");
  }
  Request& r = requests_[id];
  r.order = next_order_++;
  r.arrival_ns = now;
  r.deadline_ns = deadline_after(now, timeout_s);
  r.priority = priority;
  r.seqs.resize(n_seqs);
  r.undispatched = static_cast<uint32_t>(n_seqs);
  id_of_order_[r.order] = id;
  if (r.deadline_ns != kNever) deadlines_.push({r.deadline_ns, id, r.order});
  ++stats_.requests;
  stats_.sequences += n_seqs;
}

uint64_t Scheduler::queue_limit(int32_t priority) const {
  if (opt_.class_queue_tokens.empty()) return opt_.max_queue_tokens;
  return opt_.class_queue_tokens.at(static_cast<size_t>(priority));
}

std::vector<uint64_t> Scheduler::class_queue_tokens() const {
  std::vector<uint64_t> out;
  for (int32_t p = kMostUrgentPriority; p <= kLeastUrgentPriority; ++p) {
    out.push_back(queue_limit(p));
  }
  return out;
}

void Scheduler::submit(uint64_t id, std::vector<std::string> texts, std::vector<std::string> pairs,
                       double timeout_s, int32_t priority) {
  check_priority(priority);
  const size_t n = texts.size();
  if (n == 0) throw std::invalid_argument("a request needs at least one text");
  if (n > UINT32_MAX / 2) throw std::invalid_argument("too many texts in one request");
  if (!pairs.empty() && pairs.size() != n) {
    throw std::invalid_argument("pairs has " + std::to_string(pairs.size()) +
                                " items but texts has " + std::to_string(n));
  }
  const bool is_pair = !pairs.empty();
  size_t bytes = 0;
  for (size_t i = 0; i < n; ++i) bytes += texts[i].size() + (is_pair ? pairs[i].size() : 0);

  if (bytes <= opt_.inline_max_bytes) {
    // Small: tokenize right here (the GIL is released), then admit exactly.
    std::vector<TokenSeq> seqs(n);
    uint64_t tokens = 0;
    const int64_t start = steady_now_ns();
    for (size_t i = 0; i < n; ++i) {
      const std::string_view pair = is_pair ? std::string_view(pairs[i]) : std::string_view();
      encoder_->encode(texts[i], is_pair ? &pair : nullptr, seqs[i]);
      tokens += seqs[i].ids.size();
    }
    const int64_t now = steady_now_ns();
    std::lock_guard<std::mutex> lock(mu_);
    stats_.tokenize_s += static_cast<double>(now - start) * 1e-9;
    admit_locked(id, tokens, n, timeout_s, priority, now);
    enqueue_locked(id, 0, seqs);
    return;
  }

  // Large: admit against an upper bound of its tokens (bytes + special
  // tokens, at most max_length per text) so the answer comes at once; the
  // workers tokenize it in chunks and the bound shrinks to the real count.
  auto input = std::make_shared<Input>(Input{std::move(texts), std::move(pairs)});
  const uint64_t special = encoder_->special_tokens(is_pair);
  std::vector<uint64_t> estimate(n);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t b = input->texts[i].size() + (is_pair ? input->pairs[i].size() : 0);
    estimate[i] = std::min<uint64_t>(b + special, encoder_->max_length());
    total += estimate[i];
  }
  std::lock_guard<std::mutex> lock(mu_);
  admit_locked(id, total, n, timeout_s, priority, steady_now_ns());
  Request& r = requests_[id];
  for (uint32_t begin = 0; begin < n; begin += opt_.chunk_texts) {
    Task task;
    task.id = id;
    task.input = input;
    task.begin = begin;
    task.end = static_cast<uint32_t>(std::min<size_t>(n, size_t{begin} + opt_.chunk_texts));
    for (uint32_t i = task.begin; i < task.end; ++i) task.reserved += estimate[i];
    tasks_.push_back(std::move(task));
    ++r.tasks_left;
  }
  reserved_tokens_ += total;
  work_cv_.notify_all();
}

void Scheduler::submit_tokens(uint64_t id, std::vector<TokenSeq> seqs, double timeout_s,
                              int32_t priority) {
  check_priority(priority);
  if (seqs.empty()) throw std::invalid_argument("a request needs at least one sequence");
  if (seqs.size() > UINT32_MAX / 2) throw std::invalid_argument("too many sequences");
  uint64_t tokens = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    TokenSeq& s = seqs[i];
    if (s.ids.empty()) throw std::invalid_argument("sequence " + std::to_string(i) + " is empty");
    if (s.type_ids.empty()) s.type_ids.assign(s.ids.size(), 0);
    if (s.type_ids.size() != s.ids.size()) {
      throw std::invalid_argument("sequence " + std::to_string(i) +
                                  ": type_ids and ids differ in length");
    }
    tokens += s.ids.size();
  }
  std::lock_guard<std::mutex> lock(mu_);
  admit_locked(id, tokens, seqs.size(), timeout_s, priority, steady_now_ns());
  enqueue_locked(id, 0, seqs);
}

// Puts tokenized sequences [first, first + seqs.size()) of a request into the
// queue, then wakes the executor, or, while it computes, lets a worker
// collate the next batch if that one is already full.
void Scheduler::enqueue_locked(uint64_t id, uint32_t first, std::vector<TokenSeq>& seqs) {
  Request& r = requests_.at(id);
  uint64_t tokens = 0;
  for (const TokenSeq& s : seqs) tokens += s.ids.size();
  // The rows queued together share one allowance: that of all their work.
  const int64_t overtake_ns = overtake_ns_locked(tokens);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const uint32_t index = first + static_cast<uint32_t>(i);
    const uint32_t length = static_cast<uint32_t>(seqs[i].ids.size());
    r.seqs[index] = std::move(seqs[i]);
    queue_.push({r.order, index}, length, r.arrival_ns, r.priority, overtake_ns);
  }
  if (executors_waiting_ > 0) {
    exec_cv_.notify_one();
  } else {
    post_prefetch_locked(steady_now_ns());
  }
}

// How long requests due earlier may be served before `tokens` of work that
// arrives now: short_first x its estimated compute, counting one batch's
// overhead (about max_row_padding tokens, batch_former.h). Shortest first, so
// a short request does not wait for the long ones queued before it; bounded,
// so a long one is passed over by little more than its own compute time, and
// by nothing once it has aged (BatchKnobs::max_priority_wait_ns).
int64_t Scheduler::overtake_ns_locked(uint64_t tokens) const {
  const double ns = opt_.knobs.short_first * ns_per_token_ *
                    static_cast<double>(tokens + opt_.knobs.max_row_padding);
  return ns > 0 ? static_cast<int64_t>(std::min(ns, 1e15)) : 0;
}

// ---- workers -----------------------------------------------------------------

void Scheduler::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
    if (tasks_.empty() || (stopping_ && !draining_)) return;
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    if (task.prefetch) {
      prefetch();
    } else {
      tokenize_task(task);
    }
    lock.lock();
    // The executor may be waiting for this task: for its sequences, or, when
    // draining, for the last task to finish.
    if (executors_waiting_ > 0) exec_cv_.notify_one();
  }
}

void Scheduler::tokenize_task(const Task& task) {
  const Input& in = *task.input;
  const bool is_pair = !in.pairs.empty();
  std::vector<TokenSeq> seqs(task.end - task.begin);
  std::string error;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = requests_.find(task.id);
    if (it->second.cancelled) seqs.clear();  // no need to tokenize
  }
  const int64_t start = steady_now_ns();
  try {
    for (size_t i = 0; i < seqs.size(); ++i) {
      const std::string_view pair = is_pair ? std::string_view(in.pairs[task.begin + i]) : "";
      encoder_->encode(in.texts[task.begin + i], is_pair ? &pair : nullptr, seqs[i]);
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  const int64_t end = steady_now_ns();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.tokenize_s += static_cast<double>(end - start) * 1e-9;
  reserved_tokens_ -= task.reserved;
  Request& r = requests_.at(task.id);
  --r.tasks_left;
  if (!error.empty() && !r.cancelled) {
    ++stats_.tokenize_errors;
    failures_.emplace_back(task.id, "tokenizer error: " + error);
    cancel_locked(task.id, false);
  }
  if (r.cancelled) {
    const uint32_t n = task.end - task.begin;
    r.undispatched -= n;
    stats_.dropped_sequences += n;
    maybe_erase_locked(task.id);
  } else {
    enqueue_locked(task.id, task.begin, seqs);
  }
}

void Scheduler::post_prefetch_locked(int64_t now_ns) {
  if (stopping_) return;  // workers may be gone; the executor forms the rest itself
  if (executors_waiting_ > 0 || prefetched_ || prefetching_ || prefetch_posted_) return;
  if (queue_.size() < 2 && queue_.tokens() * 2 <= opt_.knobs.max_batch_tokens) return;
  if (!queue_.plan(now_ns, opt_.knobs).full) return;  // it can still grow: form it late
  prefetch_posted_ = true;
  Task task;
  task.prefetch = true;
  tasks_.push_front(std::move(task));
  work_cv_.notify_one();
}

void Scheduler::prefetch() {
  std::unique_lock<std::mutex> lock(mu_);
  prefetch_posted_ = false;
  if (executors_waiting_ > 0 || prefetched_ || prefetching_ || (stopping_ && !draining_)) return;
  const int64_t now = steady_now_ns();
  expire_locked(now);
  const BatchPlan plan = queue_.plan(now, opt_.knobs);
  if (!plan.full) return;
  auto rows = std::make_unique<Taken>(take_locked(plan));
  prefetched_tokens_ = rows->real_tokens;  // still waiting: counts against the bound
  prefetching_ = true;
  lock.unlock();
  std::unique_ptr<ReadyBatch> batch = collate(*rows);
  lock.lock();
  prefetching_ = false;
  prefetched_ = std::move(rows);
  prefetched_batch_ = std::move(batch);
  exec_cv_.notify_one();
}

// ---- cancellation and deadlines ----------------------------------------------

bool Scheduler::cancel(uint64_t id, bool timed_out) {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_locked(id, timed_out);
}

bool Scheduler::cancel_locked(uint64_t id, bool timed_out) {
  const auto it = requests_.find(id);
  if (it == requests_.end() || it->second.cancelled) return false;
  Request& r = it->second;
  r.cancelled = true;
  uint32_t removed = 0;
  if (!queue_.empty()) {
    for (uint32_t i = 0; i < r.seqs.size(); ++i) {
      if (queue_.erase({r.order, i}) < 0) continue;
      r.seqs[i] = TokenSeq();
      ++removed;
    }
  }
  r.undispatched -= removed;
  stats_.dropped_sequences += removed;
  ++(timed_out ? stats_.expired_requests : stats_.cancelled_requests);
  maybe_erase_locked(id);
  return true;
}

void Scheduler::expire_locked(int64_t now_ns) {
  while (!deadlines_.empty() && deadlines_.top().at_ns <= now_ns) {
    const Deadline d = deadlines_.top();
    deadlines_.pop();
    const auto it = requests_.find(d.id);
    if (it != requests_.end() && it->second.order == d.order) cancel_locked(d.id, true);
  }
}

void Scheduler::maybe_erase_locked(uint64_t id) {
  const auto it = requests_.find(id);
  if (it == requests_.end() || it->second.undispatched > 0 || it->second.tasks_left > 0) return;
  id_of_order_.erase(it->second.order);
  requests_.erase(it);
}

// ---- forming batches -----------------------------------------------------------

Scheduler::Taken Scheduler::take_locked(const BatchPlan& plan) {
  Taken t;
  const size_t n = plan.rows.size();
  t.ids.reserve(n);
  t.indices.reserve(n);
  t.arrival_ns.reserve(n);
  t.seqs.reserve(n);
  for (const SeqKey& key : plan.rows) {
    const uint64_t id = id_of_order_.at(key.order);
    Request& r = requests_.at(id);
    t.ids.push_back(id);
    t.indices.push_back(key.index);
    t.arrival_ns.push_back(r.arrival_ns);
    t.seqs.push_back(std::move(r.seqs[key.index]));
  }
  t.width = plan.width;
  t.real_tokens = plan.real_tokens;
  queue_.take(plan);
  return t;
}

// Drops the rows of requests cancelled (or expired) since the batch was
// prefetched. True if any row was dropped.
bool Scheduler::drop_cancelled_rows_locked(Taken& rows) {
  size_t kept = 0;
  for (size_t i = 0; i < rows.ids.size(); ++i) {
    Request& r = requests_.at(rows.ids[i]);
    if (r.cancelled) {
      --r.undispatched;
      ++stats_.dropped_sequences;
      maybe_erase_locked(rows.ids[i]);
      continue;
    }
    if (kept != i) {
      rows.ids[kept] = rows.ids[i];
      rows.indices[kept] = rows.indices[i];
      rows.arrival_ns[kept] = rows.arrival_ns[i];
      rows.seqs[kept] = std::move(rows.seqs[i]);
    }
    ++kept;
  }
  if (kept == rows.ids.size()) return false;
  rows.ids.resize(kept);
  rows.indices.resize(kept);
  rows.arrival_ns.resize(kept);
  rows.seqs.resize(kept);
  rows.width = 0;
  rows.real_tokens = 0;
  for (const TokenSeq& s : rows.seqs) {
    rows.width = std::max(rows.width, static_cast<uint32_t>(s.ids.size()));
    rows.real_tokens += s.ids.size();
  }
  return true;
}

// A batch collated ahead was formed before the requests queued since. When
// one of them is of a more urgent class, the batch's rows go back to the
// queue, so that the next batch serves the urgent class (classes only: within
// one class the prefetched batch stands, as it was the batch former's choice).
void Scheduler::requeue_overtaken_prefetch_locked() {
  if (!prefetched_ || queue_.empty()) return;
  int32_t batch_priority = kLeastUrgentPriority;
  for (const uint64_t id : prefetched_->ids) {
    batch_priority = std::min(batch_priority, requests_.at(id).priority);
  }
  if (queue_.most_urgent_priority() >= batch_priority) return;
  Taken& rows = *prefetched_;
  drop_cancelled_rows_locked(rows);
  for (size_t i = 0; i < rows.ids.size(); ++i) {
    Request& r = requests_.at(rows.ids[i]);
    const uint32_t length = static_cast<uint32_t>(rows.seqs[i].ids.size());
    r.seqs[rows.indices[i]] = std::move(rows.seqs[i]);
    queue_.push({r.order, rows.indices[i]}, length, rows.arrival_ns[i], r.priority,
                overtake_ns_locked(length));
  }
  prefetched_.reset();
  prefetched_batch_.reset();
  prefetched_tokens_ = 0;
}

// The rows are the executor's now: account for them.
void Scheduler::dispatched_locked(const Taken& rows, int64_t now_ns) {
  for (size_t i = 0; i < rows.ids.size(); ++i) {
    --requests_.at(rows.ids[i]).undispatched;
    maybe_erase_locked(rows.ids[i]);
    stats_.queue_wait_s.observe(static_cast<double>(now_ns - rows.arrival_ns[i]) * 1e-9);
  }
  ++stats_.batches;
  stats_.batch_sequences += rows.ids.size();
  stats_.real_tokens += rows.real_tokens;
  stats_.padded_tokens += uint64_t{rows.width} * rows.ids.size();
  stats_.batch_size.observe(static_cast<double>(rows.ids.size()));
}

bool Scheduler::drained_locked() const {
  return queue_.empty() && tasks_.empty() && reserved_tokens_ == 0 && !prefetched_ &&
         !prefetching_ && failures_.empty();
}

std::unique_ptr<ReadyBatch> Scheduler::next_batch() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (stopping_ && (!draining_ || drained_locked())) return nullptr;
    if (!failures_.empty()) {
      auto out = std::make_unique<ReadyBatch>();
      out->failures.swap(failures_);
      return out;
    }
    const int64_t now = steady_now_ns();
    int64_t wake_at = kNever;
    if (!prefetching_) {
      expire_locked(now);
      requeue_overtaken_prefetch_locked();
      std::unique_ptr<Taken> rows;
      std::unique_ptr<ReadyBatch> batch;
      if (prefetched_) {
        rows = std::move(prefetched_);
        batch = std::move(prefetched_batch_);
        prefetched_tokens_ = 0;
        if (drop_cancelled_rows_locked(*rows)) batch.reset();
        if (!rows->ids.empty()) ++stats_.prefetched_batches;
      } else {
        // Executors that are idle share what is queued (see BatchQueue::plan).
        const uint32_t parts = 1 + static_cast<uint32_t>(executors_waiting_);
        const BatchPlan plan = queue_.plan(now, opt_.knobs, parts);
        if (plan.ready && !plan.rows.empty()) rows = std::make_unique<Taken>(take_locked(plan));
        wake_at = plan.wake_at_ns;
        if (rows && executors_waiting_ > 0 && !queue_.empty()) exec_cv_.notify_one();
      }
      if (rows && rows->ids.empty()) continue;  // every prefetched row was cancelled
      if (rows) {
        dispatched_locked(*rows, now);
        const uint64_t batch_id = next_batch_id_++;
        // While this batch computes, a worker may collate the next one.
        post_prefetch_locked(now);
        lock.unlock();
        if (!batch) batch = collate(*rows);
        batch->id = batch_id;
        batch->max_queue_wait_s = static_cast<double>(now - rows->arrival_ns.front()) * 1e-9;
        return batch;
      }
    }
    ++executors_waiting_;
    if (wake_at == kNever) {
      exec_cv_.wait(lock);  // no timer: something will be queued and wake us
    } else {
      exec_cv_.wait_until(lock, to_time_point(wake_at));
    }
    --executors_waiting_;
  }
}

std::unique_ptr<ReadyBatch> Scheduler::collate(const Taken& rows) const {
  auto out = std::make_unique<ReadyBatch>();
  const size_t n = rows.ids.size(), w = rows.width, cells = n * w;
  void* mem = std::malloc(std::max<size_t>(3 * cells, 1) * sizeof(int64_t));
  if (!mem) throw std::bad_alloc();
  out->data.reset(static_cast<int64_t*>(mem));
  int64_t* ids = out->data.get();
  const PaddedBuffers buffers{ids, ids + cells, ids + 2 * cells, w};
  const int64_t pad = encoder_->pad_id();
  for (size_t r = 0; r < n; ++r) {
    const TokenSeq& s = rows.seqs[r];
    pad_line(s.ids.data(), s.type_ids.data(), s.ids.size(), r, pad, buffers);
  }
  out->rows = static_cast<uint32_t>(n);
  out->width = static_cast<uint32_t>(w);
  out->real_tokens = rows.real_tokens;
  out->request_ids = rows.ids;
  out->indices = rows.indices;
  return out;
}

// ---- stats ---------------------------------------------------------------------

void Scheduler::record_compute(double seconds, bool failed, uint64_t padded_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.compute_s.observe(seconds);
  if (failed) ++stats_.failed_batches;
  if (failed || padded_tokens == 0 || !(seconds > 0)) return;
  const double sample =
      seconds * 1e9 / static_cast<double>(padded_tokens + opt_.knobs.max_row_padding);
  // A moving average over about the last ten batches: follows a change of
  // load or clock speed without jumping at one slow batch.
  ns_per_token_ = ns_per_token_ > 0 ? 0.9 * ns_per_token_ + 0.1 * sample : sample;
}

void Scheduler::record_outcomes(uint64_t ok, uint64_t failed, uint64_t timeouts,
                                uint64_t cancellations) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.ok_requests += ok;
  stats_.failed_requests += failed;
  stats_.timeouts += timeouts;
  stats_.cancellations += cancellations;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.queue_sequences = queue_.size();
  s.queue_tokens = queue_.tokens();
  s.reserved_tokens = reserved_tokens_;
  s.prefetched_tokens = prefetched_tokens_;
  s.live_requests = requests_.size();
  s.tokenize_tasks = tasks_.size();
  return s;
}

}  // namespace textfleet
