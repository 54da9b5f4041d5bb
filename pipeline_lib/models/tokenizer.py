"""A local byte-level CLIP tokenizer, built without any download.

The vocabulary is CLIP's byte alphabet (256 symbols and their end-of-word forms) plus
the two special tokens, with no merges: every word is spelled byte by byte. That is
enough for the prompts the factory uses, and it round-trips through
``CLIPTokenizer.from_pretrained`` in a plain transformers session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map.

    transformers 5 no longer exports it, and the tokenizer's pre-tokeniser expects
    exactly this alphabet.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def byte_vocab() -> dict[str, int]:
    """Token -> id: the byte symbols, their ``</w>`` forms, then BOS and EOS."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer(max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer over :func:`byte_vocab`, padding with EOS as SD's tokenizer does."""
    # transformers takes seconds to import: only who builds a tokenizer pays for it.
    from transformers import CLIPTokenizer

    # transformers 5 ignores vocab_file/merges_file here; vocab= and merges= work.
    return CLIPTokenizer(
        vocab=byte_vocab(),
        merges=[],
        model_max_length=max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )
