"""Documents -> chunks: paragraphs grouped up to a token budget, at most a few chunks per document.

Follows the released `group_paragraphs_by_tokens`: paragraphs (split at blank
lines) are appended to the current chunk while it stays within `max_tokens`; a
finished chunk is kept only if it holds at least `min_tokens`. A paragraph longer
than `max_tokens` on its own never forms a chunk. Then at most `max_chunks` of a
document's chunks are sampled (paper: <= 4 per document).
"""

import re
from typing import Callable, Sequence

import numpy as np


def split_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\n+", text) if p.strip()]


def group_paragraphs(paragraphs: Sequence[str], count_tokens: Callable[[str], int], *, max_tokens: int,
                     min_tokens: int = 0, joiner: str = "\n\n") -> list[str]:
    """Greedy grouping of consecutive paragraphs into chunks of [min_tokens, max_tokens] tokens."""
    if max_tokens < 1 or min_tokens > max_tokens:
        raise ValueError(f"chunking needs 0 <= min_tokens <= max_tokens, max_tokens >= 1; got "
                         f"min_tokens={min_tokens}, max_tokens={max_tokens}")
    chunks, current, length = [], [], 0
    for p in paragraphs:
        n = count_tokens(p)
        if length + n <= max_tokens:
            current.append(p)
            length += n
            continue
        if current and min_tokens <= length <= max_tokens:
            chunks.append(joiner.join(current))
        current, length = [p], n
    if current and min_tokens <= length <= max_tokens:
        chunks.append(joiner.join(current))
    return chunks


def select_chunks(rng: np.random.Generator, chunks: Sequence[str], max_chunks: int) -> list[tuple[int, str]]:
    """Up to max_chunks (index, chunk) pairs sampled without replacement, in document order."""
    if len(chunks) <= max_chunks:
        return list(enumerate(chunks))
    picked = sorted(rng.choice(len(chunks), max_chunks, replace=False).tolist())
    return [(i, chunks[i]) for i in picked]


def chunk_document(text: str, count_tokens: Callable[[str], int], rng: np.random.Generator, *, max_tokens: int,
                   min_tokens: int, max_chunks: int) -> list[tuple[int, str]]:
    """A document's selected chunks as (chunk index, text)."""
    return select_chunks(rng, group_paragraphs(split_paragraphs(text), count_tokens, max_tokens=max_tokens,
                                               min_tokens=min_tokens), max_chunks)
