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

  // The first match starting in [from, until): sets [*start, *end) and *id.
  // The match may end past `until`.
  bool find(std::string_view text, size_t from, size_t until, size_t* start, size_t* end,
            int32_t* id) const {
    const auto* p = reinterpret_cast<const uint8_t*>(text.data());
    for (size_t i = from; i < until; ++i) {
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

namespace {
// Bytes of text normalized per step when it is sized from the tokens still
// needed: about 6 per token (English text takes about 4.5), at least a short
// sentence, at most what keeps the per-thread scratch near a megabyte.
constexpr size_t kBytesPerToken = 6;
constexpr size_t kMinStep = 128;
constexpr size_t kMaxStep = 64 * 1024;
// Tokens counted per round while finding the longer segment of a pair.
constexpr size_t kCountRound = 4096;
// Per-thread scratch above this is freed after a call: a text with no place
// to cut (one huge word) is normalized in one piece, and the thread must not
// keep that memory.
constexpr size_t kKeepScratchBytes = size_t{1} << 20;

template <typename T>
size_t capacity_bytes(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}
}  // namespace

struct Tokenizer::Workspace {
  PreTokenized pre_a;  // the current window of each segment
  PreTokenized pre_b;
  std::vector<WordToken> pieces;
  std::vector<Token> a;
  std::vector<Token> b;

  static void trim(PreTokenized& p) {
    if (p.bytes.capacity() + capacity_bytes(p.align) + capacity_bytes(p.words) +
            capacity_bytes(p.pending) + capacity_bytes(p.queue) >
        kKeepScratchBytes) {
      p = PreTokenized();
    }
  }
  void trim() {
    trim(pre_a);
    trim(pre_b);
    if (capacity_bytes(a) > kKeepScratchBytes) a = {};
    if (capacity_bytes(b) > kKeepScratchBytes) b = {};
  }
};

// How far one input text is tokenized: the words of its current window not
// tokenized yet, and where the next window starts.
struct Tokenizer::Cursor {
  Cursor(std::string_view t, PreTokenized& p) : text(t), pre(&p) { p.clear(); }

  std::string_view text;
  PreTokenized* pre;       // the current window's words
  size_t next_word = 0;    // the first of them not tokenized yet
  size_t pos = 0;          // bytes of text taken into windows
  uint32_t chars = 0;      // code points before pos
  size_t count = 0;        // tokens so far, kept or only counted
  bool has_added = false;  // an added token follows the window's words
  Token added{};
  uint64_t scanned = 0;    // bytes normalized

  bool done() const { return next_word == pre->words.size() && !has_added && pos >= text.size(); }
};

Tokenizer::Tokenizer(TokenizerConfig config)
    : normalizer_(config.normalizer),
      wordpiece_(std::move(config.wordpiece)),
      single_(std::move(config.single_template)),
      pair_(std::move(config.pair_template)),
      max_length_(config.max_length),
      pad_id_(config.pad_id),
      scan_bytes_(config.scan_bytes) {
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

// Tokenizes c.text on from where it stopped, a word at a time, until c.count
// reaches stop or the text ends. Tokens go to out while c.count < keep; past
// that they are only counted. Words are whole units (WordPiece gives a word
// all its pieces or one unk), so the first `keep` tokens are exactly those of
// the whole text.
void Tokenizer::advance(Cursor& c, size_t stop, size_t keep, Workspace& ws,
                        std::vector<Token>& out) const {
  while (c.count < stop) {
    if (c.next_word < c.pre->words.size()) {
      const PreTokenized& pre = *c.pre;
      const auto& word = pre.words[c.next_word++];
      const auto* bytes = reinterpret_cast<const uint8_t*>(pre.bytes.data());
      ws.pieces.clear();
      wordpiece_.tokenize(bytes + word.begin, word.end - word.begin, word.nchars, ws.pieces);
      for (const auto& piece : ws.pieces) {
        // A token spans the original chars of its first and last bytes.
        if (c.count++ < keep) {
          out.push_back({piece.id, pre.align[word.begin + piece.begin].start,
                         pre.align[word.begin + piece.end - 1].end});
        }
      }
    } else if (c.has_added) {
      c.has_added = false;
      if (c.count++ < keep) out.push_back(c.added);
    } else if (c.pos < c.text.size()) {
      next_window(c, stop - c.count);
    } else {
      break;
    }
  }
}

// Normalizes the next window of c.text into c.pre: from c.pos to a cut
// point about `need` tokens on, or to the next added token (matched in the
// raw text: the text between two added tokens is normalized on its own).
void Tokenizer::next_window(Cursor& c, size_t need) const {
  size_t step = scan_bytes_;
  if (step == 0) {
    step = need >= kMaxStep / kBytesPerToken ? kMaxStep
                                             : std::max(kMinStep, need * kBytesPerToken);
  }
  const size_t from = c.pos;
  const size_t end = normalizer_.next_cut(c.text, std::min(c.text.size(), from + step));
  size_t start = end, stop = end;
  int32_t id = 0;
  const bool added = added_ && added_->find(c.text, from, end, &start, &stop, &id);
  c.pre->clear();
  c.next_word = 0;
  c.chars += normalizer_.run(c.text.substr(from, start - from), c.chars, *c.pre);
  if (added) {
    const auto n = static_cast<uint32_t>(utf8::count(c.text.data() + start, stop - start));
    c.added = {id, c.chars, c.chars + n};
    c.has_added = true;
    c.chars += n;
  }
  c.pos = stop;
  c.scanned += stop - from;
}

// Both segments of a pair reached the limit and it is odd: longest-first
// gives the odd token to the longer one (to the second on a tie), so count
// on, without keeping tokens, until the order of their full lengths is
// known. Overshooting is harmless: only the order matters.
void Tokenizer::order_lengths(Cursor& a, Cursor& b, Workspace& ws) const {
  while (!a.done() || !b.done()) {
    if (a.done()) return advance(b, a.count + 1, 0, ws, ws.b);
    if (b.done()) return advance(a, b.count + 1, 0, ws, ws.a);
    Cursor& lo = a.count <= b.count ? a : b;
    const Cursor& hi = &lo == &a ? b : a;
    advance(lo, hi.count + kCountRound, 0, ws, &lo == &a ? ws.a : ws.b);
  }
}

// HF utils/truncation.rs, strategy LongestFirst, direction Right, stride 0.
// len_a and len_b are the segments' token counts (exact, or at least the
// limit and in the right order); a and b hold their first tokens.
void Tokenizer::truncate(std::vector<Token>& a, size_t len_a, std::vector<Token>* b, size_t len_b,
                         size_t limit) const {
  if (b == nullptr) {
    if (a.size() > limit) a.resize(limit);
    return;
  }
  if (limit == 0) {
    a.clear();
    b->clear();
    return;
  }
  if (len_a + len_b <= limit) return;
  size_t n1 = len_a, n2 = len_b;
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
  const bool is_pair = pair != nullptr;
  const size_t limit = max_length_ - (add_special_tokens ? added_special(is_pair) : 0);
  // Each segment up to the limit: enough for longest-first to decide, since
  // neither keeps more than the limit (see order_lengths for the one case
  // where the lengths past it matter).
  Cursor a(text, ws.pre_a);
  advance(a, limit, limit, ws, ws.a);
  Cursor b(is_pair ? *pair : std::string_view(), ws.pre_b);
  if (is_pair) {
    advance(b, limit, limit, ws, ws.b);
    if (limit % 2 == 1 && a.count >= limit && b.count >= limit) order_lengths(a, b, ws);
  }
  truncate(ws.a, a.count, is_pair ? &ws.b : nullptr, b.count, limit);
  out.clear();
  apply_template(is_pair ? pair_ : single_, ws.a, is_pair ? &ws.b : nullptr, add_special_tokens,
                 with_offsets, out);
  scanned_.fetch_add(a.scanned + b.scanned, std::memory_order_relaxed);
  ws.trim();
}

}  // namespace textfleet
