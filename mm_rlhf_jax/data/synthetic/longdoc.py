"""Synthetic long-document task for the LongPO `tiny` preset (a needle-in-a-haystack QA task).

A document is a sequence of passages separated by blank lines. Passages are
generated filler sentences ("the quiet lamp rests near the old bridge ."); in
`facts_per_doc` of them, placed in the first `needle_span` of the document (far
back from its end), one fact sentence names a person and their code:

    The code list has Anna falcon .

A question about that person ("What is the code of Anna ?") is answered ("Anna
falcon .") only by that passage. It can be asked with the whole document as
context (long-context accuracy) or with only the chunk of passages that holds
the fact (short-context accuracy), so a model's long- and short-context ability
are measured on the same facts, as in RULER's single-needle NIAH.

The warm-start (SFT) data teaches a tiny random model the short-context skills
LongPO assumes of an aligned short-context model pi_S: answering from a chunk of
one or a few passages, writing a question about a chunk (the self-instruct step),
and refusing when the chunk holds no fact. Self-instruct on a chunk without a fact
therefore yields a refused short answer, which the pipeline's filter drops, as the
released pipeline drops censored answers.
"""

import dataclasses
import json
import os

import numpy as np

NAMES = ("Anna", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jane", "Kai", "Lena", "Max", "Nora",
         "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uli", "Vera", "Walt", "Xena", "Yuri", "Zoe", "Abe", "Bea",
         "Cy", "Dora", "Eli", "Fay")
VALUES = ("falcon", "copper", "maple", "harbor", "violet", "thunder", "pebble", "lantern", "orchid", "glacier",
          "saffron", "compass", "meadow", "ember", "quartz", "willow", "canyon", "velvet", "juniper", "beacon",
          "tundra", "cobalt", "fern", "marble", "nectar", "prism", "ridge", "sparrow", "tulip", "walnut", "zephyr",
          "amber")
_ADJ = ("quiet", "old", "small", "bright", "dark", "green", "cold", "warm", "tall", "soft", "loud", "empty")
_NOUN = ("lamp", "bridge", "river", "garden", "window", "road", "table", "forest", "tower", "boat", "stone",
         "market", "field", "house", "cloud", "door")
_VERB = ("rests", "stands", "waits", "sleeps", "shines", "moves", "falls", "turns")
_PREP = ("near", "under", "behind", "above", "beside", "across")

FACT = "The code list has {name} {value} ."
QUESTION = "What is the code of {name} ?"
ANSWER = "{name} {value} ."
REFUSAL = "Sorry , I cannot find it in the text ."
# The tiny model's self-instruct prompt (the released QUERY_PROMPT asks a 7B model for 4 questions).
SELF_INSTRUCT_PROMPT = "Write a question about the text above ."
SYSTEM_WORDS = "system user assistant"


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    passages_per_doc: int = 16  # long documents
    facts_per_doc: int = 1  # needles per document (distinct names)
    needle_span: float = 0.75  # needles sit in the first 75% of the passages
    min_filler: int = 2  # filler sentences per passage
    max_filler: int = 5
    sft_min_passages: int = 1  # warm-start chunks hold sft_min_passages..sft_max_passages passages
    sft_max_passages: int = 2
    qa_fraction: float = 0.6  # warm-start mix: questions to answer, else self-instruct questions to write
    refusal_fraction: float = 0.15  # of the QA examples: chunks without a fact (answer: REFUSAL)


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str
    passages: tuple[str, ...]
    facts: tuple[tuple[int, str, str], ...]  # (passage index, name, value), in document order

    @property
    def text(self) -> str:
        return "\n\n".join(self.passages)


def _filler(rng: np.random.Generator) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]
    return f"the {pick(_ADJ)} {pick(_NOUN)} {pick(_VERB)} {pick(_PREP)} the {pick(_ADJ)} {pick(_NOUN)} ."


def passage(rng: np.random.Generator, cfg: TaskConfig, fact: tuple[str, str] | None = None) -> str:
    """Filler sentences, with the fact sentence (if any) at a random place."""
    sentences = [_filler(rng) for _ in range(int(rng.integers(cfg.min_filler, cfg.max_filler + 1)))]
    if fact is not None:
        sentences.insert(int(rng.integers(len(sentences) + 1)), FACT.format(name=fact[0], value=fact[1]))
    return " ".join(sentences)


def make_document(rng: np.random.Generator, doc_id: str, num_passages: int, num_facts: int, cfg: TaskConfig,
                  span: float | None = None) -> Document:
    """A document of num_passages passages, num_facts of them (in the first `span`) holding a fact."""
    span = cfg.needle_span if span is None else span
    room = max(num_facts, int(num_passages * span))
    if num_facts > min(room, num_passages, len(NAMES)):
        raise ValueError(f"{num_facts} facts do not fit {num_passages} passages (needle span {span})")
    where = sorted(rng.choice(room, num_facts, replace=False).tolist())
    names = rng.choice(len(NAMES), num_facts, replace=False)
    facts = tuple((int(i), NAMES[n], VALUES[int(rng.integers(len(VALUES)))]) for i, n in zip(where, names))
    by_passage = {i: (name, value) for i, name, value in facts}
    return Document(doc_id, tuple(passage(rng, cfg, by_passage.get(i)) for i in range(num_passages)), facts)


def make_documents(seed: int, n: int, cfg: TaskConfig = TaskConfig(), prefix: str = "doc") -> list[Document]:
    rng = np.random.default_rng(seed)
    return [make_document(rng, f"{prefix}{i:05d}", cfg.passages_per_doc, cfg.facts_per_doc, cfg)
            for i in range(n)]


def is_correct(answer: str, value: str) -> bool:
    """The answer names the true value and no other value word."""
    words = set(answer.replace(".", " ").replace(",", " ").split())
    return value in words and not (words & (set(VALUES) - {value}))


def ask(context: str, question: str, phrase: str = "") -> str:
    """The user turn: context, blank line, (phrase +) question (the released pipeline's layout)."""
    return f"{context}\n\n{phrase + ' ' if phrase else ''}{question}"


def sft_examples(seed: int, n: int, phrases, cfg: TaskConfig = TaskConfig()) -> list[list[dict]]:
    """Short-context warm-start conversations over chunks of sft_min..sft_max_passages passages.

    QA (qa_fraction): a phrase-prefixed question about the chunk's fact, or, for a chunk
    without a fact (refusal_fraction of them), about some name (answer: REFUSAL).
    Otherwise self-instruct: the model writes the question about the chunk's fact.
    """
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]
    out = []
    for _ in range(n):
        size = int(rng.integers(cfg.sft_min_passages, cfg.sft_max_passages + 1))
        qa = rng.random() < cfg.qa_fraction
        empty = qa and rng.random() < cfg.refusal_fraction
        doc = make_document(rng, "sft", size, 0 if empty else 1, cfg, span=1.0)
        if empty:
            user, answer = ask(doc.text, QUESTION.format(name=pick(NAMES)), pick(phrases)), REFUSAL
        elif qa:
            _, name, value = doc.facts[0]
            user, answer = ask(doc.text, QUESTION.format(name=name), pick(phrases)), ANSWER.format(name=name,
                                                                                                   value=value)
        else:
            user, answer = ask(doc.text, SELF_INSTRUCT_PROMPT), QUESTION.format(name=doc.facts[0][1])
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return out


def eval_records(docs: list[Document], seed: int, chunk_passages: int = 2) -> list[dict]:
    """One question per document, about a random one of its facts.

    Returns dicts with the long context (whole document), the short context (the
    `chunk_passages`-passage window holding the fact, aligned as the chunker groups
    passages), the question, the true value and the fact's passage index.
    """
    rng = np.random.default_rng(seed)
    out = []
    for doc in docs:
        i, name, value = doc.facts[int(rng.integers(len(doc.facts)))]
        start = (i // chunk_passages) * chunk_passages
        out.append({"doc_id": doc.doc_id, "long_context": doc.text,
                    "short_context": "\n\n".join(doc.passages[start:start + chunk_passages]),
                    "question": QUESTION.format(name=name), "value": value, "passage": i})
    return out


def corpus(phrases=()) -> list[str]:
    """Every word the task can write (for the word-level tokenizer)."""
    example = dict(name=NAMES[0], value=VALUES[0])
    texts = [" ".join(NAMES), " ".join(VALUES), " ".join(_ADJ + _NOUN + _VERB + _PREP), "the",
             FACT.format(**example), QUESTION.format(**example), ANSWER.format(**example), REFUSAL,
             SELF_INSTRUCT_PROMPT, SYSTEM_WORDS]
    return texts + list(phrases)


def build_tokenizer(path: str, phrases=()) -> str:
    """The task's word-level tokenizer (tiny_tokenizer's builder on this corpus, same chat template)."""
    from mm_rlhf_jax.data.synthetic.tiny_tokenizer import TINY_VOCAB_SIZE, build_tiny_tokenizer

    return build_tiny_tokenizer(path, texts=corpus(phrases), vocab_size=TINY_VOCAB_SIZE)


def write_documents(path: str, docs: list[Document]) -> str:
    """The LongPO document format: one {"id", "text"} per line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.doc_id, "text": d.text}) + "\n")
    return path
