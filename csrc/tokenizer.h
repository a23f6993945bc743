// The native BERT WordPiece tokenizer: the C++ API, free of Python.
//
// For one text (or pair) it does what Hugging Face tokenizers does with
// padding off and truncation (longest-first) at max_length:
//   added tokens matched in the raw text -> BERT normalizer -> BERT
//   pre-tokenizer -> WordPiece -> truncation -> post-processor template.
// Offsets are code point offsets into each input string; special tokens
// get (0, 0). Encoding is const and thread-safe: per-thread scratch lives
// in thread_local storage, so concurrent calls on one Tokenizer are fine.
#pragma once

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

 private:
  struct Token {
    int32_t id;
    uint32_t start;
    uint32_t end;
  };
  struct Workspace;
  void encode_sequence(std::string_view text, Workspace& ws, std::vector<Token>& out) const;
  void append_words(const PreTokenized& pre, Workspace& ws, std::vector<Token>& out) const;
  void truncate(std::vector<Token>& a, std::vector<Token>* b, size_t limit) const;
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
};

}  // namespace textfleet
