"""LongPO prompt texts: the self-instruct query prompt, the long-instruction phrases, question parsing.

The texts are the released pipeline's (DAMO-NLP-SG/LongPO `data_prepare/generate_qa.py`):
- QUERY_PROMPT asks the model for 4 numbered questions about the context above;
  one of the parsed questions is sampled per chunk (papers.md §3(b));
- each instruction is prefixed with a random PHRASES entry ("As described in the
  preceding text,") in both the short (chunk) and the long (document) prompt;
- a prompt's user turn is `context + "\\n\\n" + instruction` (`build_chat_format`).
"""

import re

QUERY_PROMPT = """
Based on the content presented above, generate 4 comprehensive English questions that test a reader's comprehension, analytical skills, and ability to extract and interconnect key themes and ideas across the entire document.

Each question should:
1. Encourage the reader to draw connections between different sections or concepts within the text.
2. Challenge the reader to not only recall information but also to synthesize and summarize the material in a coherent manner.
3. Be unique in its focus, avoiding repetition and ensuring a broad coverage of the document's content.
4. Stimulate critical thinking by requiring the application or evaluation of the text's information in broader contexts or hypothetical scenarios, if relevant.
5. Ensure the question is clear and unambiguous.

Please directly give the questions without verbose illustration, and format the 4 questions numerically from \u201c1:\u201d to \u201c4:\u201d.
"""

PHRASES = (
    "As described in the preceding text,",
    "As detailed in the foregoing document,",
    "As mentioned earlier in the text,",
    "As specified in the above material,",
    "As indicated in the preceding pages,",
    "In accordance with the above content,",
    "As set forth in the document mentioned,",
    "Following the details provided above,",
    "As elaborated in the prior document,",
    "Pursuant to the information above,",
    "In line with the preceding information,",
    "Reflecting on the content above,",
    "Based on the preceding descriptions,",
    "With reference to the document above,",
    "Drawing from the details above,",
    "Considering the information outlined above,",
    "As articulated in the previous sections,",
    "Conforming to the descriptions above,",
    "As captured in the above explanations,",
    "As chronicled in the earlier document,",
)

_NUMBERED = re.compile(r"\b\d+\s*[:.!?-]+\s*(.+?)\s*(?=\b\d+\s*[:.!?-]+\s*|$)", re.DOTALL)
_TRIM = re.compile(r"^[\*\s#.!]*(.+?)[\*\s#.!]*$", re.DOTALL)


def extract_questions(text: str, numbered: bool = True) -> list[str]:
    """Questions from a self-instruct generation.

    numbered=True parses "1: ... 2: ..." lists as the released `extract_questions`
    does; numbered=False takes the whole generation as one question (the tiny
    preset's model writes one question per chunk).
    """
    if not numbered:
        q = text.strip()
        return [q] if q else []
    found = _NUMBERED.findall(text)
    return [_TRIM.sub(r"\1", q.strip()) for q in found if q.strip()]


def user_turn(context: str, instruction: str) -> str:
    """`build_chat_format`'s user content: context, blank line, instruction (or the instruction alone)."""
    return f"{context}\n\n{instruction}" if context else instruction


def instruction_prompt(chunk: str, query_prompt: str) -> list[dict]:
    """Self-instruct request for one chunk (generate_qa.py: "Context:\\n" + chunk + "\\n\\n" + prompt)."""
    return [{"role": "user", "content": f"Context:\n{chunk}\n\n{query_prompt.strip()}"}]


def answer_prompt(context: str, phrase: str, question: str) -> list[dict]:
    """The answer request: context + phrase-prefixed question (short: chunk, long: whole document)."""
    return [{"role": "user", "content": user_turn(context, f"{phrase} {question}".strip())}]
