"""The score in a judge's output: `parse_score(text) -> float in [0, 1] or None`.

Judges (GenRM, genrm.py) are asked to end with "Score: <number>" in [0, 1];
real outputs dress that up. The rule:

  1. Candidates are a "score" word (whole word: not "underscore"; "scores"
     and snake_case keys such as `final_score` count) followed by a number,
     with any markdown, quotes or a parenthetical scale between them:
     `**Score:** 0.6`, `Score: **0.6**`, `### Score\\n0.6`, `"score": 0.6`,
     `Score (0-1): 0.6`, `score of 0.6`, `The score is 0.6`.
  2. A number is a decimal with a point or a comma (`0,7` is 0.7: a comma
     followed directly by digits), or one over a scale: `7/10`, `7 out of 10`,
     `70%` are 0.7, and so is `Score (0-10): 7` (a scale announced in the
     parenthetical). A range (`0.6-0.7`) is not a score.
  3. Labels (`score:` / `score =`) outrank prose (`score of`, `score is`):
     among the labelled candidates the LAST one in [0, 1] wins (judges reason
     first, then conclude); only when no labelled candidate is in range does
     the last prose candidate in range count. Out-of-range candidates
     (`Score: 7` on a 0-1 scale, `Score: 11/10`) are skipped, not fatal, so a
     later slip does not discard an earlier valid verdict.
  4. Without any candidate, an output that is only a number (`0.25`,
     `**0.8**`, `0,5.`, `8/10`) is the score.
  5. Anything else is None (the caller counts it as invalid).

Word-level tokenizers decode "0.5" as "0 . 5"; spaced decimals are joined
first. The parse is a few linear regular-expression passes: no eval, and
bounded on any input.
"""

import re

_SPACED_DECIMAL = re.compile(r"(\d)\s*\.\s*(\d)")
_NUMBER = r"[-+]?(?:\d+(?:[.,]\d+)?|[.,]\d+)"
_VALUE = (rf"(?P<value>{_NUMBER})(?:\s*(?P<percent>%)|\s*(?:/|out\s+of)\s*(?P<scale>{_NUMBER}))?"
          r"(?!\s*(?:[-–]|to)\s*\d)(?![\d.,]*\d)")
_MARKUP = r"[\s*_`'\"#>|]*"
_CANDIDATE = re.compile(
    rf"(?<![A-Za-z])scores?(?![A-Za-z]){_MARKUP}(?P<paren>\([^()\n]{{0,30}}\))?{_MARKUP}"
    rf"(?:(?P<label>[:=])|(?P<prose>is|of|was|would\s+be)\b)?{_MARKUP}{_VALUE}",
    re.IGNORECASE)
# The scale a parenthetical announces: "(0-10)", "(0 to 10)", "(out of 10)", "(/10)".
_PAREN_SCALE = re.compile(rf"(?:out\s+of|/|[-–]|\bto)\s*(?P<scale>{_NUMBER})\s*\)$", re.IGNORECASE)
_BARE = re.compile(rf"^[\s*_`]*{_VALUE}[\s*_`]*\.?\s*$")


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _value(match) -> float | None:
    """The match's score rescaled to [0, 1]'s scale, or None when out of range."""
    value = _number(match.group("value"))
    paren = match.groupdict().get("paren")
    announced = _PAREN_SCALE.search(paren) if paren else None
    scale = match.group("scale") or (announced.group("scale") if announced else None)
    if match.group("percent"):
        value /= 100.0
    elif scale:
        scale = _number(scale)
        if scale <= 0:
            return None
        value /= scale
    return value if 0.0 <= value <= 1.0 else None


def parse_score(text: str) -> float | None:
    """The judge's score in [0, 1], or None when there is none (module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"parse_score: expected str, got {type(text).__name__}")
    text = _SPACED_DECIMAL.sub(r"\1.\2", text)
    labelled, prose = [], []
    for match in _CANDIDATE.finditer(text):
        value = _value(match)
        if value is not None:
            (prose if match.group("prose") else labelled).append(value)
    if labelled or prose:
        return (labelled or prose)[-1]
    bare = _BARE.match(text)
    return _value(bare) if bare else None
