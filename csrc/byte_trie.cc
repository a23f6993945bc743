#include "byte_trie.h"

#include <algorithm>
#include <stdexcept>

namespace textfleet {
namespace {

// A plain pointer trie, only used while building the double array.
struct TmpNode {
  std::vector<std::pair<uint8_t, uint32_t>> children;  // sorted by byte
  int32_t value = -1;
};

std::vector<TmpNode> build_tmp(std::vector<std::pair<std::string, int32_t>>& keys) {
  std::sort(keys.begin(), keys.end());
  std::vector<TmpNode> nodes(1);
  for (const auto& [key, value] : keys) {
    if (key.empty() || value < 0) throw std::invalid_argument("trie keys must be non-empty");
    uint32_t node = 0;
    for (unsigned char c : key) {
      auto& ch = nodes[node].children;
      // Keys are sorted, so a shared prefix is always the last child.
      if (!ch.empty() && ch.back().first == c) {
        node = ch.back().second;
      } else {
        const auto next = static_cast<uint32_t>(nodes.size());
        ch.emplace_back(c, next);
        nodes.emplace_back();
        node = next;
      }
    }
    if (nodes[node].value >= 0) throw std::invalid_argument("duplicate trie key: " + key);
    nodes[node].value = value;
  }
  return nodes;
}

}  // namespace

ByteTrie::ByteTrie(std::vector<std::pair<std::string, int32_t>> keys) {
  const std::vector<TmpNode> tmp = build_tmp(keys);
  std::vector<bool> used(256, false);
  used[0] = true;  // the root
  units_.assign(256, Unit{});
  // Where the search for a free base starts. Holes left behind it are
  // skipped once the scanned region is almost full (the darts heuristic),
  // which keeps building linear in practice at the price of a few holes.
  size_t search_from = 1;
  // Breadth-first placement: (temporary node, position in the double array).
  std::vector<std::pair<uint32_t, uint32_t>> queue{{0, 0}};
  for (size_t qi = 0; qi < queue.size(); ++qi) {
    const auto [tnode, pos] = queue[qi];
    const auto& children = tmp[tnode].children;
    if (children.empty()) continue;
    while (used[search_from]) ++search_from;
    const uint32_t lo = children.front().first;
    // Smallest base (from search_from on) that puts every child on a free slot.
    uint32_t base = 0;
    size_t occupied = 0;
    size_t p = std::max<size_t>(search_from, lo + 1);
    for (;; ++p) {
      if (p + 256 > used.size()) used.resize(p + 512, false);
      if (used[p]) {
        ++occupied;
        continue;
      }
      base = static_cast<uint32_t>(p - lo);
      bool fits = true;
      for (const auto& [c, child] : children) {
        if (used[base + c]) {
          fits = false;
          break;
        }
      }
      if (fits) break;
      ++occupied;  // a free slot that did not fit counts as taken
    }
    const size_t scanned = p - std::max<size_t>(search_from, lo + 1) + 1;
    if (occupied * 20 >= scanned * 19) search_from = p;
    if (units_.size() < base + 256u) units_.resize(base + 512u);
    units_[pos].base = base;
    for (const auto& [c, child] : children) {
      const uint32_t t = base + c;
      used[t] = true;
      units_[t].check = pos;
      units_[t].value = tmp[child].value;
      queue.emplace_back(child, t);
    }
  }
  // Every base + 255 stays inside the array, so step() needs no bounds check.
  size_t max_base = 0;
  for (const Unit& u : units_) max_base = std::max<size_t>(max_base, u.base);
  units_.resize(std::max(units_.size(), max_base + 256));
  units_.shrink_to_fit();
}

uint32_t ByteTrie::find(std::string_view key) const {
  uint32_t node = kRoot;
  for (unsigned char c : key) {
    if (!step(node, c)) return kNone;
  }
  return node;
}

}  // namespace textfleet
