"""CLIP's byte-pair-encoding tokenizer without torch, open_clip or ``regex``: what a device needs to encode a new
class name for a bundle's text graph (``edgeprompt classes BUNDLE --add NAME``).

Why our own: open_clip's tokenizer imports torch, and the device side must not; HF ``tokenizers`` would be a
second native dependency for ~80 lines of standard library. It reads the same vocabulary file open_clip ships
(``bpe_simple_vocab_16e6.txt.gz``, copied into the bundle at export) and follows the same rules, so it returns
the same ids; the tests compare the two on every world name and a set of awkward strings, and the export checks
it on the run's own class prompts.

The rules (facts of the CLIP vocabulary): text is HTML-unescaped, whitespace-collapsed and lower-cased; split into
words, single digits and runs of punctuation; each word's UTF-8 bytes map to printable characters, its last
character is marked end-of-word (``</w>``), and pairs merge by rank until no ranked pair is left. Ids are the
sequence's position in [256 byte chars, the same with ``</w>``, every merge, ``<start_of_text>``,
``<end_of_text>``]; a sequence is ``[SOT] ids [EOT]`` zero-padded (or cut, keeping EOT last) to 77.

One difference from open_clip, by design: Python's ``re`` has no ``\\p{N}``, so a non-decimal numeral ("½", "Ⅻ")
is split as a letter run instead of a numeral; open_clip also runs ``ftfy`` to repair mojibake, which a class name
typed on the device does not need.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import re

import numpy as np

from edgeprompt.errors import ArtifactError

CONTEXT_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # the merges the CLIP vocabulary uses (the file holds more)
SOT, EOT = "<start_of_text>", "<end_of_text>"
# words, single digits, runs of anything else that is not space (``[^\W\d_]`` is a letter in ``re``)
_SPLIT = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
                    re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def byte_chars() -> dict[int, str]:
    """Byte -> printable character: printable Latin-1 bytes stand for themselves, the rest for 256, 257, … in byte
    order. The dict's order is the vocabulary's: the printable bytes first, then the others."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


class ClipTokenizer:
    """Text -> (N, 77) int64 token ids, as open_clip's ``SimpleTokenizer`` makes them.

    Args:
        vocab_path: the gzipped merges file (``bpe_simple_vocab_16e6.txt.gz``).

    Raises:
        ArtifactError: the file is missing or is not a CLIP merges file.
    """

    def __init__(self, vocab_path: str | os.PathLike[str]) -> None:
        try:
            lines = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ArtifactError(f"cannot read the tokenizer vocabulary {vocab_path}: {e}") from None
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ArtifactError(f"{vocab_path} is not a CLIP BPE merges file ({len(merges)} merges, "
                                f"want {N_MERGES}): re-export the bundle")
        chars = list(byte_chars().values())
        vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 -- one tokenizer per bundle; words repeat across prompts
    def _word(self, word: str) -> tuple[int, ...]:
        chars = "".join(byte_chars()[b] for b in word.encode("utf-8"))
        parts = [*chars[:-1], chars[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:], strict=False))
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.ids[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text`` (no SOT/EOT)."""
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip().lower()
        out: list[int] = []
        for word in _SPLIT.findall(text):
            out.extend((self.ids[word],) if word in (SOT, EOT) else self._word(word))
        return out

    def __call__(self, texts: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """(N, context_length) int64: ``[SOT] ids [EOT]`` zero-padded; a long text is cut with EOT kept last."""
        rows = np.zeros((len(texts), context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][:context_length]
            ids[-1] = self.eot
            rows[i, : len(ids)] = ids
        return rows
