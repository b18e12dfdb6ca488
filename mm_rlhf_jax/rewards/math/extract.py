"""Final-answer extraction from a model response.

`extract_answer(text)` tries, in order:
  1. the last `\\boxed{...}` / `\\fbox{...}` (nested braces; `\\boxed 5` too);
  2. the last GSM8K-style `#### X` (rest of that line);
  3. the last "answer is X" / "answer: X" (case-insensitive, covering "The
     final answer is X"), up to the end of its sentence or line;
  4. the whole text, when it is short and parses as a math answer
     (`1/2`, `(1, 2]`, `x = 3`), has no prose words (`\text{Monday}`), or
     is at most three words without digits (`Monday`, `yes`);
  5. the last number or last `$...$` math segment, whichever ends later.
Returns None when nothing is found.

`extract_choice(text)` finds a multiple-choice letter A-J only where the
response commits to one: a boxed letter, "answer is (B)", or a response
that is just the letter ("B", "(B)", "B.", "B) 42"). Mentions such as
"between (A) and (C)" are not guesses at the answer, so they do not count,
and a hedge that offers a second letter ("(B) or (C)") commits to none.
"""

import re

from mm_rlhf_jax.rewards.math import normalize as math_normalize, values as math_values

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?")
_MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# After "answer is": a letter not followed by more of a word ("B", "(B)", "B.").
_CHOICE_AFTER = re.compile(r"\(?([A-J])\)?(?![A-Za-z0-9])")
# A whole response: "(B) ...", "B. ...", "B) ...", "B: ..." or just "B".
_CHOICE_WHOLE = re.compile(r"(?:\(([A-J])\)|([A-J])[.:)])(?:\s.*)?|([A-J])", re.DOTALL)
_MAX_WHOLE = 80


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox), braces balanced."""
    matches = list(_BOXED.finditer(text))
    for m in reversed(matches):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            close = math_normalize.matching_brace(text, i)
            if close > 0:
                return text[i + 1:close].strip()
        else:
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group().strip()
    return None


def _sentence(rest: str) -> str:
    """The answer after "answer is": its $...$ segment, or up to the sentence end."""
    rest = rest.split("\n", 1)[0].strip()
    seg = re.match(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)", rest)
    if seg:
        return next(g for g in seg.groups() if g is not None)
    rest = re.split(r"(?<=[^\d\s])\.\s|\.\s+(?=[A-Z])|[!?](?:\s|$)|\.$", rest)[0]
    return rest.strip().rstrip(".").strip()


def _last_number_or_math(text: str) -> str | None:
    best, best_end = None, -1
    for m in _NUMBER.finditer(text):
        if m.end() >= best_end:
            best, best_end = m.group(), m.end()
    for m in _MATH_SEGMENT.finditer(text):
        content = next(g for g in m.groups() if g is not None)
        if m.end() >= best_end and not isinstance(math_values.parse_answer(content),
                                                  math_values.Text):
            best, best_end = content, m.end()
    return best.strip() if best is not None else None


def extract_answer(text: str) -> str | None:
    """The final answer in a model response (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_answer: text must be str, got {type(text).__name__}")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    said = list(_ANSWER_IS.finditer(text))
    for m in reversed(said):
        answer = _sentence(text[m.end():])
        if answer:
            return answer
    whole = text.strip()
    if whole and len(whole) <= _MAX_WHOLE and "\n" not in whole:
        # A bare answer: it parses, or it has no prose words (an answer too
        # large for the parser, such as a tower of powers, is still the answer).
        prose = re.search(r"(?<![\\A-Za-z])[A-Za-z]{3,}", re.sub(r"\\text\{[^{}]*\}", "", whole))
        short_words = not re.search(r"\d", whole) and len(whole.split()) <= 3
        if not prose or short_words or not isinstance(
                math_values.parse_answer(whole), math_values.Text):
            return whole
    return _last_number_or_math(text)


def choice_letter(answer: str) -> str | None:
    """The letter when `answer` is exactly a choice: "B", "(B)", "B.", "\\text{(B)}"."""
    text = math_normalize.normalize(answer).replace("\\text", "").strip(" {}")
    m = re.fullmatch(r"\(?([A-J])\)?[.:]?", text)
    return m.group(1) if m else None


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter a response commits to (module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_choice: text must be str, got {type(text).__name__}")
    boxed = last_boxed(text)
    if boxed is not None:
        return _whole_choice(math_normalize.normalize(boxed).replace("\\text", "").strip(" {}"))
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        rest = re.sub(r"^(?:\\text\{|\*\*|\$|\s)+", "", text[m.end():])
        found = _CHOICE_AFTER.match(rest)
        if found:
            return _unless_hedged(found.group(1), rest[found.end():].split("\n", 1)[0])
    if len(text.strip()) <= _MAX_WHOLE:
        return _whole_choice(text.strip())
    return None


def _unless_hedged(letter: str, rest: str) -> str | None:
    """None when the rest of the line offers another letter: "(B) or (C)"."""
    others = re.findall(r"\(([A-J])\)|\b(?:or|and)\s+([A-J])\b", rest)
    if any((a or b) != letter for a, b in others):
        return None
    return letter


def _whole_choice(text: str) -> str | None:
    m = _CHOICE_WHOLE.fullmatch(text)
    if not m:
        return None
    letter = next(g for g in m.groups() if g)
    return _unless_hedged(letter, text[m.start(m.lastindex) + 1:])
