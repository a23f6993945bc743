// The native BERT WordPiece tokenizer: the C++ API, free of Python.
//
// For one text (or pair) it does what Hugging Face tokenizers does with
// padding off and truncation (longest-first) at max_length:
//   added tokens matched in the raw text -> BERT normalizer -> BERT
//   pre-tokenizer -> WordPiece -> truncation -> post-processor template.
// Offsets are code point offsets into each input string; special tokens
// get (0, 0). Encoding is const and thread-safe: per-thread scratch lives
// in thread_local storage, so concurrent calls on one Tokenizer are fine.
//
// The work is bounded by max_length, not by the text: a text is normalized
// and split into words a window at a time (cut at word boundaries, see
// BertNormalizer::next_cut), and tokenizing stops once the tokens that
// truncation keeps exist. Truncating a pair needs its segments' lengths only
// up to the limit, except when both exceed it and the limit is odd: then
// which one is longer decides which keeps the odd token, and the shorter
// segment is counted to its end (tokens counted, not kept).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "normalizer.h"
#include "wordpiece.h"

namespace textfleet {

// A token matched in the raw text before normalization (HF "added_tokens"
// with normalized=false and no lstrip / rstrip / single_word).
struct AddedToken {
  std::string content;
  int32_t id;
};

// One element of a post-processor template (HF TemplateProcessing).
struct TemplatePiece {
  enum Kind : uint8_t { kSequenceA, kSequenceB, kSpecial } kind;
  std::vector<int32_t> ids;  // kSpecial only
  uint32_t type_id = 0;
};

struct TokenizerConfig {
  WordPieceConfig wordpiece;
  NormalizerOptions normalizer;
  std::vector<AddedToken> added_tokens;
  std::vector<TemplatePiece> single_template;
  std::vector<TemplatePiece> pair_template;
  size_t max_length = 512;  // truncation limit, special tokens included
  int32_t pad_id = 0;
  // Bytes of text normalized per step; 0 sizes each step from the tokens
  // still needed. A small fixed step cuts texts at (nearly) every word
  // boundary, which tests use to check that cutting changes nothing.
  size_t scan_bytes = 0;
};

struct Offset {
  uint32_t start;
  uint32_t end;
};

// One encoded text or pair. The attention mask is all ones (no padding).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<uint32_t> type_ids;
  std::vector<Offset> offsets;  // left empty when offsets are not asked for

  size_t size() const { return ids.size(); }
  void clear() {
    ids.clear();
    type_ids.clear();
    offsets.clear();
  }
};

class AddedTokenMatcher;

class Tokenizer {
 public:
  // Throws std::invalid_argument on an inconsistent config.
  explicit Tokenizer(TokenizerConfig config);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes text (and pair when not null) into out (cleared first; its
  // capacity is reused). text and pair are UTF-8; invalid bytes count as
  // one U+FFFD each.
  void encode(std::string_view text, const std::string_view* pair, bool add_special_tokens,
              Encoding& out, bool with_offsets = true) const;

  size_t max_length() const { return max_length_; }
  int32_t pad_id() const { return pad_id_; }
  // Special tokens the template adds to a single text / a pair.
  size_t added_special(bool is_pair) const { return is_pair ? added_pair_ : added_single_; }
  // Bytes of input text normalized since construction, over all threads:
  // what shows that the work stops near max_length, whatever the text's size.
  uint64_t scanned_bytes() const { return scanned_.load(std::memory_order_relaxed); }

 private:
  struct Token {
    int32_t id;
    uint32_t start;
    uint32_t end;
  };
  struct Workspace;
  struct Cursor;
  void advance(Cursor& c, size_t stop, size_t keep, Workspace& ws, std::vector<Token>& out) const;
  void next_window(Cursor& c, size_t need) const;
  void order_lengths(Cursor& a, Cursor& b, Workspace& ws) const;
  void truncate(std::vector<Token>& a, size_t len_a, std::vector<Token>* b, size_t len_b,
                size_t limit) const;
  void apply_template(const std::vector<TemplatePiece>& tpl, const std::vector<Token>& a,
                      const std::vector<Token>* b, bool add_special, bool with_offsets,
                      Encoding& out) const;

  BertNormalizer normalizer_;
  WordPiece wordpiece_;
  std::unique_ptr<AddedTokenMatcher> added_;
  std::vector<TemplatePiece> single_;
  std::vector<TemplatePiece> pair_;
  size_t added_single_ = 0;
  size_t added_pair_ = 0;
  size_t max_length_;
  int32_t pad_id_;
  size_t scan_bytes_;
  mutable std::atomic<uint64_t> scanned_{0};
};

}  // namespace textfleet
