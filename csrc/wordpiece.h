// WordPiece model: greedy longest-match-first over the UTF-8 bytes of one
// normalized word, as Hugging Face tokenizers' models/wordpiece does it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "byte_trie.h"

namespace textfleet {

struct WordPieceConfig {
  std::vector<std::pair<std::string, int32_t>> vocab;  // token -> id
  int32_t unk_id = 0;
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;
};

// One token of a word: its id and its byte range inside the word.
struct WordToken {
  int32_t id;
  uint32_t begin;
  uint32_t end;
};

class WordPiece {
 public:
  explicit WordPiece(WordPieceConfig config);

  // Appends the tokens of word [w, w+len) (nchars code points) to out.
  // A word longer than max_input_chars_per_word, or with any position
  // where no vocabulary entry matches, becomes one unk token over the word.
  void tokenize(const uint8_t* w, uint32_t len, uint32_t nchars,
                std::vector<WordToken>& out) const;

  size_t vocab_size() const { return vocab_size_; }

 private:
  // One trie holds the whole vocabulary. A word-initial piece is matched
  // from the root; a continuing piece from the node of the prefix ("##"),
  // which is exactly a lookup of prefix + substring.
  ByteTrie trie_;
  uint32_t continuing_node_;  // ByteTrie::kNone if no token has the prefix
  int32_t unk_id_;
  size_t max_chars_;
  size_t vocab_size_;
};

}  // namespace textfleet
