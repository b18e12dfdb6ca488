"""String-level normalisation of a final math answer (before parsing).

`normalize(answer)` rewrites LaTeX and plain-text spellings into one form
that `parse` reads. Policies (documented in `__init__.py` as well):

  * math delimiters `$..$`, `\\(..\\)`, `\\[..\\]`, `\\boxed{..}` are removed,
    and so is a currency `\\$`;
  * `\\dfrac`/`\\tfrac`/`\\cfrac` are `\\frac`; `\\frac12`, `\\frac1{x}`, `\\sqrt2` get their
    braces; `\\left`, `\\right`, `\\big..`, `\\displaystyle` are dropped;
  * spacing commands (`\\,` `\\;` `\\quad` `~` ...) become one space:
    spaces matter only to tell units from variables (see parse.py); the
    negative space `\\!` is removed, so `10,\\!000` is `10,000`;
  * a doubled backslash before a known command (`\\\\frac`, `\\\\le`: text
    escaped twice, as in JSON dumps of LaTeX) is one backslash; `\\\\` before
    anything else stays a LaTeX line break (matrix rows);
  * trailing backslashes (`185\\`, a final `\\\\`) are dropped;
  * `\\text{..}`, `\\mathrm{..}`, `\\mbox{..}` ... all become `\\text{..}` padded with
    spaces; parse.py reads a trailing one as a unit;
  * `percent` is `%`;
  * degrees (`^\\circ`, `°`, `\\degree`) are dropped: 30^\\circ == 30;
  * `\\%` is `%`; unicode minus, times, pi, infinity, sqrt are spelled in LaTeX;
  * thousands separators are removed when the whole answer starts with one
    well-formed number (`1,234,567`, `1{,}000`, `1\\,000`, `1 000`, `1,\\!000`);
    a leading group never starts with 0 (`0,111` is not 111: see values.py
    for decimal commas);
  * an integer directly followed by `\\frac{int}{int}` is a mixed number:
    `2\\frac{1}{2}` == 5/2;
  * a trailing period (sentence end) is removed;
  * an answer longer than MAX_ANSWER_CHARS is returned stripped, unchanged.
"""

import re

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": r"\times ", "\u00f7": "/",
    "\u22c5": r"\cdot ", "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u221a": r"\sqrt",
    "\u00b0": r"^\circ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u222a": r"\cup ",
    "\u00b1": r"\pm ", "\u2009": " ", "\u00a0": " ", "\u202f": " ", "\u2260": r"\neq ",
    "\u2248": r"\approx ",
}
_TEXT_COMMANDS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf",
                  "mathit", "mbox", "rm", "operatorname", "hbox")
# (?<!\\): the second backslash of a `\\` line break is not a spacing command.
_SPACING = re.compile(r"(?<!\\)(?:\\[,;:> ]|\\q?quad|\\(?:thin|med|thick|neg)space\b)|~")
# Commands that a doubled backslash may precede in twice-escaped text.
_ESCAPED_COMMANDS = re.compile(
    r"(?<!\\)\\\\(?=(?:[dtc]?frac|sqrt|left|right|boxed|text\w*|math\w+|mbox|pi|infty|"
    r"cdot|times|div|pm|mp|cup|cap|in|le|ge|leq|geq|lt|gt|neq?|approx|sin|cos|tan|cot|sec|"
    r"csc|log|ln|exp|circ|degree|dots|ldots|cdots|begin|end|binom|dbinom|alpha|beta|gamma|"
    r"delta|theta|lambda|mu|sigma|phi|omega|quad|qquad)(?![a-z]))")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)"
                     r"(?![A-Za-z])|\\displaystyle|\\textstyle")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\^\s*\{\s*o\s*\}")
_THOUSANDS = re.compile(r"^(-?[1-9]\d{0,2})((?:,\d{3})+)(\.\d+)?(?![\d,])")
_SPACE_THOUSANDS = re.compile(r"^(-?\d{1,3})((?: \d{3})+)(\.\d+)?$")
_MIXED = re.compile(r"(?<![\w.}^_)\]])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")


def matching_brace(text: str, open_index: int) -> int:
    """Index of the `}` closing the `{` at `open_index`, or -1."""
    depth = 0
    i = open_index
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def unwrap_command(text: str, name: str, template: str = " {} ") -> str:
    """Replaces every `\\name{arg}` by `template.format(arg)` (nesting-aware)."""
    pattern = re.compile(r"\\" + name + r"\s*\{")
    prefix_len = len(template.format("\0").split("\0")[0])
    pos = 0
    while True:
        m = pattern.search(text, pos)
        if m is None:
            return text
        close = matching_brace(text, m.end() - 1)
        arg = text[m.end():close] if close >= 0 else text[m.end():]
        rest = text[close + 1:] if close >= 0 else ""
        text = text[:m.start()] + template.format(arg) + rest
        pos = m.start() + prefix_len  # continue inside the argument, never re-match


_ARG = r"(\\[A-Za-z]+|[0-9A-Za-z])"  # a one-character or one-command argument
_SHORT_ARGS = (  # LaTeX lets such arguments go without braces
    (re.compile(r"\\(frac|binom)\s*" + _ARG + r"\s*" + _ARG), r"\\\1{\2}{\3}"),
    (re.compile(r"\\(frac|binom)\s*" + _ARG + r"(?=\s*\{)"), r"\\\1{\2}"),
    (re.compile(r"\\(frac|binom)\s*(\{[^{}]*\})\s*" + _ARG), r"\\\1\2{\3}"),
    (re.compile(r"\\sqrt\s*" + _ARG), r"\\sqrt{\1}"),
)


def _brace_short_args(text: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{x}` -> `\frac{1}{x}`, `\sqrt2` -> `\sqrt{2}`."""
    for pattern, replacement in _SHORT_ARGS:
        text = pattern.sub(replacement, text)
    return text


def strip_math_delimiters(text: str) -> str:
    text = text.strip()
    text = text.replace(r"\$", " ")  # currency, not a math delimiter
    for left, right in ((r"\(", r"\)"), (r"\[", r"\]"), ("$$", "$$")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left):len(text) - len(right)]
    return text.replace("$", " ").strip()


MAX_ANSWER_CHARS = 2000  # longer "answers" are prose: kept as written, in linear time


def normalize(answer: str) -> str:
    """Canonical spelling of one extracted answer (see the module docstring)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip()
    text = answer
    for old, new in _UNICODE.items():
        text = text.replace(old, new)
    text = _ESCAPED_COMMANDS.sub(r"\\", text)
    text = strip_math_delimiters(text)
    text = unwrap_command(text, "boxed", "{}")
    text = unwrap_command(text, "fbox", "{}")
    for name in _TEXT_COMMANDS:  # one spelling, kept as a token for parse.py
        text = unwrap_command(text, name, " \\text{{{}}} ")
    text = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", text)
    text = re.sub(r"\\dbinom(?![A-Za-z])", r"\\binom", text)
    text = re.sub(r"\\(?:left|right)[.]", "", text)  # invisible delimiters
    text = _SIZING.sub("", text)
    text = re.sub(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))", ",", text)  # 11,\! 111 is 11,111
    text = re.sub(r"(?<!\\)\\!", "", text)
    text = _SPACING.sub(" ", text)
    text = _DEGREES.sub(" ", text)
    text = re.sub(r"\bdegrees?\b", " ", text)
    text = re.sub(r"\s*\bpercent\b", "%", text)
    text = text.replace(r"\%", "%").replace(r"\{", "{").replace(r"\}", "}")
    text = re.sub(r"\s*\{\s*,\s*\}\s*", ",", text)
    text = _brace_short_args(text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\\+$", "", text).rstrip(" .")
    text = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", "") + (m.group(3) or ""),
                          text)
    text = _SPACE_THOUSANDS.sub(
        lambda m: m.group(1) + m.group(2).replace(" ", "") + (m.group(3) or ""), text)
    text = _MIXED.sub(lambda m: "(%s+%s/%s)" % m.groups(), text)
    return text.strip()


def canonical_text(answer: str) -> str:
    """Fallback comparison key for answers that do not parse as math."""
    text = normalize(answer).replace("\\text", " ").lower()
    text = re.sub(r"[{}\s]+", " ", text)
    return text.strip(" .")
