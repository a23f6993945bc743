#include "collate.h"

#include <algorithm>

namespace textfleet {

namespace {
constexpr size_t kRowsPerTask = 256;
}  // namespace

void pad_line(const int32_t* ids, const uint32_t* type_ids, size_t len, size_t line,
              int64_t pad_id, const PaddedBuffers& out) {
  int64_t* line_ids = out.input_ids + line * out.width;
  int64_t* line_mask = out.attention_mask + line * out.width;
  int64_t* line_types = out.token_type_ids + line * out.width;
  std::copy(ids, ids + len, line_ids);
  std::copy(type_ids, type_ids + len, line_types);
  std::fill(line_mask, line_mask + len, int64_t{1});
  std::fill(line_ids + len, line_ids + out.width, pad_id);
  std::fill(line_mask + len, line_mask + out.width, int64_t{0});
  std::fill(line_types + len, line_types + out.width, int64_t{0});
}

void collate(const EncodedBatch& batch, const size_t* rows, size_t n_rows, int64_t pad_id,
             const PaddedBuffers& out, ThreadPool* pool) {
  auto fill = [&](size_t begin, size_t end) {
    for (size_t j = begin; j < end; ++j) {
      const size_t row = rows ? rows[j] : j;
      const size_t first = batch.row_begin[row];
      pad_line(batch.ids.data() + first, batch.type_ids.data() + first, batch.length(row), j,
               pad_id, out);
    }
  };
  const size_t tasks = (n_rows + kRowsPerTask - 1) / kRowsPerTask;
  if (pool == nullptr || tasks <= 1) {
    fill(0, n_rows);
    return;
  }
  pool->run(tasks, [&](size_t t) {
    fill(t * kRowsPerTask, std::min(n_rows, (t + 1) * kRowsPerTask));
  });
}

}  // namespace textfleet
