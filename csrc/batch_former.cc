#include "batch_former.h"

#include <algorithm>
#include <iterator>

namespace textfleet {

bool BatchQueue::push(SeqKey key, uint32_t length, int64_t arrival_ns) {
  if (!by_age_.emplace(key, Info{length, arrival_ns}).second) return false;
  by_length_.emplace(length, key);
  by_request_.insert({key.order, length, key.index});
  tokens_ += length;
  return true;
}

int64_t BatchQueue::erase(SeqKey key) {
  const auto it = by_age_.find(key);
  if (it == by_age_.end()) return -1;
  const uint32_t length = it->second.length;
  by_length_.erase({length, key});
  by_request_.erase({key.order, length, key.index});
  by_age_.erase(it);
  tokens_ -= length;
  return length;
}

int64_t BatchQueue::oldest_arrival_ns() const {
  return by_age_.empty() ? kNever : by_age_.begin()->second.arrival_ns;
}

// Latest arrival a row may have to join a batch whose oldest row arrived at
// oldest_ns (the fairness knob, see the header).
static int64_t latest_arrival(int64_t oldest_ns, int64_t now_ns, const BatchKnobs& knobs) {
  const double waited = static_cast<double>(now_ns - oldest_ns);
  const double held = waited - static_cast<double>(knobs.max_wait_ns);
  if (!(held > 0) || !(knobs.fairness > 0)) return kNever;
  const double fairness = std::min(knobs.fairness, 1.0);
  return now_ns - static_cast<int64_t>(fairness * held);
}

BatchPlan BatchQueue::plan(int64_t now_ns, const BatchKnobs& knobs, uint32_t parts) const {
  BatchPlan plan;
  if (by_age_.empty()) return plan;
  const AnchorKey& first = *by_request_.begin();
  const SeqKey anchor{first.order, first.index};
  const Info& info = by_age_.at(anchor);  // a request's rows share one arrival
  const int64_t latest = latest_arrival(info.arrival_ns, now_ns, knobs);
  const auto start = [&] {
    plan.rows.assign(1, anchor);
    plan.width = info.length;
    plan.real_tokens = info.length;
  };
  const size_t max_rows = std::max<uint32_t>(knobs.max_batch_size, 1);
  start();
  grow(plan, latest, knobs, max_rows);

  const uint64_t rows = plan.rows.size();
  plan.full = rows >= max_rows || (rows + 1) * plan.width > knobs.max_batch_tokens;
  if (knobs.max_wait_ns <= 0 || plan.full) {
    plan.ready = true;
  } else {
    const int64_t due = info.arrival_ns > kNever - knobs.max_wait_ns
                            ? kNever
                            : info.arrival_ns + knobs.max_wait_ns;
    plan.ready = now_ns >= due;
    if (!plan.ready) plan.wake_at_ns = due;
  }
  if (plan.ready && parts > 1 && rows > 1) {
    // The walk is deterministic, so capping it keeps its first rows.
    start();
    grow(plan, latest, knobs, (rows + parts - 1) / parts);
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
// ends the walk. Rows that arrived after `latest` (fairness) are stepped over.
void BatchQueue::grow(BatchPlan& plan, int64_t latest, const BatchKnobs& knobs,
                      size_t max_rows) const {
  const auto eligible = [&](const LengthKey& k) {
    return latest == kNever || by_age_.at(k.second).arrival_ns <= latest;
  };
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

void BatchQueue::take(const BatchPlan& plan) {
  for (const SeqKey& key : plan.rows) erase(key);
}

}  // namespace textfleet
