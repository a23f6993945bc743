#include "encoded_batch.h"

#include <algorithm>

namespace textfleet {

namespace {
// Texts per task: big enough to amortize scheduling, small enough to even
// out the load when text lengths vary a lot.
constexpr size_t kChunk = 64;
}  // namespace

void EncodedBatch::append(const Encoding& e) {
  ids.insert(ids.end(), e.ids.begin(), e.ids.end());
  type_ids.insert(type_ids.end(), e.type_ids.begin(), e.type_ids.end());
  offsets.insert(offsets.end(), e.offsets.begin(), e.offsets.end());
  row_begin.push_back(ids.size());
}

void EncodedBatch::append(const EncodedBatch& other) {
  const size_t base = ids.size();
  ids.insert(ids.end(), other.ids.begin(), other.ids.end());
  type_ids.insert(type_ids.end(), other.type_ids.begin(), other.type_ids.end());
  offsets.insert(offsets.end(), other.offsets.begin(), other.offsets.end());
  for (size_t r = 1; r < other.row_begin.size(); ++r) row_begin.push_back(base + other.row_begin[r]);
}

void encode_batch(const Tokenizer& tokenizer, const std::string_view* texts,
                  const std::string_view* pairs, size_t n, bool add_special_tokens,
                  bool with_offsets, ThreadPool* pool, EncodedBatch& out) {
  auto encode_range = [&](size_t begin, size_t end, EncodedBatch& dst) {
    thread_local Encoding enc;
    for (size_t i = begin; i < end; ++i) {
      tokenizer.encode(texts[i], pairs != nullptr ? &pairs[i] : nullptr, add_special_tokens, enc,
                       with_offsets);
      dst.append(enc);
    }
  };
  const size_t chunks = (n + kChunk - 1) / kChunk;
  if (pool == nullptr || pool->threads() == 1 || chunks <= 1) {
    encode_range(0, n, out);
    return;
  }
  std::vector<EncodedBatch> parts(chunks);
  pool->run(chunks, [&](size_t c) {
    encode_range(c * kChunk, std::min(n, (c + 1) * kChunk), parts[c]);
  });
  size_t total = out.ids.size();
  for (const auto& p : parts) total += p.ids.size();
  out.ids.reserve(total);
  out.type_ids.reserve(total);
  if (with_offsets) out.offsets.reserve(total);
  out.row_begin.reserve(out.row_begin.size() + n);
  for (const auto& p : parts) out.append(p);
}

}  // namespace textfleet
