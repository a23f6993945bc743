"""The texts a quantization is calibrated and checked on.

Two committed samples (``models/samples/``): ``workload.jsonl``, 200 texts of
the benchmark workload (Python docstrings: short sentences, paragraphs, a few
long documents) drawn from past its first 2,000 texts, which the benchmarks
time; and ``multilingual.jsonl``, short UI strings and sentences in many
scripts, where a quantized MiniLM drifted furthest from fp32 (cosine 0.96).

Each sample is split by position, even lines for calibration (static scales,
sensitivity ranking) and odd lines for the check, so that the figures are
never measured on the texts the scales were fitted to. A user's own texts
(``--check-texts FILE``) replace the committed ones, split the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"
COMMITTED = ("workload.jsonl", "multilingual.jsonl")


def read_texts(path: str | Path) -> list[str]:
    """One text per line; a line that is a JSON object gives its ``text`` field."""
    path = Path(path)
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                line = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: a JSON line must be an object with 'text'") from None
        texts.append(line)
    if len(texts) < 2:
        raise ValueError(f"{path}: needs at least 2 texts (one to calibrate, one to check)")
    return texts


def sample_texts(files: list[str | Path] | None = None) -> tuple[list[str], list[str], str]:
    """(calibration texts, check texts, description) from ``files`` (default: committed)."""
    paths = [Path(f) for f in files] if files else [SAMPLES / name for name in COMMITTED]
    calibration, check = [], []
    for path in paths:
        texts = read_texts(path)
        calibration += texts[0::2]
        check += texts[1::2]
    described = " + ".join(p.name if not files else str(p) for p in paths)
    return calibration, check, described


def text_pairs(texts: list[str]) -> list[tuple[str, str]]:
    """Pairs for a pair scorer: a text's first words as the query, against the whole text
    (relevant) and against the next text (mostly not), so scores spread over a range."""
    pairs = []
    for i, text in enumerate(texts):
        query = " ".join(text.split()[:8]) or text
        pairs.append((query, text))
        pairs.append((query, texts[(i + 1) % len(texts)]))
    return pairs
