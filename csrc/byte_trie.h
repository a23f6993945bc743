// A double-array trie over UTF-8 bytes: one transition is two loads and a
// compare, with no hashing and no allocation at lookup time. Used for the
// WordPiece vocabulary and for the added-token matcher.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace textfleet {

class ByteTrie {
 public:
  static constexpr uint32_t kRoot = 0;
  static constexpr uint32_t kNone = UINT32_MAX;

  ByteTrie() = default;
  // Keys must be distinct and non-empty; values must be >= 0.
  explicit ByteTrie(std::vector<std::pair<std::string, int32_t>> keys);

  // Follows byte c from node; false (node untouched) when there is no edge.
  bool step(uint32_t& node, uint8_t c) const {
    const uint32_t t = units_[node].base + c;
    if (units_[t].check != node) return false;
    node = t;
    return true;
  }
  // Value stored at node, or -1 when no key ends there.
  int32_t value(uint32_t node) const { return units_[node].value; }
  // The node reached by walking key from the root, or kNone.
  uint32_t find(std::string_view key) const;
  // Longest key that is a prefix of [p, p+n) when walking from `from`:
  // returns its value and sets *len, or returns -1.
  int32_t longest_prefix(uint32_t from, const uint8_t* p, size_t n, size_t* len) const {
    int32_t best = -1;
    uint32_t node = from;
    for (size_t i = 0; i < n && step(node, p[i]); ++i) {
      const int32_t v = units_[node].value;
      if (v >= 0) {
        best = v;
        *len = i + 1;
      }
    }
    return best;
  }
  size_t bytes() const { return units_.size() * sizeof(Unit); }

 private:
  struct Unit {
    uint32_t base = 0;
    uint32_t check = kNone;
    int32_t value = -1;
  };
  std::vector<Unit> units_{Unit{}};
};

}  // namespace textfleet
