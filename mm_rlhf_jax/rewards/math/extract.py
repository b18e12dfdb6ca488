"""Final-answer extraction from a model response.

`extract_answer(text)` tries, in order:
  1. the last `\\boxed{...}` / `\\fbox{...}` (nested braces; `\\boxed 5` too;
     an unclosed one runs to the end of the text). Boxes joined only by
     connectives form one answer: `\\boxed{1} and \\boxed{2}` is "1, 2"
     (a gap of at most four words, no digits outside subscripts; repeated
     boxes count once). An "answer is X" after the last box wins when X
     parses as math (a corrected final answer: "\\boxed{255} ... The final
     answer is $10,455$");
  2. the last GSM8K-style `#### X` (rest of that line);
  3. the last "answer is X" / "answer: X" (case-insensitive, covering "The
     final answer is X"), up to the end of its sentence or line; when that
     is prose ("The largest $n$ is 34", "Jane started 3 hours ago"), what
     follows its first "is"/"are"/"was"/"=" if that parses, else its number
     or math segment when it has exactly one, else the prose itself (a text
     answer, or a hedge such as "between 3 and 4");
  4. the whole text, when it is short and parses as a math answer
     (`1/2`, `(1, 2]`, `x = 3`), has no prose words (`\\text{Monday}`), or
     is at most three words without digits (`Monday`, `yes`);
  5. the last number or last `$...$` math segment, whichever ends later; a
     number glued to letters (`AZYUK2A`) is not one, and `2,74` (a decimal
     comma with one or two decimals) is.
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
# "answer is" / "answer:", and the same marker in a few other languages.
_ANSWER_IS = re.compile(
    r"(?:answer\s*(?:is\s*:?|:)|r[ée]ponse\s*(?:est\s*:?|:)|respuesta\s*(?:es\s*:?|:)"
    r"|resposta\s*(?:[ée]\s*:?|:)|risposta\s*(?:[èe]\s*:?|:)|antwort\s*(?:ist\s*:?|:)"
    r"|答案\s*(?:是|为|：|:)|الإجابة\s*(?:هي|:)?)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z\d])-?(?:\d{1,3}(?:,\d{3})+(?![\d,])|(?<![\d,])\d+,\d{1,2}(?![\d,])"
                     r"|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\\[dt]?frac\{\d+\}\{\d+\}")
# `\$` is a currency sign, not a delimiter.
_MATH_SEGMENT = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)"
                           r"|\\\[(.+?)\\\]", re.DOTALL)
# What may join boxes into one answer: delimiters, spacing, \text{..} wrappers,
# punctuation, `=` and subscripts (`y_2 =`), then at most _MAX_GAP_WORDS words.
_GAP_NOISE = re.compile(r"\\[()\[\]]|\$|\\q?quad|\\[,;:! ]|\\text\w*|\\mathrm|_\{?\w+\}?|[{}=,;.:+&*()\[\]\\]")
_MAX_GAP_WORDS = 4
_MAX_GAP_CHARS = 80
_MAX_LATE_MARKERS = 4  # "answer is" markers after the last box that are looked at
_TAIL = re.compile(r".*?(?:\bis|\bare|\bwas|=)\s*", re.DOTALL)
# After "answer is": a letter not followed by more of a word ("B", "(B)", "B.").
# After "answer is": a letter not followed by more of a word ("B", "(B)", "B."),
# after at most three filler words that are not a negation ("for sure D").
_CHOICE_AFTER = re.compile(r"(?:(?!not\b|never\b|non\b)[a-z]+\s+){0,3}\(?([A-J])\)?(?![A-Za-z0-9])")
# Weaker commitments, trusted only when the letter ends the clause: "I think it's B."
_CHOICE_SAID = re.compile(r"(?:\bit's|\bit is|\bI think|\bI choose)\s+\(?([A-J])\)?"
                          r"(?=\s*(?:[.,;!。]|$))", re.MULTILINE)
# A whole response: "(B) ...", "B. ...", "B) ...", "B: ...", "B。...", "B不是 A" or just "B".
_CHOICE_WHOLE = re.compile(r"(?:\(([A-J])\)|([A-J])(?:[.:)。：]|(?=[^\x00-\x7f])))(?:\s.*|[^\x00-\x7f].*)?"
                           r"|([A-J])", re.DOTALL)
# Letters after a negation are rejected options, not alternatives ("D, it can't be A or B").
_NEGATION = re.compile(r"n't\b|\bnot\b|\bnever\b|\bnon\b|\bnicht\b|不是|不")
_MAX_WHOLE = 80


def _brace_pairs(text: str) -> dict:
    """{index of "{": index of its "}"} in one pass (unclosed ones absent);
    escaped braces do not count. One pass keeps many boxes linear in time."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _boxes(text: str) -> list:
    """(start, end, content) of every \\boxed{...} / \\fbox{...} / `\\boxed 5`."""
    boxes, pairs = [], None
    for m in _BOXED.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            close = pairs.get(i, -1)
            if close < 0:  # unclosed: the rest of the text
                boxes.append((m.start(), len(text), text[i + 1:].strip().rstrip("$").strip()))
            else:
                boxes.append((m.start(), close + 1, text[i + 1:close].strip()))
        else:
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                boxes.append((m.start(), i + token.end(), token.group().strip()))
    return boxes


def _connects(gap: str) -> bool:
    """Does the text between two boxes join them into one answer? Only
    punctuation and spacing, part labels ("(b)"), or a few words with a
    connective ("and", "or", a comma): `\\boxed{1} then \\boxed{2}` is a
    sequence, its answer is 2."""
    if len(gap) > _MAX_GAP_CHARS:
        return False
    words = _GAP_NOISE.sub(" ", gap).split()
    if len(words) > _MAX_GAP_WORDS or re.search(r"\d", " ".join(words)):
        return False
    return (not words or bool(re.search(r"[,;&]", gap))
            or any(w.lower() in ("and", "or") for w in words)
            or all(re.fullmatch(r"[a-z]|[ivx]+", w) for w in words))  # part labels: (b), (ii)


def _final_boxes(text: str):
    """(content, end) of the final run of connected boxes, or None."""
    boxes = _boxes(text)
    if not boxes:
        return None
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[1] > run[0][0] or not _connects(text[box[1]:run[0][0]]):
            break
        run.insert(0, box)
    contents = list(dict.fromkeys(c for _, _, c in run if c))  # repeated boxes count once
    return (", ".join(contents) if contents else None), run[-1][1]


def last_boxed(text: str) -> str | None:
    """The final boxed answer: the last box, joined with boxes connected to it."""
    final = _final_boxes(text)
    return final[0] if final else None


def _sentence(rest: str) -> str:
    """The answer after "answer is": its $...$ segment, or up to the sentence end."""
    rest = rest.lstrip().split("\n", 1)[0].strip()
    seg = re.match(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)", rest)
    if seg:
        return next(g for g in seg.groups() if g is not None)
    rest = re.split(r"(?<=[^\d\s])\.\s|\.\s+(?!\d)|[!?](?:\s|$)|\.$", rest)[0]
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


def _is_math(answer: str) -> bool:
    return not isinstance(math_values.parse_answer(answer), math_values.Text)


def _said_answer(sentence: str) -> str:
    """The answer in an "answer is ..." sentence that is prose (module docstring)."""
    if _is_math(sentence):
        return sentence
    tail = _TAIL.match(sentence)
    if tail:
        value = sentence[tail.end():].strip()
        while value.endswith(")") and value.count(")") > value.count("("):
            value = value[:-1].rstrip()  # "(35 + 70 = 105)": the ")" closes the sentence's bracket
        if value and _is_math(value):
            return value
    values = {m.group().strip() for m in _NUMBER.finditer(sentence)}
    values |= {segment for segment in (next(g for g in m.groups() if g is not None).strip()
                                        for m in _MATH_SEGMENT.finditer(sentence))
               if re.search(r"\d", segment)}  # $f(x)$ names a thing, $19$ is a value
    # one value only: "between 3 and 4" is a hedge, not the answer 4
    return values.pop() if len(values) == 1 else sentence


def extract_answer(text: str) -> str | None:
    """The final answer in a model response (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_answer: text must be str, got {type(text).__name__}")
    said = list(_ANSWER_IS.finditer(text))
    final = _final_boxes(text)
    if final is not None and final[0] is not None:
        for m in reversed(said[-_MAX_LATE_MARKERS:]):
            if m.start() < final[1]:
                break
            answer = _sentence(text[m.end():])
            if answer and _is_math(answer):
                return answer
        return final[0]
    hashes = _HASHES.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    for m in reversed(said):
        answer = _sentence(text[m.end():])
        if answer:
            return _said_answer(answer)
    whole = text.strip()
    if whole and len(whole) <= _MAX_WHOLE and "\n" not in whole:
        # A bare answer: it parses, or it has no prose words (an answer too
        # large for the parser, such as a tower of powers, is still the answer).
        bare = re.sub(r"\\text\{[^{}]*\}|\\(?:begin|end)\s*\{\w+\}", "", whole)
        # (a control character before letters is an escape-damaged command: \f + "rac")
        prose = re.search(r"(?<![\\A-Za-z\x00-\x1f])[A-Za-z]{3,}|[^\W\d_A-Za-z]{2,}", bare)
        short_words = not re.search(r"\d", whole) and len(whole.split()) <= 3
        if not prose or short_words or not isinstance(
                math_values.parse_answer(whole), math_values.Text):
            return whole
    return _last_number_or_math(text)


def _plain(text: str) -> str:
    """`text` without math delimiters and \\text/\\mathrm/\\textbf wrappers."""
    return math_normalize.normalize(text).replace("\\text", "").strip(" {}")


def choice_letter(answer: str) -> str | None:
    """The letter when `answer` is a choice: "B", "(B)", "B.", "\\text{(B)}",
    or a choice with its content ("C. x = 42", "(B) 12", "C Cecile": a letter
    and a capitalised word; "A triangle" is not a choice)."""
    text = _plain(answer)
    m = (re.fullmatch(r"\(?([A-J])\)?[.:]?", text)
         or re.match(r"(?:\(([A-J])\)|([A-J])[.:)])\s+\S|([A-J])\s+[A-Z][a-z]", text))
    return next(g for g in m.groups() if g) if m else None


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter a response commits to (module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_choice: text must be str, got {type(text).__name__}")
    boxed = last_boxed(text)
    if boxed is not None:
        return _whole_choice(_plain(boxed))
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        rest = re.sub(r"^(?:\\text\{|\*\*|\$|\s)+", "", text[m.end():])
        found = _CHOICE_AFTER.match(rest)
        if found:
            return _unless_hedged(found.group(1), rest[found.end():].split("\n", 1)[0])
    said = list(_CHOICE_SAID.finditer(text))
    if said:
        return _unless_hedged(said[-1].group(1), text[said[-1].end():].split("\n", 1)[0])
    if len(text.strip()) <= _MAX_WHOLE:
        return _whole_choice(text.strip()) or _whole_choice(_plain(text))
    return None


def _unless_hedged(letter: str, rest: str) -> str | None:
    """None when the rest of the line offers another letter: "(B) or (C)"
    (letters after a negation do not count: "D, it can't be A or B")."""
    negation = _NEGATION.search(rest)
    rest = rest[:negation.start()] if negation else rest
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
