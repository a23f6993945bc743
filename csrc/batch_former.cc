#include "batch_former.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <string>

namespace textfleet {

void check_priority(int32_t p) {
  if (p < kMostUrgentPriority || p > kLeastUrgentPriority) {
    throw std::invalid_argument("priority must be an integer in [" +
                                std::to_string(kMostUrgentPriority) + ", " +
                                std::to_string(kLeastUrgentPriority) + "] (" +
                                std::to_string(kMostUrgentPriority) +
                                " most urgent), got " + std::to_string(p));
  }
}

// a + b for b >= 0, kNever where that would pass it.
static int64_t add_capped(int64_t a, int64_t b) { return a > kNever - b ? kNever : a + b; }

bool BatchQueue::push(SeqKey key, uint32_t length, int64_t arrival_ns, int32_t priority,
                      int64_t overtake_ns) {
  check_priority(priority);
  const int64_t due_ns = add_capped(arrival_ns, std::max<int64_t>(overtake_ns, 0));
  if (!by_age_.emplace(key, Info{length, arrival_ns, priority, due_ns}).second) return false;
  by_length_.emplace(length, key);
  by_request_.insert({key.order, length, key.index});
  by_class_.insert({priority, due_ns, {key.order, length, key.index}});
  tokens_ += length;
  return true;
}

int64_t BatchQueue::erase(SeqKey key) {
  const auto it = by_age_.find(key);
  if (it == by_age_.end()) return -1;
  const uint32_t length = it->second.length;
  by_length_.erase({length, key});
  by_request_.erase({key.order, length, key.index});
  by_class_.erase({it->second.priority, it->second.due_ns, {key.order, length, key.index}});
  by_age_.erase(it);
  tokens_ -= length;
  return length;
}

int64_t BatchQueue::oldest_arrival_ns() const {
  return by_age_.empty() ? kNever : by_age_.begin()->second.arrival_ns;
}

// Latest arrival a row may have to join a batch whose anchor arrived at
// anchor_ns (the fairness knob, see the header).
static int64_t latest_arrival(int64_t anchor_ns, int64_t now_ns, const BatchKnobs& knobs) {
  const double waited = static_cast<double>(now_ns - anchor_ns);
  const double held = waited - static_cast<double>(knobs.max_wait_ns);
  if (!(held > 0) || !(knobs.fairness > 0)) return kNever;
  const double fairness = std::min(knobs.fairness, 1.0);
  return now_ns - static_cast<int64_t>(fairness * held);
}

// When a row that arrived at arrival_ns counts as the most urgent class.
static int64_t ages_at(int64_t arrival_ns, const BatchKnobs& knobs) {
  return add_capped(arrival_ns, std::max<int64_t>(knobs.max_priority_wait_ns, 0));
}

int32_t BatchQueue::class_of(const Info& info, int64_t now_ns, const BatchKnobs& knobs) const {
  return now_ns >= ages_at(info.arrival_ns, knobs) ? kMostUrgentPriority : info.priority;
}

bool BatchQueue::admits(const Filter& f, const LengthKey& k, const BatchKnobs& knobs) const {
  if (f.latest_arrival_ns == kNever && f.any_class) return f.same_class;
  const Info& info = by_age_.at(k.second);
  if (f.latest_arrival_ns != kNever && info.arrival_ns > f.latest_arrival_ns) return false;
  if (f.any_class) return f.same_class;
  return (class_of(info, f.now_ns, knobs) == f.priority) == f.same_class;
}

BatchPlan BatchQueue::plan(int64_t now_ns, const BatchKnobs& knobs, uint32_t parts) const {
  BatchPlan plan;
  if (by_age_.empty()) return plan;
  // The anchor: the oldest request once it has aged (the aged count as the
  // most urgent class, and it is the oldest of them), else the request due
  // first in the most urgent class waiting (nothing has aged: every row is of
  // its own class).
  const AnchorKey& oldest = *by_request_.begin();
  const Info& oldest_info = by_age_.at({oldest.order, oldest.index});
  const int64_t oldest_ages_at = ages_at(oldest_info.arrival_ns, knobs);
  const bool aged = now_ns >= oldest_ages_at;
  const AnchorKey& first = aged ? oldest : by_class_.begin()->anchor;
  const SeqKey anchor{first.order, first.index};
  const Info& info = by_age_.at(anchor);  // a request's rows share one arrival
  const int32_t priority = aged ? kMostUrgentPriority : info.priority;
  // One class queued: ageing only orders classes against each other, so every
  // row may join (an aged row and a younger one of its class stay batchable).
  const bool one_class = by_class_.begin()->priority == by_class_.rbegin()->priority;
  const Filter same{now_ns, latest_arrival(info.arrival_ns, now_ns, knobs), priority, true,
                    one_class};
  Filter others = same;
  others.same_class = false;
  const auto form = [&](size_t max_rows) {
    plan.rows.assign(1, anchor);
    plan.width = info.length;
    plan.real_tokens = info.length;
    grow(plan, same, knobs, max_rows);
    if (knobs.priority_fill) fill(plan, others, knobs, max_rows);
  };
  const size_t max_rows = std::max<uint32_t>(knobs.max_batch_size, 1);
  form(max_rows);

  const uint64_t rows = plan.rows.size();
  plan.full = rows >= max_rows || (rows + 1) * plan.width > knobs.max_batch_tokens;
  if (knobs.max_wait_ns <= 0 || plan.full) {
    plan.ready = true;
  } else {
    const int64_t due = add_capped(info.arrival_ns, knobs.max_wait_ns);
    plan.ready = now_ns >= due;
    if (!plan.ready) {
      plan.wake_at_ns = due;
      // The oldest request ageing makes it the anchor: plan again by then.
      if (!aged) plan.wake_at_ns = std::min(due, oldest_ages_at);
    }
  }
  if (plan.ready && parts > 1 && rows > 1) {
    // The walk is deterministic, so capping it keeps its first rows.
    form((rows + parts - 1) / parts);
  }
  // Arrival order inside the batch: a request's rows come out in index order.
  std::sort(plan.rows.begin(), plan.rows.end());
  return plan;
}

// Grows the batch from its anchor outwards in length order. The next
// shorter candidate wastes (width - its length) padding on itself; the next
// longer one widens every row already in, wasting rows x (its length -
// width). The cheaper one joins while it wastes at most max_row_padding. Both
// costs only grow as we walk outwards, so the first candidate over the limit
// ends the walk. Rows the filter does not admit (another class, or arrived
// after the fairness limit) are stepped over.
void BatchQueue::grow(BatchPlan& plan, const Filter& filter, const BatchKnobs& knobs,
                      size_t max_rows) const {
  const auto eligible = [&](const LengthKey& k) { return admits(filter, k, knobs); };
  const auto at = by_length_.find({plan.width, plan.rows.front()});
  auto lo = at;            // the next shorter candidate is std::prev(lo)
  auto hi = std::next(at);  // the next longer candidate is hi
  const auto skip_lo = [&] {
    while (lo != by_length_.begin() && !eligible(*std::prev(lo))) --lo;
    return lo != by_length_.begin();
  };
  const auto skip_hi = [&] {
    while (hi != by_length_.end() && !eligible(*hi)) ++hi;
    return hi != by_length_.end();
  };
  bool lo_open = skip_lo(), hi_open = skip_hi();

  while (plan.rows.size() < max_rows && (lo_open || hi_open)) {
    const uint64_t rows = plan.rows.size();
    const uint64_t lo_cost = lo_open ? plan.width - std::prev(lo)->first : UINT64_MAX;
    const uint64_t hi_cost = hi_open ? rows * (hi->first - plan.width) : UINT64_MAX;
    bool take_lo = lo_cost < hi_cost;
    if (lo_open && hi_open && lo_cost == hi_cost) {
      take_lo = std::prev(lo)->second < hi->second;  // equal cost: the older one
    }
    if ((take_lo ? lo_cost : hi_cost) > knobs.max_row_padding) break;

    const uint32_t length = take_lo ? std::prev(lo)->first : hi->first;
    const uint64_t width = std::max(plan.width, length);
    if ((rows + 1) * width > knobs.max_batch_tokens) {
      if (take_lo || width == plan.width) break;  // no row fits any more
      hi_open = false;  // a longer row does not fit, but a shorter one still might
      continue;
    }
    if (take_lo) {
      plan.rows.push_back((--lo)->second);
      lo_open = skip_lo();
    } else {
      plan.rows.push_back((hi++)->second);
      hi_open = skip_hi();
    }
    plan.width = static_cast<uint32_t>(width);
    plan.real_tokens += length;
  }
}

// Fills the free rows of a formed batch with rows the filter admits (of the
// less urgent classes) that do not widen it: from its width downwards, each
// row's own padding growing as we go, so the first over max_row_padding ends
// the walk.
void BatchQueue::fill(BatchPlan& plan, const Filter& filter, const BatchKnobs& knobs,
                      size_t max_rows) const {
  const uint64_t width = plan.width;
  auto lo = by_length_.upper_bound({plan.width, SeqKey{UINT64_MAX, UINT32_MAX}});
  while (plan.rows.size() < max_rows && lo != by_length_.begin()) {
    --lo;
    if (!admits(filter, *lo, knobs)) continue;
    if (width - lo->first > knobs.max_row_padding) break;
    if ((plan.rows.size() + 1) * width > knobs.max_batch_tokens) break;
    plan.rows.push_back(lo->second);
    plan.real_tokens += lo->first;
  }
}

void BatchQueue::take(const BatchPlan& plan) {
  for (const SeqKey& key : plan.rows) erase(key);
}

}  // namespace textfleet
