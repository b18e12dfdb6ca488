"""Filters for generated answers: refused (censored) and repetitive answers are dropped.

The released pipeline (`format_tokenize.py::filter_censored_responses`) drops a
turn when either answer contains a censored phrase, is shorter than 10
characters, or is periodic by its KMP check. We keep those rules (phrases and
minimum length configurable) and add two degeneration checks that a greedy or
sampled small model needs: a word n-gram repeated back to back
(`min_repeats` times), and an answer cut off at the token limit (no stop token).
"""

import dataclasses
from typing import Sequence

# The released list (format_tokenize.py), plus the tiny task's refusal ("Sorry").
CENSORED_PHRASES = (
    "can't assist", "content is not available", "As an AI assistant", "I am unable to provide", "Sorry",
    "That topic is outside my scope", "My guidelines prevent me from addressing", "I can't help",
    "I am not sure how to get that information", "I'm unable to", "I can't fulfill this request",
    "I don't have the capability to provide", "This topic is restricted", "I cannot discuss this subject",
    "This information is not accessible", "I'm not permitted to provide", "I have no data on this issue",
    "My training data does not cover this", "Access to this information is restricted",
    "This query is beyond my capabilities", "This goes beyond my operational boundaries",
    "I cannot support this inquiry", "I'm programmed not to respond to this", "This matter is beyond my scope",
    "My responses are limited on this topic", "I have no input on that", "My algorithm restricts me from answering",
    "This falls outside my answer scope", "I don't cover that area", "I can't engage with this subject matter",
    "I'm not the right resource for that information", "This content is beyond my purview",
    "I don't handle this type of query", "My training limits me from assisting on this",
    "This issue is beyond my functionality", "I am restricted from providing insights on this",
)


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    censored_phrases: tuple[str, ...] = CENSORED_PHRASES
    min_chars: int = 10  # released: len(answer) > 10
    kmp_repeats: int = 3  # released check_repetitions_kmp threshold
    ngram_repeats: int = 3  # a word n-gram (n <= max_ngram) repeated this many times in a row
    max_ngram: int = 8
    drop_truncated: bool = True  # answers that hit max_new_tokens without a stop token


def is_refused(text: str, phrases: Sequence[str] = CENSORED_PHRASES) -> bool:
    low = text.lower()
    return any(p.lower() in low for p in phrases)


def check_repetitions_kmp(text: str, repetition_threshold: int = 3) -> bool:
    """True if the whole string is a unit repeated >= threshold times (KMP prefix function)."""
    n = len(text)
    if n <= 1:
        return False
    pi = [0] * n
    k = 0
    for i in range(1, n):
        while k and text[k] != text[i]:
            k = pi[k - 1]
        if text[k] == text[i]:
            k += 1
        pi[i] = k
    if pi[-1] == 0:
        return False
    unit = n - pi[-1]
    return n % unit == 0 and n // unit >= repetition_threshold


def has_repeated_ngram(text: str, min_repeats: int = 3, max_n: int = 8) -> bool:
    """True if some word n-gram (n <= max_n) occurs min_repeats times back to back."""
    words = text.split()
    for n in range(1, max_n + 1):
        for start in range(len(words) - n * min_repeats + 1):
            unit = words[start:start + n]
            if all(words[start + r * n:start + (r + 1) * n] == unit for r in range(1, min_repeats)):
                return True
    return False


def answer_problem(text: str, truncated: bool, cfg: FilterConfig) -> str | None:
    """Why an answer is unusable ("refused", "short", "repetitive", "truncated"), or None."""
    if is_refused(text, cfg.censored_phrases):
        return "refused"
    if len(text.strip()) <= cfg.min_chars:
        return "short"
    if check_repetitions_kmp(text, cfg.kmp_repeats) or has_repeated_ngram(text, cfg.ngram_repeats, cfg.max_ngram):
        return "repetitive"
    if truncated and cfg.drop_truncated:
        return "truncated"
    return None
