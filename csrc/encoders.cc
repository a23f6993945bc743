#include "encoders.h"

#include <algorithm>
#include <stdexcept>

namespace textfleet {

// ---- ByteEncoder -------------------------------------------------------------

ByteEncoder::ByteEncoder(uint32_t max_length) : max_length_(max_length) {
  if (max_length < 4) throw std::invalid_argument("max_length must be >= 4");
}

void ByteEncoder::encode(std::string_view text, const std::string_view* pair, TokenSeq& out) const {
  out.ids.clear();
  out.type_ids.clear();
  const size_t room = max_length_ - special_tokens(pair != nullptr);
  size_t a = text.size(), b = pair ? pair->size() : 0;
  while (a + b > room) (a >= b ? a : b) -= 1;  // longest-first truncation
  auto put = [&](int32_t id, uint32_t type) {
    out.ids.push_back(id);
    out.type_ids.push_back(type);
  };
  put(1, 0);
  for (size_t i = 0; i < a; ++i) put(static_cast<uint8_t>(text[i]) + 3, 0);
  put(2, 0);
  if (pair) {
    for (size_t i = 0; i < b; ++i) put(static_cast<uint8_t>((*pair)[i]) + 3, 1);
    put(2, 1);
  }
}

PretokenizedEncoder::PretokenizedEncoder(uint32_t max_length, int64_t pad_id,
                                         uint32_t special_single, uint32_t special_pair)
    : max_length_(max_length), pad_id_(pad_id), single_(special_single), pair_(special_pair) {}

void PretokenizedEncoder::encode(std::string_view, const std::string_view*, TokenSeq&) const {
  throw std::logic_error("this scheduler takes tokenized sequences only (submit_tokens)");
}

// ---- WordPieceEncoder --------------------------------------------------------

WordPieceEncoder::WordPieceEncoder(std::shared_ptr<const Tokenizer> tokenizer)
    : tokenizer_(std::move(tokenizer)) {
  if (!tokenizer_) throw std::invalid_argument("tokenizer must not be null");
}

void WordPieceEncoder::encode(std::string_view text, const std::string_view* pair,
                              TokenSeq& out) const {
  thread_local Encoding scratch;  // keeps its capacity: no allocation per token
  tokenizer_->encode(text, pair, true, scratch, false);
  out.ids.assign(scratch.ids.begin(), scratch.ids.end());
  out.type_ids.assign(scratch.type_ids.begin(), scratch.type_ids.end());
}

uint32_t WordPieceEncoder::max_length() const {
  return static_cast<uint32_t>(std::min<size_t>(tokenizer_->max_length(), UINT32_MAX));
}

uint32_t WordPieceEncoder::special_tokens(bool is_pair) const {
  return static_cast<uint32_t>(tokenizer_->added_special(is_pair));
}

}  // namespace textfleet
