// What the scheduler tokenizes with: the SequenceEncoder interface, the
// native WordPiece tokenizer behind it, and two stand-ins (a byte-level one
// for tests, and one that only carries limits for pre-tokenized input).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace textfleet {

// One tokenized text (or pair), without padding.
struct TokenSeq {
  std::vector<int32_t> ids;
  std::vector<uint32_t> type_ids;  // same length as ids
};

// What the scheduler tokenizes with. encode() is called from several threads
// at once and must be thread-safe.
class SequenceEncoder {
 public:
  virtual ~SequenceEncoder() = default;
  virtual void encode(std::string_view text, const std::string_view* pair, TokenSeq& out) const = 0;
  virtual uint32_t max_length() const = 0;
  virtual int64_t pad_id() const = 0;
  // Special tokens added to a single text / a pair (for the admission bound).
  virtual uint32_t special_tokens(bool is_pair) const = 0;
};

// A deterministic stand-in encoder: one token per UTF-8 byte between [CLS]=1
// and [SEP]=2 (pairs: [CLS] a [SEP] b [SEP], b with type 1), truncated at
// max_length. Tests use it to control sequence lengths exactly.
class ByteEncoder final : public SequenceEncoder {
 public:
  explicit ByteEncoder(uint32_t max_length);
  void encode(std::string_view text, const std::string_view* pair, TokenSeq& out) const override;
  uint32_t max_length() const override { return max_length_; }
  int64_t pad_id() const override { return 0; }
  uint32_t special_tokens(bool is_pair) const override { return is_pair ? 3 : 2; }

 private:
  uint32_t max_length_;
};

// For a scheduler fed only by submit_tokens() (texts tokenized elsewhere, as
// by the Hugging Face fallback): gives the pad id and limits; encode throws.
class PretokenizedEncoder final : public SequenceEncoder {
 public:
  PretokenizedEncoder(uint32_t max_length, int64_t pad_id, uint32_t special_single,
                      uint32_t special_pair);
  void encode(std::string_view text, const std::string_view* pair, TokenSeq& out) const override;
  uint32_t max_length() const override { return max_length_; }
  int64_t pad_id() const override { return pad_id_; }
  uint32_t special_tokens(bool is_pair) const override { return is_pair ? pair_ : single_; }

 private:
  uint32_t max_length_;
  int64_t pad_id_;
  uint32_t single_;
  uint32_t pair_;
};

// The native WordPiece tokenizer (tokenizer.h) as the scheduler's encoder.
class WordPieceEncoder final : public SequenceEncoder {
 public:
  explicit WordPieceEncoder(std::shared_ptr<const Tokenizer> tokenizer);
  void encode(std::string_view text, const std::string_view* pair, TokenSeq& out) const override;
  uint32_t max_length() const override;
  int64_t pad_id() const override { return tokenizer_->pad_id(); }
  uint32_t special_tokens(bool is_pair) const override;

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
};

}  // namespace textfleet
