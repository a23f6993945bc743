"""Generate csrc/unicode_tables.{h,cc}: the per-code-point data of the native BERT tokenizer.

Why probing, not only the Unicode database
------------------------------------------
Hugging Face ``tokenizers`` (the reference we must equal) does not use one
Unicode version. Its BERT normalizer and pre-tokenizer combine three sources:

- the ``unicode_categories`` crate (``is_other`` = Cc/Cf/Cn/Co/Cs for
  clean_text, ``is_punctuation`` = P* for the pre-tokenizer, and
  ``is_mark_nonspacing`` = Mn for strip_accents): an old Unicode version,
  and (the probes show) no data for Cn, so a character newer than the crate
  is in none of these categories: clean_text keeps it, the pre-tokenizer
  does not isolate it, strip_accents does not drop it;
- the ``unicode-normalization-alignments`` crate for NFD (decompositions and
  canonical combining classes): also old, so recent characters do not
  decompose and count as starters;
- Rust ``std`` for ``char::is_whitespace`` and ``char::to_lowercase``: the
  Unicode version of the Rust compiler that built the wheel (recent).

Python's ``unicodedata`` is yet another version. So this script starts from
``unicodedata`` (the data source), then probes the installed ``tokenizers``
over every code point (surrogates excepted: they cannot be in UTF-8 input)
and records where HF's behaviour differs; the tables hold HF's behaviour.
The probes, per code point ``c``:

- removed / whitespace: ``BertNormalizer(clean_text=True, rest off)`` maps
  ``c`` to "" (removed: NUL, U+FFFD, ``is_other``) or " " (whitespace);
- whitespace / punctuation: ``BertPreTokenizer`` on "a" + c + "a" gives two
  pieces (c is ``char::is_whitespace``) or three (c is BERT punctuation);
- chinese: ``BertNormalizer(handle_chinese_chars=True, rest off)`` pads c;
- NFD: ``normalizers.NFD()`` of c (the full decomposition);
- Mn: ``BertNormalizer(strip_accents=True, rest off)`` removes an
  NFD-stable c entirely;
- combining class: for an NFD-stable c with a non-zero class in
  ``unicodedata``, whether HF's NFD reorders it against U+0334 (class 1) or
  U+0301 (class 230). Classes never change once assigned (Unicode stability
  policy), so HF's class is either Python's or 0 (character unknown to the
  crate); the probe tells which;
- lowercase: ``normalizers.Lowercase()`` of c (may give several chars).

What the probes found (tokenizers 0.23.3 against unicodedata 14.0; the
generated .cc lists the exact ranges):

- removed: the crate has no data for Cn, so unassigned code points are kept
  (not removed, as HF's comment suggests); 13 Cf chars newer than the crate
  (U+0890, U+0891, U+08E2, U+110CD, U+13430-13438) are kept too;
- whitespace: U+001C-001F are whitespace to Python but not to Rust (they
  are Cc, so clean_text removes them);
- punct: 106 P* chars newer than the crate are not isolated;
- Mn / combining class / NFD: chars newer than the crate are not stripped,
  are starters, and U+11938 does not decompose;
- lowercase: Rust knows 55 case pairs newer than Python 3.11's Unicode 14
  (U+1C89, U+A7CB, U+10D50, ...).

Hangul syllables are decomposed algorithmically in C++ (as the crate does);
the script checks HF agrees for all 11,172 of them. The generated .cc lists,
in its header comment, how many code points differ from ``unicodedata`` per
property and the first ranges, with the versions used. Run it again with the
same Python and ``tokenizers`` versions and the output is identical;
``--check`` fails if the committed tables differ from what the installed
versions give (the line naming the versions is not compared).

Layout: a two-stage table (block index per ``1 << SHIFT`` code points, then a
uint16 record index per code point, blocks deduplicated) into an array of
8-byte records {flags, ccc, nfd_len, lower_len, nfd_off, lower_off}, plus one
pool of code points for decompositions and lowercase mappings.
"""

from __future__ import annotations

import argparse
import string
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_H = ROOT / "csrc" / "unicode_tables.h"
OUT_CC = ROOT / "csrc" / "unicode_tables.cc"

MAX_CP = 0x110000
SURROGATES = range(0xD800, 0xE000)
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3

F_REMOVED, F_WHITESPACE, F_PUNCT, F_MN, F_CHINESE = 1, 2, 4, 8, 16
FLAG_NAMES = {
    F_REMOVED: "removed",
    F_WHITESPACE: "whitespace",
    F_PUNCT: "punct",
    F_MN: "mn",
    F_CHINESE: "chinese",
}
# BERT's "chinese character" ranges (the baseline the chinese probe checks).
CJK_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
]


def python_baseline(c: int) -> dict:
    """What unicodedata (Python's Unicode version) says about code point c."""
    ch = chr(c)
    cat = unicodedata.category(ch)
    flags = 0
    if c in (0, 0xFFFD) or (cat in ("Cc", "Cf", "Cn", "Co", "Cs") and ch not in "\t\n\r"):
        flags |= F_REMOVED
    if ch.isspace():
        flags |= F_WHITESPACE
    if cat.startswith("P") or (c < 128 and ch in string.punctuation):
        flags |= F_PUNCT
    if cat == "Mn":
        flags |= F_MN
    if any(lo <= c <= hi for lo, hi in CJK_RANGES):
        flags |= F_CHINESE
    return {
        "flags": flags,
        "ccc": unicodedata.combining(ch),
        "nfd": unicodedata.normalize("NFD", ch),
        "lower": ch.lower(),
    }


class Probe:
    """Asks the installed ``tokenizers`` how it treats one code point."""

    def __init__(self):
        from tokenizers import normalizers as n
        from tokenizers import pre_tokenizers as p

        def bert(**kw):
            opts = dict(clean_text=False, handle_chinese_chars=False)
            opts.update(strip_accents=False, lowercase=False)
            opts.update(kw)
            return n.BertNormalizer(**opts)

        self.clean = bert(clean_text=True)
        self.chinese = bert(handle_chinese_chars=True)
        self.strip = bert(strip_accents=True)
        self.nfd = n.NFD()
        self.lower = n.Lowercase()
        self.pre = p.BertPreTokenizer()

    def flags(self, ch: str) -> int:
        flags = 0
        cleaned = self.clean.normalize_str(ch)
        if cleaned == "":
            flags |= F_REMOVED
        elif cleaned == " " and ch != " ":
            flags |= F_WHITESPACE
        else:
            assert cleaned == ch, (hex(ord(ch)), cleaned)
        pieces = [s for s, _ in self.pre.pre_tokenize_str("a" + ch + "a")]
        if len(pieces) == 2:
            flags |= F_WHITESPACE
        elif len(pieces) == 3:
            assert pieces[1] == ch
            flags |= F_PUNCT
        if self.chinese.normalize_str(ch) == " " + ch + " ":
            flags |= F_CHINESE
        return flags

    def is_mn(self, ch: str) -> bool:
        """Only meaningful for an NFD-stable ch: strip_accents tests the chars NFD outputs."""
        return self.strip.normalize_str(ch) == ""

    def ccc(self, ch: str, py_ccc: int) -> int:
        """HF's combining class of an NFD-stable ch: Python's, or 0 if unknown to the crate."""
        if py_ccc == 0:
            return 0
        if py_ccc > 1:
            known = self.nfd.normalize_str(ch + "\u0334") == "\u0334" + ch
        else:
            known = self.nfd.normalize_str("\u0301" + ch) == ch + "\u0301"
        return py_ccc if known else 0


def hangul_nfd(c: int) -> str:
    s = c - HANGUL_FIRST
    lead, vowel, tail = 0x1100 + s // 588, 0x1161 + (s % 588) // 28, 0x11A7 + s % 28
    return chr(lead) + chr(vowel) + (chr(tail) if tail != 0x11A7 else "")


def collect() -> tuple[list[dict], dict]:
    """HF's properties for every code point, and where they differ from Python's."""
    probe = Probe()
    props: list[dict] = []
    diffs: dict[str, list[int]] = {}
    for c in range(MAX_CP):
        base = python_baseline(c)
        if c in SURROGATES:  # never in valid UTF-8: keep Python's view, unused
            props.append(base)
            continue
        ch = chr(c)
        nfd = probe.nfd.normalize_str(ch)
        flags = probe.flags(ch)
        if nfd != ch:  # never tested by strip_accents (NFD replaced it): keep Python's view
            flags |= base["flags"] & F_MN
        elif probe.is_mn(ch):
            flags |= F_MN
        hf = {
            "flags": flags,
            "nfd": nfd,
            "lower": probe.lower.normalize_str(ch),
            "ccc": probe.ccc(ch, base["ccc"]) if nfd == ch else 0,
        }
        if HANGUL_FIRST <= c <= HANGUL_LAST:
            assert nfd == hangul_nfd(c), hex(c)
        for key in ("nfd", "lower"):
            if hf[key] != base[key]:
                diffs.setdefault(key, []).append(c)
        if hf["ccc"] != base["ccc"] and nfd == ch:
            diffs.setdefault("ccc", []).append(c)
        for bit, name in FLAG_NAMES.items():
            if (hf["flags"] ^ base["flags"]) & bit:
                diffs.setdefault(name, []).append(c)
        props.append(hf)
    check_strip_accents(probe, props)
    return props, diffs


def check_strip_accents(probe: Probe, props: list[dict]) -> None:
    """strip_accents = NFD then drop Mn; the tables must reproduce it for every code point."""
    for c in range(MAX_CP):
        if c in SURROGATES:
            continue
        want = probe.strip.normalize_str(chr(c))
        got = "".join(x for x in props[c]["nfd"] if not props[ord(x)]["flags"] & F_MN)
        assert got == want, (hex(c), got, want)


def ranges(cps: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def build_tables(props: list[dict]):
    """Records, pool, and the two-stage index, with the block size that is smallest."""
    pool: list[int] = []
    pool_index: dict[str, int] = {}

    def intern(s: str, identity: str) -> tuple[int, int]:
        if s == identity:
            return 0, 0
        if s not in pool_index:
            pool_index[s] = len(pool)
            pool.extend(ord(x) for x in s)
        return pool_index[s], len(s)

    records: list[tuple] = []
    record_index: dict[tuple, int] = {}
    per_cp: list[int] = []
    for c, p in enumerate(props):
        ch = chr(c)
        hangul = HANGUL_FIRST <= c <= HANGUL_LAST
        nfd_off, nfd_len = (0, 0) if hangul else intern(p["nfd"], ch)
        low_off, low_len = intern(p["lower"], ch)
        rec = (p["flags"], p["ccc"], nfd_len, low_len, nfd_off, low_off)
        if rec not in record_index:
            record_index[rec] = len(records)
            records.append(rec)
        per_cp.append(record_index[rec])
    assert len(pool) < 1 << 16 and len(records) < 1 << 16
    best = None
    for shift in range(5, 11):
        blocks: list[tuple] = []
        block_index: dict[tuple, int] = {}
        stage1 = []
        for start in range(0, MAX_CP, 1 << shift):
            blk = tuple(per_cp[start : start + (1 << shift)])
            if blk not in block_index:
                block_index[blk] = len(blocks)
                blocks.append(blk)
            stage1.append(block_index[blk])
        size = len(stage1) * 2 + len(blocks) * (1 << shift) * 2
        if best is None or size < best[0]:
            best = (size, shift, stage1, blocks)
    _, shift, stage1, blocks = best
    assert len(blocks) < 1 << 16
    return records, pool, shift, stage1, blocks


def fmt_array(values, per_line: int = 16) -> str:
    vals = list(values)
    lines = []
    for i in range(0, len(vals), per_line):
        lines.append("    " + ", ".join(str(v) for v in vals[i : i + per_line]) + ",")
    return "\n".join(lines)


def describe_diffs(diffs: dict) -> str:
    lines = []
    for key in sorted(diffs):
        rs = ranges(diffs[key])
        shown = ", ".join(f"{a:04X}" if a == b else f"{a:04X}-{b:04X}" for a, b in rs[:8])
        more = f" (+{len(rs) - 8} more ranges)" if len(rs) > 8 else ""
        lines.append(f"//   {key}: {len(diffs[key])} code points: {shown}{more}")
    return "\n".join(lines) if lines else "//   (none)"


HEADER = """// GENERATED by scripts/gen_unicode_tables.py -- do not edit.
// Per-code-point data of the BERT normalizer and pre-tokenizer, as Hugging
// Face tokenizers behaves (see the generator's docstring for why and how).
#pragma once

#include <cstdint>

namespace textfleet::unicode {

enum CharFlag : uint8_t {
  kRemoved = 1,     // clean_text drops it (NUL, U+FFFD, "other" categories)
  kWhitespace = 2,  // char::is_whitespace (clean_text maps it to ' ')
  kPunct = 4,       // BERT punctuation: isolated by the pre-tokenizer
  kMn = 8,          // nonspacing mark: strip_accents drops it after NFD
  kChinese = 16,    // CJK ideograph: handle_chinese_chars pads it with spaces
};

struct CharInfo {
  uint8_t flags;
  uint8_t ccc;        // canonical combining class used by NFD reordering
  uint8_t nfd_len;    // 0: NFD-stable (Hangul syllables are done in code)
  uint8_t lower_len;  // 0: lowercase is the char itself
  uint16_t nfd_off;   // into kPool
  uint16_t lower_off;
};

inline constexpr int kShift = {shift};
extern const uint16_t kStage1[];
extern const uint16_t kStage2[];
extern const CharInfo kRecords[];
extern const uint32_t kPool[];

inline const CharInfo& char_info(uint32_t cp) {
  if (cp >= 0x110000) cp = 0xFFFD;
  const uint32_t block = kStage1[cp >> kShift];
  return kRecords[kStage2[(block << kShift) | (cp & ((1u << kShift) - 1))]];
}

inline constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

}  // namespace textfleet::unicode
"""


def render(props: list[dict], diffs: dict) -> tuple[str, str]:
    import tokenizers

    records, pool, shift, stage1, blocks = build_tables(props)
    header = HEADER.replace("{shift}", str(shift))
    stage2 = [v for blk in blocks for v in blk]
    recs = "\n".join("    {" + ", ".join(map(str, r)) + "}," for r in records)
    body = f"""// GENERATED by scripts/gen_unicode_tables.py -- do not edit.
{PROBED}tokenizers {tokenizers.__version__}, Python unicodedata {unicodedata.unidata_version}
// Code points where HF differs from the unicodedata baseline:
{describe_diffs(diffs)}
#include "unicode_tables.h"

namespace textfleet::unicode {{

const uint16_t kStage1[] = {{
{fmt_array(stage1)}
}};

const uint16_t kStage2[] = {{
{fmt_array(stage2)}
}};

const CharInfo kRecords[] = {{
{recs}
}};

const uint32_t kPool[] = {{
{fmt_array(pool, 12)}
}};

}}  // namespace textfleet::unicode
"""
    return header, body


PROBED = "// Probed with: "


def same(text: str) -> str:
    return "\n".join(x for x in text.splitlines() if not x.startswith(PROBED))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = ap.parse_args()
    props, diffs = collect()
    header, body = render(props, diffs)
    if args.check:
        # The data must match; the line naming the versions may differ.
        stale = [p for p, t in ((OUT_H, header), (OUT_CC, body)) if same(p.read_text()) != same(t)]
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}; rerun {Path(__file__).name}", file=sys.stderr)
        return 1 if stale else 0
    OUT_H.write_text(header)
    OUT_CC.write_text(body)
    print(f"wrote {OUT_H.relative_to(ROOT)}, {OUT_CC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
