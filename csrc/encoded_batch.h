// Many encodings stored flat (one allocation per field, not per text), and
// the batch encoder that fills them on a thread pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "thread_pool.h"
#include "tokenizer.h"

namespace textfleet {

struct EncodedBatch {
  std::vector<int32_t> ids;
  std::vector<uint32_t> type_ids;
  std::vector<Offset> offsets;           // empty unless encoded with offsets
  std::vector<size_t> row_begin = {0};   // row r is [row_begin[r], row_begin[r + 1])

  size_t rows() const { return row_begin.size() - 1; }
  size_t length(size_t r) const { return row_begin[r + 1] - row_begin[r]; }
  void reserve(size_t tokens, size_t rows, bool with_offsets);
  void append(const Encoding& e);
  void append(const EncodedBatch& other);
};

// Encodes texts[i] (with pairs[i] when pairs is not null) into row i of out.
// Work is spread over pool in chunks; pool may be null (this thread only).
void encode_batch(const Tokenizer& tokenizer, const std::string_view* texts,
                  const std::string_view* pairs, size_t n, bool add_special_tokens,
                  bool with_offsets, ThreadPool* pool, EncodedBatch& out);

}  // namespace textfleet
