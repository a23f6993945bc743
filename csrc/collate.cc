#include "collate.h"

#include <algorithm>

namespace textfleet {

namespace {
constexpr size_t kRowsPerTask = 256;

void fill_line(const EncodedBatch& batch, size_t row, size_t line, int64_t pad_id,
               const PaddedBuffers& out) {
  const size_t begin = batch.row_begin[row];
  const size_t len = batch.length(row);
  int64_t* ids = out.input_ids + line * out.width;
  int64_t* mask = out.attention_mask + line * out.width;
  int64_t* types = out.token_type_ids + line * out.width;
  for (size_t k = 0; k < len; ++k) {
    ids[k] = batch.ids[begin + k];
    types[k] = batch.type_ids[begin + k];
  }
  std::fill(mask, mask + len, int64_t{1});
  std::fill(ids + len, ids + out.width, pad_id);
  std::fill(mask + len, mask + out.width, int64_t{0});
  std::fill(types + len, types + out.width, int64_t{0});
}
}  // namespace

void collate(const EncodedBatch& batch, const size_t* rows, size_t n_rows, int64_t pad_id,
             const PaddedBuffers& out, ThreadPool* pool) {
  auto fill = [&](size_t begin, size_t end) {
    for (size_t j = begin; j < end; ++j) fill_line(batch, rows ? rows[j] : j, j, pad_id, out);
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
