"""Type stubs of the compiled extension ``engine._native`` (csrc/bind_*.cc)."""

from collections.abc import Sequence

import numpy as np

class Encoding:
    """One encoded text or pair (padding off); lists are built on access."""

    @property
    def ids(self) -> list[int]: ...
    @property
    def type_ids(self) -> list[int]: ...
    @property
    def attention_mask(self) -> list[int]: ...
    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(start, end) code point offsets into the input; (0, 0) for special tokens."""
    def __len__(self) -> int: ...

class Tokenized:
    """Token sequences held natively, padded on demand."""

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: tokens per sequence."""
    def __len__(self) -> int: ...
    def collate(
        self, indices: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids), int64 [rows, longest of rows]."""

TemplatePiece = tuple[str, list[int], int]

class WordPieceTokenizer:
    """BERT WordPiece tokenizer equal to HF tokenizers (built by engine/native_tokenizer.py)."""

    def __init__(
        self,
        *,
        vocab: list[tuple[str, int]],
        unk_id: int,
        continuing_subword_prefix: str,
        max_input_chars_per_word: int,
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: bool,
        lowercase: bool,
        added_tokens: list[tuple[str, int]],
        single: list[TemplatePiece],
        pair: list[TemplatePiece],
        max_length: int,
        pad_id: int,
        num_threads: int,
    ) -> None: ...
    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True
    ) -> Encoding: ...
    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
    ) -> list[Encoding]: ...
    def tokenize(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
    ) -> Tokenized: ...
    @property
    def max_length(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def num_threads(self) -> int: ...
