// Padding: rows of an EncodedBatch into caller-owned int64 [rows, width]
// buffers (numpy arrays, allocated before the GIL is released).
#pragma once

#include <cstddef>
#include <cstdint>

#include "encoded_batch.h"

namespace textfleet {

struct PaddedBuffers {
  int64_t* input_ids;
  int64_t* attention_mask;
  int64_t* token_type_ids;
  size_t width;  // every row is padded (right side) to this many tokens
};

// Writes one sequence of len tokens into line `line` of out: its ids and type
// ids, mask 1, then pad_id / 0 / 0 up to out.width (len <= out.width). The
// one padding routine: collate() below and the scheduler's batches use it.
void pad_line(const int32_t* ids, const uint32_t* type_ids, size_t len, size_t line,
              int64_t pad_id, const PaddedBuffers& out);

// Writes row rows[j] of batch into line j of out, for j in [0, n_rows);
// rows == nullptr means rows 0..n_rows-1. Rows must be valid indices and no
// longer than out.width. pool may be null.
void collate(const EncodedBatch& batch, const size_t* rows, size_t n_rows, int64_t pad_id,
             const PaddedBuffers& out, ThreadPool* pool);

}  // namespace textfleet
