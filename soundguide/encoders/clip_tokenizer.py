"""CLIP's byte-level BPE tokenizer, without importing the ``clip`` package.

``clip/__init__.py`` imports torchvision and pkg_resources (about 165 MB of
resident memory), while tokenizing needs only the vocabulary file that ships
inside the installed ``clip-anytorch`` package. :func:`tokenize` gives the
same ids as ``clip.tokenize``: the text is repaired with ftfy, HTML-unescaped
twice, whitespace-collapsed and lower-cased, split with CLIP's pattern, mapped
byte by byte to printable characters and merged by BPE rank.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch

from soundguide.core.errors import ConfigError, WeightsError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
"""Merges the released models use: 256 bytes x 2 + merges + 2 special tokens = 49408 ids."""

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_SHOWN_CHARS = 60


def vocab_path() -> Path:
    """The BPE merges file inside the installed ``clip`` package, found without importing it.

    ``find_spec`` of a top-level package locates it without running its
    ``__init__.py``.
    """
    try:
        spec = importlib.util.find_spec("clip")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise WeightsError(
        f"CLIP's BPE vocabulary {VOCAB_FILE} was not found: pip install clip-anytorch",
        hint="the clip-anytorch package ships the vocabulary file (soundguide does not import it)",
    )


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """Byte -> printable character, in the vocabulary's order.

    Printable Latin-1 bytes map to themselves and come first; every other byte
    maps, in byte order, to the characters from U+0100 on.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return table


def clean_text(text: str) -> str:
    """CLIP's normalisation: ftfy, HTML-unescape twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class CLIPTokenizer:
    """Text -> token ids of CLIP's 49408-entry vocabulary."""

    def __init__(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else vocab_path()
        try:
            with gzip.open(path) as file:
                lines = file.read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise WeightsError(
                f"cannot read CLIP's BPE vocabulary {path}: {exc}",
                hint="reinstall it: pip install --force-reinstall clip-anytorch",
            ) from None
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        self.byte_to_char = byte_alphabet()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        symbols = list(self.byte_to_char.values())
        self.tokens: list[str] = [
            *symbols,
            *(s + END_OF_WORD for s in symbols),
            *("".join(pair) for pair in merges),
            SOT,
            EOT,
        ]
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def sot_token(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self.ids[SOT]

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self.ids[EOT]

    def bpe(self, word: str) -> list[str]:
        """Symbols of one pre-token: its characters, merged lowest rank first.

        The last character carries ``</w>``. Every occurrence of the chosen
        pair is merged left to right before the next pair is chosen.
        """
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, NUM_MERGES))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without the start and end tokens."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            chars = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[symbol] for symbol in self.bpe(chars))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; each word is followed by a space (bad UTF-8 becomes U+FFFD)."""
        text = "".join(self.tokens[int(i)] for i in ids)
        data = bytes(self.char_to_byte[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


@functools.cache
def get_tokenizer() -> CLIPTokenizer:
    """The process-wide tokenizer (the vocabulary is read once)."""
    return CLIPTokenizer()


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def tokenize(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
) -> torch.Tensor:
    """Prompts -> (N, context_length) int64: start token, ids, end token, zero padding.

    The same ids as ``clip.tokenize``. A prompt longer than ``context_length``
    (start and end tokens included) raises :class:`ConfigError` naming it,
    unless ``truncate``: then it is cut and its last kept token is the end token.
    """
    tokenizer = get_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token, *tokenizer.encode(text), tokenizer.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ConfigError(
                    f"text prompt {row + 1} ({_shorten(text)!r}) is {len(ids)} tokens long; "
                    f"CLIP takes at most {context_length}, start and end tokens included",
                    hint="shorten the prompt",
                )
            ids = [*ids[: context_length - 1], tokenizer.eot_token]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
