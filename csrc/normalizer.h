// BERT normalizer + BERT pre-tokenizer in one pass over UTF-8, equal to
// Hugging Face tokenizers' normalizers/bert.rs and pre_tokenizers/bert.rs:
//
//   clean_text            drop NUL, U+FFFD and "other" chars, whitespace -> ' '
//   handle_chinese_chars  pad CJK ideographs with spaces
//   strip_accents         NFD (with canonical reordering), then drop Mn
//   lowercase             Rust char::to_lowercase (may give several chars)
//   pre-tokenize          split on whitespace, isolate punctuation
//
// Every normalized char keeps the range of original chars (code point
// indices) it came from, with HF's alignment rules, so token offsets are
// character offsets into the original string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace textfleet {

struct NormalizerOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
};

// The words of one text piece; owned by a per-thread workspace and reused,
// so steady-state normalization allocates nothing.
struct PreTokenized {
  struct Word {
    uint32_t begin;   // byte range in `bytes`
    uint32_t end;
    uint32_t nchars;  // code points in the word
  };
  struct Align {
    uint32_t start;  // original char range
    uint32_t end;
  };
  std::string bytes;         // normalized UTF-8 of all words, back to back
  std::vector<Align> align;  // one per byte of `bytes`
  std::vector<Word> words;

  // NFD scratch: decomposed non-starters waiting for canonical reordering,
  // and the alignments of the chars they came from (see normalizer.cc).
  struct Pending {
    uint32_t cp;
    uint8_t ccc;
    bool inserted;  // not the first char of its decomposition
  };
  std::vector<Pending> pending;
  std::vector<Align> queue;

  void clear() {
    bytes.clear();
    align.clear();
    words.clear();
  }
};

class BertNormalizer {
 public:
  explicit BertNormalizer(NormalizerOptions options);

  // Appends the words of `text` to out and returns the number of code
  // points it read. `char_base` is the index, in the original string, of
  // text's first code point. Invalid UTF-8 bytes are read as U+FFFD, one per
  // byte.
  uint32_t run(std::string_view text, uint32_t char_base, PreTokenized& out) const;

  // The first position at or after byte `from` where `text` can be cut into
  // two pieces that give the same words run() separately as run() of the
  // whole (text.size() if none): a word boundary that no NFD reordering
  // crosses. Used to normalize a long text a window at a time.
  size_t next_cut(std::string_view text, size_t from) const;

  const NormalizerOptions& options() const { return options_; }

 private:
  friend class NormalizeRun;
  enum AsciiAction : uint8_t { kDrop, kSplit, kIsolate, kKeep };
  NormalizerOptions options_;
  bool cuts_before(uint32_t cp) const;
  AsciiAction ascii_action_[128];
  uint8_t ascii_byte_[128];  // the byte a kKeep / kIsolate char becomes
};

}  // namespace textfleet
