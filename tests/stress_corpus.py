"""A multilingual stress corpus for tokenizer parity tests (deterministic).

Each entry aims at a place where a re-implementation of HF's BERT pipeline
can go wrong: scripts with and without spaces, NFD with reordering of
combining marks, case mappings that give several chars, characters newer
than the Unicode tables of one of HF's crates, control and format chars,
every whitespace char, special tokens written in the text, word-length
limits, and texts of 100 KB.
"""

from __future__ import annotations

import random
import sys
import unicodedata

SPECIALS = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"]

SCRIPTS = [
    "北京是中华人民共和国的首都，也是全国的政治中心。",
    "東京都は日本の首都です。ひらがなとカタカナ、ｶﾀｶﾅも。",
    "한국어 텍스트를 토큰화합니다. 서울특별시",
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "اللغة العربية جميلة، أليس كذلك؟ مُحَمَّدٌ",
    "עברית נכתבת מימין לשמאל. שָׁלוֹם",
    "हिन्दी भाषा देवनागरी लिपि में लिखी जाती है। क़ ड़",
    "Η ελληνική γλώσσα έχει τόνους: ΐ ΰ ΆΈΉ ΟΔΟΣ σοφός",
    "Русский язык использует кириллицу. Ёлка, ЙОД",
    "Tiếng Việt có nhiều dấu: ặ ẫ ờ ữ Đ đ",
    "Ελληνικά, Ⅻ Ⅳ, K Å Ω, ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ, ǅ ǈ ǋ, ß ẞ",
    "İstanbul İİİ iİi ı I İ̇",
    "Ꭰꭰ Ᏸ, ᲐᲑᲒ აბგ, 𐐀𐐨, 𞤀𞤢, 𐒰𐓘, Ⰰⰰ",
    "ＡＢＣ！？（全角）　ｈｅｌｌｏ",
    "𝐀𝐁𝐂 𝔄𝔅 𝒜 ℌ ℍ ① ⑳ ² ³ ½",
    "«quotes» “curly” ‘single’ „low“ — – … · • ‹›",
    "、。「」『』【】〔〕・ー～",
    "٣٤٥ ३४५ ๓๔๕ ١٢",
    "©®™°±×÷€£¥₹ $+<=>^`|~",
    "\u1c89\ua7cb\ua7cc\ua7ce\ua7d2\U00010d50\U00010d65",
    "\u061d\u09fd\u0a76\u0c77\u0c84\u166d\u2e43\u2e4f",
    "\u07fd\u0898\u089f\u08ca\u09fe\u0c3c\u0eba\u1715",
    "\U00011938 \U00016ff0\U00016ff1 \u302e\u302f",
]

COMBINING = [
    "a\u0301\u0316",
    "e\u0323\u0302",
    "o\u031b\u0303\u0323",
    "\u00e9\u0316",
    "\u0344\u0316",
    "x\u0f73\u0f71",
    "\u0f75\u0f72",
    "q\u0307\u0323\u0307\u0323",
    "\u1e69\u0301",
    "\u0301\u0300\u0316",
    "\U0001d165\U0001d16d\U0001d16e",
    "\u0313\u0314\u0345",
    "u\u0308\u0304 \u01d6",
    "\u212b\u2126\u212a",
    "\u0958\u0959\u095a",
    "\u1100\u1161\u11a8 \u3131\u314f",
    "Z\u0335\u0336\u0337\u0338\u034f",
]

EMOJI = [
    "😀😃😄 👍🏽 👍🏿",
    "👨‍👩‍👧‍👦 👩‍💻 🧑‍🚀",
    "🇫🇷🇯🇵🇺🇸 🇦",
    "1️⃣ #️⃣ *️⃣",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "❤️ ☺︎ ✌🏻",
    "🫠🫡🫶 🪿🫎",
]

INVISIBLE = [
    "zero\u200bwidth\u200cjoin\u200dner",
    "\ufeffbom at start",
    "word\u2060joiner\u00adsoft\u00adhyphen",
    "bidi \u202aembed\u202c \u202eoverride\u202c \u2066iso\u2069 \u200e\u200f",
    "\u180emongolian\u180e",
    "var\ufe0fsel\ufe00 \U000e0100",
    "tag\U000e0041\U000e0042",
    "replacement \ufffd char \ufffd\ufffd",
    "private \ue000\uf8ff \U000f0000 \U0010fffd",
    "unassigned \u0378\u0379 \U0002fffe \U0010ffff",
    "nonchars \ufdd0\ufffe\uffff",
]

CONTROLS = [
    "nul\x00in\x00middle",
    "".join(chr(c) for c in range(32)) + "after",
    "del\x7fchar",
    "c1" + "".join(chr(c) for c in range(0x80, 0xA0)) + "end",
    "tab\there\nnew\rline\x0bvt\x0cff\x1cfs\x1dgs\x1ers\x1fus",
]

SPECIAL_TEXTS = [
    "[CLS] hello [SEP] world [MASK]",
    "[CLS][SEP][MASK][PAD][UNK]",
    "x[MASK]y [[CLS]] [cls] [Mask] [MASK [ MASK ]",
    "[UNK]unknown[UNK]",
    "ＭＡＳＫ [MASK]\u0301 é[SEP]é",
    "[CLS]",
    " [SEP] ",
]

EDGE = [
    "",
    " ",
    "\t\n ",
    "\x00",
    "\ufffd",
    ".",
    "a",
    "...!!!???",
    "don't won't y'all",
    "hello_world foo-bar a.b.c 3.14159 1,000,000",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "def f(x): return x**2  # comment",
]


def whitespace_chars() -> list[str]:
    """Every char Python or Rust counts as whitespace, plus a few that are not."""
    chars = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    return chars + ["\u180e", "\u200b", "\u2060", "\ufeff"]


def long_words() -> list[str]:
    """Words around max_input_chars_per_word (100) before and after normalization."""
    return [
        "a" * 99,
        "a" * 100,
        "a" * 101,
        "supercalifragilistic" * 5,
        "supercalifragilistic" * 5 + "x",
        "é" * 100,
        "e\u0301" * 50,
        "e\u0301" * 51,
        "한" * 34,
        "한" * 40,
        "İ" * 60,
        "x" * 5000,
        "ab" * 60 + " short " + "cd" * 30,
        "\u00df" * 101,
    ]


def big_texts(rng: random.Random) -> list[str]:
    """Texts of about 100 KB: mixed scripts, one ASCII, one single word."""
    pool = SCRIPTS + COMBINING + EMOJI + INVISIBLE + SPECIAL_TEXTS + EDGE
    mixed = " ".join(rng.choice(pool) for _ in range(4000))[:100_000]
    ascii_text = " ".join(rng.choice(EDGE[7:]) for _ in range(5000))[:100_000]
    return [mixed, ascii_text, "x" * 100_000, "é" * 50_000]


def random_mixes(rng: random.Random, n: int) -> list[str]:
    """Random strings over the interesting characters above, and random code points."""
    alphabet = sorted(set("".join(SCRIPTS + COMBINING + EMOJI + INVISIBLE + CONTROLS)))
    alphabet += whitespace_chars() + list("abcXYZ019 .,[]#")
    out = []
    for _ in range(n):
        k = rng.randint(1, 80)
        chars = [rng.choice(alphabet) for _ in range(k)]
        if rng.random() < 0.3:
            chars.insert(rng.randint(0, k), rng.choice(SPECIALS))
        if rng.random() < 0.3:
            cp = rng.randint(0x80, sys.maxunicode)
            if not 0xD800 <= cp < 0xE000:
                chars.insert(rng.randint(0, k), chr(cp))
        out.append("".join(chars))
    return out


def build_stress_corpus(seed: int = 1234) -> list[str]:
    """The whole corpus; the same list on every call with the same seed."""
    rng = random.Random(seed)
    corpus: list[str] = []
    corpus += SCRIPTS + COMBINING + EMOJI + INVISIBLE + CONTROLS + SPECIAL_TEXTS + EDGE
    corpus += [f"a{w}b {w} {w}{w}" for w in whitespace_chars()]
    corpus += long_words()
    # Decomposed and composed forms of every script line.
    for form in ("NFD", "NFKD", "NFC"):
        corpus += [unicodedata.normalize(form, s) for s in SCRIPTS + COMBINING]
    corpus += [s.upper() for s in SCRIPTS] + [s.swapcase() for s in SCRIPTS]
    corpus += random_mixes(rng, 600)
    corpus += big_texts(rng)
    return corpus


def build_pairs(corpus: list[str], seed: int = 99) -> list[tuple[str, str]]:
    """Pairs of corpus texts of very different lengths (for longest-first truncation)."""
    rng = random.Random(seed)
    short = [t for t in corpus if len(t) < 2000]
    return [(rng.choice(short), rng.choice(short)) for _ in range(400)]
