#include "tokenizer.h"

#include <algorithm>
#include <stdexcept>

#include "byte_trie.h"
#include "utf8.h"

namespace textfleet {

namespace {

size_t count_special(const std::vector<TemplatePiece>& tpl) {
  size_t n = 0;
  for (const auto& piece : tpl) n += piece.kind == TemplatePiece::kSpecial ? piece.ids.size() : 0;
  return n;
}

}  // namespace

// Finds added tokens in raw text the way HF's AhoCorasick with
// MatchKind::LeftmostLongest does: the earliest match, the longest there,
// then on after it, without overlaps.
class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
    std::vector<std::pair<std::string, int32_t>> keys;
    for (const auto& t : tokens) {
      if (t.content.empty()) continue;  // HF ignores empty added tokens
      if (t.id < 0) throw std::invalid_argument("added token id must be >= 0: " + t.content);
      keys.emplace_back(t.content, t.id);
      first_byte_[static_cast<uint8_t>(t.content[0])] = true;
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end(),
                           [](const auto& x, const auto& y) { return x.first == y.first; }),
               keys.end());
    trie_ = ByteTrie(std::move(keys));
  }

  // The first match at or after byte `from`: sets [*start, *end) and *id.
  bool find(std::string_view text, size_t from, size_t* start, size_t* end, int32_t* id) const {
    const auto* p = reinterpret_cast<const uint8_t*>(text.data());
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_byte_[p[i]]) continue;
      size_t len = 0;
      const int32_t v = trie_.longest_prefix(ByteTrie::kRoot, p + i, text.size() - i, &len);
      if (v >= 0) {
        *start = i;
        *end = i + len;
        *id = v;
        return true;
      }
    }
    return false;
  }

 private:
  ByteTrie trie_;
  bool first_byte_[256] = {};
};

struct Tokenizer::Workspace {
  PreTokenized pre;
  std::vector<WordToken> pieces;
  std::vector<Token> a;
  std::vector<Token> b;
};

Tokenizer::Tokenizer(TokenizerConfig config)
    : normalizer_(config.normalizer),
      wordpiece_(std::move(config.wordpiece)),
      single_(std::move(config.single_template)),
      pair_(std::move(config.pair_template)),
      max_length_(config.max_length),
      pad_id_(config.pad_id) {
  if (!config.added_tokens.empty()) {
    added_ = std::make_unique<AddedTokenMatcher>(config.added_tokens);
  }
  // HF without a post-processor: the sequences as they are, pair type id 1.
  if (single_.empty()) single_ = {TemplatePiece{TemplatePiece::kSequenceA, {}, 0}};
  if (pair_.empty()) {
    pair_ = {TemplatePiece{TemplatePiece::kSequenceA, {}, 0},
             TemplatePiece{TemplatePiece::kSequenceB, {}, 1}};
  }
  for (const auto& piece : single_) {
    if (piece.kind == TemplatePiece::kSequenceB) {
      throw std::invalid_argument("the single template cannot use sequence B");
    }
  }
  added_single_ = count_special(single_);
  added_pair_ = count_special(pair_);
  if (max_length_ < std::max(added_single_, added_pair_)) {
    throw std::invalid_argument("max_length " + std::to_string(max_length_) +
                                " is below the number of special tokens the template adds (" +
                                std::to_string(std::max(added_single_, added_pair_)) + ")");
  }
}

Tokenizer::~Tokenizer() = default;

void Tokenizer::append_words(const PreTokenized& pre, Workspace& ws,
                             std::vector<Token>& out) const {
  const auto* bytes = reinterpret_cast<const uint8_t*>(pre.bytes.data());
  for (const auto& word : pre.words) {
    ws.pieces.clear();
    wordpiece_.tokenize(bytes + word.begin, word.end - word.begin, word.nchars, ws.pieces);
    for (const auto& piece : ws.pieces) {
      // A token spans the original chars of its first and last bytes.
      out.push_back({piece.id, pre.align[word.begin + piece.begin].start,
                     pre.align[word.begin + piece.end - 1].end});
    }
  }
}

void Tokenizer::encode_sequence(std::string_view text, Workspace& ws,
                                std::vector<Token>& out) const {
  size_t seg = 0;    // start of the text not yet tokenized (bytes)
  size_t chars = 0;  // code points before seg
  size_t start = 0, end = 0;
  int32_t id = 0;
  while (added_ && added_->find(text, seg, &start, &end, &id)) {
    ws.pre.clear();
    normalizer_.run(text.substr(seg, start - seg), static_cast<uint32_t>(chars), ws.pre);
    append_words(ws.pre, ws, out);
    chars += utf8::count(text.data() + seg, start - seg);
    const size_t n = utf8::count(text.data() + start, end - start);
    out.push_back({id, static_cast<uint32_t>(chars), static_cast<uint32_t>(chars + n)});
    chars += n;
    seg = end;
  }
  ws.pre.clear();
  normalizer_.run(text.substr(seg), static_cast<uint32_t>(chars), ws.pre);
  append_words(ws.pre, ws, out);
}

// HF utils/truncation.rs, strategy LongestFirst, direction Right, stride 0.
void Tokenizer::truncate(std::vector<Token>& a, std::vector<Token>* b, size_t limit) const {
  if (b == nullptr) {
    if (a.size() > limit) a.resize(limit);
    return;
  }
  if (limit == 0) {
    a.clear();
    b->clear();
    return;
  }
  if (a.size() + b->size() <= limit) return;
  size_t n1 = a.size(), n2 = b->size();
  const bool swap = n1 > n2;
  if (swap) std::swap(n1, n2);  // n1 is the shorter
  n2 = n1 > limit ? n1 : std::max(n1, limit - n1);
  if (n1 + n2 > limit) {
    n1 = limit / 2;
    n2 = n1 + limit % 2;
  }
  if (swap) std::swap(n1, n2);
  if (a.size() > n1) a.resize(n1);
  if (b->size() > n2) b->resize(n2);
}

void Tokenizer::apply_template(const std::vector<TemplatePiece>& tpl, const std::vector<Token>& a,
                               const std::vector<Token>* b, bool add_special, bool with_offsets,
                               Encoding& out) const {
  for (const auto& piece : tpl) {
    if (piece.kind == TemplatePiece::kSpecial) {
      if (!add_special) continue;
      for (int32_t id : piece.ids) {
        out.ids.push_back(id);
        out.type_ids.push_back(piece.type_id);
        if (with_offsets) out.offsets.push_back({0, 0});
      }
      continue;
    }
    const std::vector<Token>& seq = piece.kind == TemplatePiece::kSequenceA ? a : *b;
    for (const Token& t : seq) {
      out.ids.push_back(t.id);
      out.type_ids.push_back(piece.type_id);
      if (with_offsets) out.offsets.push_back({t.start, t.end});
    }
  }
}

void Tokenizer::encode(std::string_view text, const std::string_view* pair,
                       bool add_special_tokens, Encoding& out, bool with_offsets) const {
  thread_local Workspace ws;
  ws.a.clear();
  ws.b.clear();
  encode_sequence(text, ws, ws.a);
  if (pair != nullptr) encode_sequence(*pair, ws, ws.b);
  const size_t added = add_special_tokens ? added_special(pair != nullptr) : 0;
  truncate(ws.a, pair != nullptr ? &ws.b : nullptr, max_length_ - added);
  out.clear();
  apply_template(pair != nullptr ? pair_ : single_, ws.a, pair != nullptr ? &ws.b : nullptr,
                 add_special_tokens, with_offsets, out);
}

}  // namespace textfleet
