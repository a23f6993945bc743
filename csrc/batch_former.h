// The batch former: which waiting sequences make up the next batch.
//
// BatchQueue holds only what the policy needs (arrival order, length,
// arrival time); the token ids live with the scheduler. plan() is a pure
// function of (queue state, now, knobs), so the policy is tested with a fake
// clock from Python (tests/test_batch_former.py) and the scheduler runs the
// very same code with the steady clock.
//
// Policy (docs/ARCHITECTURE.md, "Scheduler"):
// - priority classes: every sequence carries its request's priority (lower is
//   more urgent, Triton's convention). The batch serves the most urgent class
//   waiting; a sequence that has waited max_priority_wait_ns counts as the
//   most urgent class (ageing: no class starves, and the aged are the oldest
//   of that class, so they come first in it). Only one class goes into a
//   batch, except that with priority_fill the free rows of a batch may take
//   less urgent rows no wider than its width (where a batch's time barely
//   grows with its rows: a GPU). With one class queued, classes and ageing
//   change nothing;
// - the batch is anchored on the waiting request of that class that is due
//   first: due at its arrival plus its overtaking allowance (push(): the
//   scheduler gives a request an allowance in proportion to its own estimated
//   compute, BatchKnobs::short_first), so a short request that arrives behind
//   long ones goes ahead of them, and a long one is passed over only by
//   requests due before it (shortest-job-first with a bound: with no
//   allowances this is arrival order, and a request that has aged, below,
//   is served before any other, so none waits for ever); within that
//   request, on its longest waiting row. A
//   request is answered when its last row is, so the order of its own rows
//   costs it nothing, and longest first (LPT) leaves
//   the short batches for the end, where they even out the workers: a large
//   request no longer ends on one long batch while the other workers idle;
// - the other rows are picked by length around the anchor, cheapest padding
//   first, and a row joins only if the padding it adds is at most
//   max_row_padding: a row that would waste more than that costs more here
//   than running it in another batch (the per-batch overhead, in tokens);
// - the batch closes at max_batch_size rows or when the next row would push
//   rows x longest past max_batch_tokens (padded cost is what the model
//   computes);
// - fairness: the other rows must have waited at least fairness x as long as
//   the anchor (counting only its wait beyond max_wait). Length-aware
//   picking favours rows that fit well, so under load short texts would keep
//   overtaking a text of awkward length until it is the oldest; this bounds
//   that overtaking (and so the latency tail) while rows of one request,
//   which arrived together, always stay eligible together;
// - max_wait_ns == 0: the batch is ready whenever the executor asks (an idle
//   executor never waits on a timer); max_wait_ns > 0: a batch that could
//   still grow is held until its oldest row has waited max_wait_ns;
// - parts > 1 (other executors are idle): a ready batch of n rows keeps only
//   its first ceil(n / parts) rows in the walk's order (the anchor and the
//   rows closest to it in length), leaving the rest for the idle executors,
//   so work that arrives while the machine is idle is spread over all of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

namespace textfleet {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// Priority classes of requests: lower is more urgent (Triton's convention).
constexpr int32_t kMostUrgentPriority = 0;
constexpr int32_t kLeastUrgentPriority = 9;
constexpr int32_t kDefaultPriority = 5;

// Throws std::invalid_argument naming the range unless p is a priority class.
void check_priority(int32_t p);

// Place of a sequence in arrival order: requests are numbered as they are
// admitted and a request's texts keep their index, so keys sort oldest first
// and keep each request's texts in order.
struct SeqKey {
  uint64_t order = 0;
  uint32_t index = 0;

  friend bool operator<(const SeqKey& a, const SeqKey& b) {
    return a.order != b.order ? a.order < b.order : a.index < b.index;
  }
  friend bool operator==(const SeqKey& a, const SeqKey& b) {
    return a.order == b.order && a.index == b.index;
  }
};

struct BatchKnobs {
  uint32_t max_batch_size = 32;
  uint64_t max_batch_tokens = 8192;  // rows x longest row
  int64_t max_wait_ns = 0;
  uint32_t max_row_padding = 16;  // padded tokens one row may add
  double fairness = 0.7;          // in [0, 1]; 0: by length only
  // A sequence that has waited this long counts as the most urgent class; 0:
  // every sequence does at once (arrival order only, priorities ignored).
  int64_t max_priority_wait_ns = 1'000'000'000;
  bool priority_fill = false;  // less urgent rows may fill a batch's free rows
  // Not used here: the scheduler gives each request an overtaking allowance of
  // short_first x its estimated compute time (0: arrival order).
  double short_first = 0.0;
};

struct BatchPlan {
  std::vector<SeqKey> rows;  // in key order: oldest request first, then index
  uint32_t width = 0;        // longest row
  uint64_t real_tokens = 0;  // sum of the rows' lengths
  bool ready = false;        // form this batch now
  bool full = false;         // it cannot grow: size or token budget reached
  int64_t wake_at_ns = kNever;  // not ready: when max_wait makes it ready

  uint64_t padded_tokens() const { return uint64_t{width} * rows.size(); }
};

class BatchQueue {
 public:
  // Adds a sequence; false (and no change) if the key is already queued.
  // Rows of one request share its arrival and priority. overtake_ns: how much
  // later than it arrived it is due, i.e. how long requests due earlier may be
  // served before it (0: due at its arrival).
  bool push(SeqKey key, uint32_t length, int64_t arrival_ns,
            int32_t priority = kDefaultPriority, int64_t overtake_ns = 0);
  // Removes a sequence; its length, or -1 if it was not queued.
  int64_t erase(SeqKey key);
  // The next batch under knobs at time now, its share when it is split over
  // `parts` idle executors. Pure: the queue is not changed.
  BatchPlan plan(int64_t now_ns, const BatchKnobs& knobs, uint32_t parts = 1) const;
  // Removes the rows of a plan made on this queue state.
  void take(const BatchPlan& plan);

  bool empty() const { return by_age_.empty(); }
  // The most urgent priority queued (ageing aside); past kLeastUrgentPriority
  // when empty.
  int32_t most_urgent_priority() const {
    return by_class_.empty() ? kLeastUrgentPriority + 1 : by_class_.begin()->priority;
  }
  size_t size() const { return by_age_.size(); }
  uint64_t tokens() const { return tokens_; }
  // Arrival time of the oldest sequence (kNever when empty).
  int64_t oldest_arrival_ns() const;

 private:
  struct Info {
    uint32_t length;
    int64_t arrival_ns;
    int32_t priority;
    int64_t due_ns;  // arrival + overtaking allowance
  };
  using LengthKey = std::pair<uint32_t, SeqKey>;

  // Where a batch starts: the oldest request, its longest row first (ties:
  // lower index), so begin() of by_request_ is the anchor.
  struct AnchorKey {
    uint64_t order;
    uint32_t length;
    uint32_t index;
    friend bool operator<(const AnchorKey& a, const AnchorKey& b) {
      if (a.order != b.order) return a.order < b.order;
      if (a.length != b.length) return a.length > b.length;
      return a.index < b.index;
    }
  };

  // Where a batch of a class starts: the row due first (ties: as AnchorKey).
  struct ClassKey {
    int32_t priority;
    int64_t due_ns;
    AnchorKey anchor;
    friend bool operator<(const ClassKey& a, const ClassKey& b) {
      return std::tie(a.priority, a.due_ns, a.anchor) < std::tie(b.priority, b.due_ns, b.anchor);
    }
  };

  // Which waiting rows may join a batch: those of its class (as of now) that
  // arrived by `latest` (fairness).
  struct Filter {
    int64_t now_ns;
    int64_t latest_arrival_ns;
    int32_t priority;  // the batch's class
    bool same_class;   // false: the rows of the other classes (priority_fill)
    bool any_class;    // every waiting row is of the batch's class
  };
  bool admits(const Filter& f, const LengthKey& k, const BatchKnobs& knobs) const;
  // The class of a row at time now: its own, or the most urgent once aged.
  int32_t class_of(const Info& info, int64_t now_ns, const BatchKnobs& knobs) const;

  // Adds rows to a plan holding the anchor (see batch_former.cc), at most
  // max_rows in all; fill() adds rows no wider than the plan (priority_fill).
  void grow(BatchPlan& plan, const Filter& filter, const BatchKnobs& knobs,
            size_t max_rows) const;
  void fill(BatchPlan& plan, const Filter& filter, const BatchKnobs& knobs,
            size_t max_rows) const;

  std::map<SeqKey, Info> by_age_;
  std::set<LengthKey> by_length_;  // (length, key): equal lengths oldest first
  std::set<AnchorKey> by_request_;
  // begin() is the anchor of the most urgent class.
  std::set<ClassKey> by_class_;
  uint64_t tokens_ = 0;
};

}  // namespace textfleet
