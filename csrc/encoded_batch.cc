#include "encoded_batch.h"

#include <algorithm>

namespace textfleet {

namespace {
// Texts per task: about 8 tasks per thread evens out the load when text
// lengths vary a lot; at most 64 keeps big batches from scheduling overhead.
size_t chunk_size(size_t n, size_t threads) {
  return std::clamp<size_t>(n / (threads * 8), 1, 64);
}

// A generous guess of the tokens texts [begin, end) give (about one per 3
// bytes of English, plus special tokens, at most max_length each), so
// buffers grow once, not per text, and a huge text reserves no more than
// the tokens it keeps.
size_t estimate_tokens(const std::string_view* texts, const std::string_view* pairs,
                       size_t begin, size_t end, size_t max_length) {
  size_t tokens = 0;
  for (size_t i = begin; i < end; ++i) {
    const size_t bytes = texts[i].size() + (pairs ? pairs[i].size() : 0);
    tokens += std::min(bytes / 3 + 4, max_length);
  }
  return tokens;
}
}  // namespace

void EncodedBatch::reserve(size_t tokens, size_t rows, bool with_offsets) {
  ids.reserve(ids.size() + tokens);
  type_ids.reserve(type_ids.size() + tokens);
  if (with_offsets) offsets.reserve(offsets.size() + tokens);
  row_begin.reserve(row_begin.size() + rows);
}

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
    dst.reserve(estimate_tokens(texts, pairs, begin, end, tokenizer.max_length()), end - begin,
                with_offsets);
    for (size_t i = begin; i < end; ++i) {
      tokenizer.encode(texts[i], pairs != nullptr ? &pairs[i] : nullptr, add_special_tokens, enc,
                       with_offsets);
      dst.append(enc);
    }
  };
  if (pool == nullptr || pool->threads() == 1 || n < 2) {
    encode_range(0, n, out);
    return;
  }
  const size_t chunk = chunk_size(n, pool->threads());
  const size_t chunks = (n + chunk - 1) / chunk;
  // Each chunk fills its own part; parts sit on separate cache lines so
  // threads appending to neighbouring parts do not invalidate each other.
  struct alignas(128) Part {
    EncodedBatch batch;
  };
  std::vector<Part> parts(chunks);
  pool->run(chunks, [&](size_t c) {
    encode_range(c * chunk, std::min(n, (c + 1) * chunk), parts[c].batch);
  });
  size_t total = out.ids.size();
  for (const auto& p : parts) total += p.batch.ids.size();
  out.ids.reserve(total);
  out.type_ids.reserve(total);
  if (with_offsets) out.offsets.reserve(total);
  out.row_begin.reserve(out.row_begin.size() + n);
  for (const auto& p : parts) out.append(p.batch);
}

}  // namespace textfleet
