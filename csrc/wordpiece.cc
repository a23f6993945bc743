#include "wordpiece.h"

namespace textfleet {

WordPiece::WordPiece(WordPieceConfig config)
    : unk_id_(config.unk_id),
      max_chars_(config.max_input_chars_per_word),
      vocab_size_(config.vocab.size()) {
  const std::string prefix = config.continuing_subword_prefix;
  trie_ = ByteTrie(std::move(config.vocab));
  continuing_node_ = trie_.find(prefix);
}

void WordPiece::tokenize(const uint8_t* w, uint32_t len, uint32_t nchars,
                         std::vector<WordToken>& out) const {
  if (len == 0) return;
  const size_t first = out.size();
  if (nchars <= max_chars_) {
    uint32_t pos = 0;
    while (pos < len) {
      const uint32_t from = pos == 0 ? ByteTrie::kRoot : continuing_node_;
      size_t n = 0;
      const int32_t id =
          from == ByteTrie::kNone ? -1 : trie_.longest_prefix(from, w + pos, len - pos, &n);
      if (id < 0) break;  // no piece matches here: the whole word is unknown
      out.push_back({id, pos, pos + static_cast<uint32_t>(n)});
      pos += static_cast<uint32_t>(n);
    }
    if (pos == len) return;
  }
  out.resize(first);
  out.push_back({unk_id_, 0, len});
}

}  // namespace textfleet
