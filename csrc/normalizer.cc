#include "normalizer.h"

#include "unicode_tables.h"
#include "utf8.h"

namespace textfleet {

using unicode::char_info;
using unicode::CharInfo;
using unicode::kPool;

namespace {

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Hangul syllables decompose algorithmically (the crate HF uses does the same).
size_t hangul_nfd(uint32_t cp, uint32_t* out) {
  const uint32_t s = cp - unicode::kHangulFirst;
  out[0] = 0x1100 + s / 588;
  out[1] = 0x1161 + (s % 588) / 28;
  const uint32_t tail = s % 28;
  if (tail == 0) return 2;
  out[2] = 0x11A7 + tail;
  return 3;
}

}  // namespace

// State of one BertNormalizer::run call. The stages mirror HF's successive
// NormalizedString transforms; they are chained per char instead of per
// string, which gives the same result because every stage but NFD is
// context-free and NFD only looks at runs of non-starters.
class NormalizeRun {
 public:
  using Align = PreTokenized::Align;

  NormalizeRun(const BertNormalizer& n, PreTokenized& out, uint32_t char_base)
      : opt_(n.options_), n_(n), out_(out), word_begin_(out.bytes.size()),
        last_(Align{char_base, char_base}) {}

  void ascii(uint8_t b, uint32_t idx) {
    const auto action = n_.ascii_action_[b];
    if (action == BertNormalizer::kDrop) return;  // gone before NFD sees it
    if (!out_.pending.empty()) flush();            // an ASCII char is a starter
    last_ = Align{idx, idx + 1};
    switch (action) {
      case BertNormalizer::kDrop:
        break;
      case BertNormalizer::kSplit:
        end_word();
        break;
      case BertNormalizer::kIsolate:
        end_word();
        push_byte(n_.ascii_byte_[b], Align{idx, idx + 1});
        end_word();
        break;
      case BertNormalizer::kKeep:
        push_byte(n_.ascii_byte_[b], Align{idx, idx + 1});
        break;
    }
  }

  // clean_text, then handle_chinese_chars, of one original char.
  void feed(uint32_t cp, uint32_t idx) {
    const Align a{idx, idx + 1};
    uint8_t flags = char_info(cp).flags;
    if (opt_.clean_text) {
      if (flags & unicode::kRemoved) return;
      if (flags & unicode::kWhitespace) {
        cp = ' ';
        flags = 0;
      }
    }
    if (opt_.handle_chinese_chars && (flags & unicode::kChinese)) {
      nfd(' ', a);
      nfd(cp, a);
      nfd(' ', a);
    } else {
      nfd(cp, a);
    }
  }

  void finish() {
    flush();
    end_word();
  }

 private:
  // strip_accents, part 1: NFD. Non-starters are held until the next
  // starter, then stably sorted by combining class. HF assigns alignments
  // by position, not by char: the k-th output char that starts a
  // decomposition takes the alignment of the k-th input char, and the other
  // chars of a decomposition take the one before (transform_range).
  void nfd(uint32_t cp, Align a) {
    if (!opt_.strip_accents) return lower(cp, a);
    uint32_t buf[3];
    const uint32_t* d = &cp;
    size_t k = 1;
    if (cp >= unicode::kHangulFirst && cp <= unicode::kHangulLast) {
      k = hangul_nfd(cp, buf);
      d = buf;
    } else if (const CharInfo& ci = char_info(cp); ci.nfd_len != 0) {
      d = kPool + ci.nfd_off;
      k = ci.nfd_len;
    } else if (ci.ccc == 0 && out_.pending.empty()) {
      last_ = a;  // fast path: a starter with nothing to reorder
      return drop_marks(cp, a);
    }
    if (out_.pending.empty()) {  // then every earlier input char was consumed
      out_.queue.clear();
      queue_head_ = 0;
    }
    out_.queue.push_back(a);
    for (size_t j = 0; j < k; ++j) {
      const uint8_t ccc = char_info(d[j]).ccc;
      if (ccc == 0) {
        flush();
        emit_nfd(d[j], j > 0);
      } else {
        out_.pending.push_back({d[j], ccc, j > 0});
      }
    }
  }

  void flush() {
    auto& p = out_.pending;
    // Stable insertion sort by combining class: runs are a few chars long.
    for (size_t i = 1; i < p.size(); ++i) {
      const PreTokenized::Pending x = p[i];
      size_t j = i;
      for (; j > 0 && p[j - 1].ccc > x.ccc; --j) p[j] = p[j - 1];
      p[j] = x;
    }
    for (const auto& x : p) emit_nfd(x.cp, x.inserted);
    p.clear();
  }

  void emit_nfd(uint32_t cp, bool inserted) {
    if (!inserted && queue_head_ < out_.queue.size()) last_ = out_.queue[queue_head_++];
    drop_marks(cp, last_);
  }

  // strip_accents, part 2: drop nonspacing marks.
  void drop_marks(uint32_t cp, Align a) {
    if (char_info(cp).flags & unicode::kMn) return;
    lower(cp, a);
  }

  void lower(uint32_t cp, Align a) {
    if (opt_.lowercase) {
      const CharInfo& ci = char_info(cp);
      if (ci.lower_len != 0) {
        for (size_t i = 0; i < ci.lower_len; ++i) pre_tokenize(kPool[ci.lower_off + i], a);
        return;
      }
    }
    pre_tokenize(cp, a);
  }

  // BertPreTokenizer: whitespace ends a word, punctuation is a word alone.
  void pre_tokenize(uint32_t cp, Align a) {
    const uint8_t flags = char_info(cp).flags;
    if (flags & unicode::kWhitespace) return end_word();
    if (flags & unicode::kPunct) end_word();
    const size_t before = out_.bytes.size();
    append_utf8(out_.bytes, cp);
    out_.align.insert(out_.align.end(), out_.bytes.size() - before, a);
    ++nchars_;
    if (flags & unicode::kPunct) end_word();
  }

  void push_byte(uint8_t b, Align a) {
    out_.bytes.push_back(static_cast<char>(b));
    out_.align.push_back(a);
    ++nchars_;
  }

  void end_word() {
    const auto end = static_cast<uint32_t>(out_.bytes.size());
    if (end != word_begin_) out_.words.push_back({word_begin_, end, nchars_});
    word_begin_ = end;
    nchars_ = 0;
  }

  const NormalizerOptions& opt_;
  const BertNormalizer& n_;
  PreTokenized& out_;
  uint32_t word_begin_;
  uint32_t nchars_ = 0;
  size_t queue_head_ = 0;
  Align last_;  // alignment of the last input char NFD consumed
};

BertNormalizer::BertNormalizer(NormalizerOptions options) : options_(options) {
  // ASCII chars are NFD-stable starters and never CJK: their whole pipeline
  // collapses into one action per byte.
  for (uint32_t b = 0; b < 128; ++b) {
    uint32_t cp = b;
    const uint8_t flags = char_info(cp).flags;
    ascii_byte_[b] = static_cast<uint8_t>(b);
    if (options_.clean_text && (flags & unicode::kRemoved)) {
      ascii_action_[b] = kDrop;
      continue;
    }
    if (options_.clean_text && (flags & unicode::kWhitespace)) cp = ' ';
    if (options_.lowercase && cp >= 'A' && cp <= 'Z') cp += 'a' - 'A';
    const uint8_t final_flags = char_info(cp).flags;
    ascii_byte_[b] = static_cast<uint8_t>(cp);
    ascii_action_[b] = (final_flags & unicode::kWhitespace) ? kSplit
                       : (final_flags & unicode::kPunct)    ? kIsolate
                                                            : kKeep;
  }
}

uint32_t BertNormalizer::run(std::string_view text, uint32_t char_base, PreTokenized& out) const {
  out.pending.clear();
  out.queue.clear();
  NormalizeRun run(*this, out, char_base);
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const uint8_t* end = p + text.size();
  uint32_t idx = char_base;
  while (p < end) {
    if (*p < 0x80) {
      run.ascii(*p++, idx++);
      continue;
    }
    size_t len;
    const uint32_t cp = utf8::decode(p, end, &len);
    p += len;
    run.feed(cp, idx++);
  }
  run.finish();
  return idx - char_base;
}

// A non-ASCII char before which run() may be cut: its own processing starts
// with a starter that ends the word (flushing any NFD run before it), and it
// is not changed by NFD or lowercasing, so nothing after it depends on what
// came before. Chars clean_text drops are no cut: they flush nothing.
bool BertNormalizer::cuts_before(uint32_t cp) const {
  const CharInfo& ci = char_info(cp);
  if (options_.clean_text) {
    if (ci.flags & unicode::kRemoved) return false;
    if (ci.flags & unicode::kWhitespace) return true;  // becomes ' '
  }
  if (options_.handle_chinese_chars && (ci.flags & unicode::kChinese)) return true;  // ' ' first
  if (!(ci.flags & (unicode::kWhitespace | unicode::kPunct))) return false;
  if (options_.strip_accents) {
    const bool hangul = cp >= unicode::kHangulFirst && cp <= unicode::kHangulLast;
    if (hangul || ci.nfd_len != 0 || ci.ccc != 0 || (ci.flags & unicode::kMn)) return false;
  }
  return !(options_.lowercase && ci.lower_len != 0);
}

size_t BertNormalizer::next_cut(std::string_view text, size_t from) const {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const uint8_t* end = p + text.size();
  // Every byte that is not a UTF-8 continuation byte starts a char as
  // utf8::decode reads the text (it takes one byte, or a lead byte and its
  // continuation bytes), so the scan needs no decoding from the start.
  for (const uint8_t* q = p + from; q < end; ++q) {
    if (*q < 0x80) {
      const auto action = ascii_action_[*q];
      if (action == kSplit || action == kIsolate) return static_cast<size_t>(q - p);
    } else if (!utf8::continuation(*q)) {
      size_t len;
      if (cuts_before(utf8::decode(q, end, &len))) return static_cast<size_t>(q - p);
    }
  }
  return text.size();
}

}  // namespace textfleet
