"""Bundled synthetic reasoning tasks for the tiny PPO and Align-Pro presets.

Three prompt domains, each with the reward source the hybrid router gives it:

  math     "What is the largest of 4 , 9 and 2 ?" / "... smallest ..." /
           "What is 3 plus 4 ?"  -> ground_truth "9" (math verifier, RTV)
  code     "Write a function f of x that returns x times 3 ."
           -> unit_tests "assert f(0) == 0 ..." (code sandbox, RTV);
           a correct response is "def f ( x ): return x * 3"
  general  "What sound does a cow make ?" -> ground_truth "moo" (no programmatic
           verifier: judged by the generative RM against the ground truth)
  open     a general prompt written without its ground truth (`open_prompts`): nothing
           to check against, so a GenRM best-of-N reference or the learned RM scores it

Responses are written with spaces between words and punctuation because the
tiny word-level tokenizer decodes that way ("The answer is 9 ."); a one-line
`def f ( x ): return x * 3` is valid Python, so decoded code runs as is.

Align-Pro uses *paraphrased* user prompts ("Among 4 , 9 and 2 , which is the
biggest ?") that a frozen model trained only on the canonical phrasing above
answers badly; a prompter can learn to rewrite them into the canonical form.

Every record is a plain dict in the prompt-pool format (data/prompts_pool.py):
{"id", "prompt", "domain", "ground_truth" | "unit_tests", "meta": {"task", ...}}.
`corpus()` lists every word the generators can write, for the tiny tokenizer.
"""

import dataclasses
import json
import os

import numpy as np

MAX_NUMBER = 9  # operands of largest/smallest are 0..MAX_NUMBER
PLUS_MAX = 9  # operands of "plus" are 0..PLUS_MAX
CODE_MAX_CONST = 9
FUNCTION_NAMES = ("f", "g", "h", "k", "p", "q")
ARG_NAMES = ("x", "y", "n", "m", "t", "z")
CODE_OPS = {"plus": "+", "minus": "-", "times": "*"}
CODE_TEST_POINTS = (0, 2, 5)
MATH_TASKS = ("largest", "smallest", "plus")
# (thing, ground truth) for the GenRM-judged domain.
GENERAL_FACTS = (("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
                 ("owl", "hoot"), ("bee", "buzz"), ("snake", "hiss"), ("lion", "roar"), ("horse", "neigh"))
GENERAL_TEMPLATE = "What sound does a {thing} make ?"
ANSWER_TEMPLATE = "The answer is {answer} ."
SYSTEM_WORDS = "system user assistant"
# Words of the tiny GenRM judge prompt (rewards/genrm.py "tiny" template) and its output.
JUDGE_WORDS = "Question : Reference : Response : Score 0 1 0.5 . Judge the response against the reference ."
PARAPHRASE = {"largest": "Among {a} , {b} and {c} , which is the biggest ?",
              "smallest": "Among {a} , {b} and {c} , which is the tiniest ?",
              "plus": "Add {a} and {b} ."}
PROMPTER_TEMPLATE = "Rewrite : {prompt}"  # the tiny prompter's user turn (Align-Pro)


@dataclasses.dataclass(frozen=True)
class TaskMix:
    """Share of each domain in a generated pool (normalised)."""

    math: float = 0.5
    code: float = 0.5
    general: float = 0.0


def math_record(task: str, nums: tuple[int, ...], idx: str) -> dict:
    if task == "plus":
        a, b = nums
        prompt, answer = f"What is {a} plus {b} ?", a + b
    else:
        a, b, c = nums
        prompt = f"What is the {task} of {a} , {b} and {c} ?"
        answer = max(nums) if task == "largest" else min(nums)
    return {"id": idx, "prompt": prompt, "domain": "math", "ground_truth": str(answer),
            "meta": {"task": task, "numbers": list(nums)}}


def math_paraphrase(rec: dict) -> str:
    """The Align-Pro user phrasing of a math record (same numbers, same answer)."""
    nums = rec["meta"]["numbers"]
    return PARAPHRASE[rec["meta"]["task"]].format(**dict(zip("abc", nums)))


def code_record(name: str, arg: str, op: str, const: int, idx: str) -> dict:
    sym = CODE_OPS[op]
    value = {"+": lambda v: v + const, "-": lambda v: v - const, "*": lambda v: v * const}[sym]
    tests = "\n".join(f"assert {name}({p}) == {value(p)}" for p in CODE_TEST_POINTS)
    return {"id": idx, "prompt": f"Write a function {name} of {arg} that returns {arg} {op} {const} .",
            "domain": "code", "unit_tests": tests,
            "meta": {"task": f"code_{op}", "solution": f"def {name} ( {arg} ): return {arg} {sym} {const}"}}


def general_record(thing: str, sound: str, idx: str) -> dict:
    return {"id": idx, "prompt": GENERAL_TEMPLATE.format(thing=thing), "domain": "general", "ground_truth": sound,
            "meta": {"task": "general"}}


def _math_space() -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for task in ("largest", "smallest"):
        r = range(MAX_NUMBER + 1)
        out += [(task, (a, b, c)) for a in r for b in r for c in r if len({a, b, c}) == 3]
    r = range(PLUS_MAX + 1)
    out += [("plus", (a, b)) for a in r for b in r]
    return out


def _code_space() -> list[tuple[str, str, str, int]]:
    return [(f, a, op, k) for f in FUNCTION_NAMES for a in ARG_NAMES for op in CODE_OPS
            for k in range(CODE_MAX_CONST + 1)]


def make_splits(seed: int, sizes: dict[str, int], mix: TaskMix = TaskMix(),
                math_tasks: tuple[str, ...] = MATH_TASKS) -> dict[str, list[dict]]:
    """Disjoint splits of prompt records, e.g. sizes={"sft": 512, "train": 256, "heldout": 128}.

    No prompt appears in two splits, so held-out accuracy measures generalisation.
    Within a split the domains follow `mix` and the math tasks are equally likely.
    """
    rng = np.random.default_rng(seed)
    weights = np.array([mix.math, mix.code, mix.general], float)
    if weights.sum() <= 0:
        raise ValueError(f"TaskMix {mix} has no positive share")
    weights /= weights.sum()
    math_space = [m for m in _math_space() if m[0] in math_tasks]
    by_task = {t: [m for m in math_space if m[0] == t] for t in math_tasks}
    for t in by_task:
        rng.shuffle(by_task[t])
    code_space = _code_space()
    rng.shuffle(code_space)
    cursor = {"code": 0, "general": 0, **{t: 0 for t in by_task}}

    def take(pool, key):
        if cursor[key] >= len(pool):
            raise ValueError(f"synthetic {key} space exhausted ({len(pool)} distinct prompts); ask for fewer")
        item = pool[cursor[key]]
        cursor[key] += 1
        return item

    out = {}
    for split, n in sizes.items():
        domains = rng.choice(3, size=n, p=weights)
        recs = []
        for i, d in enumerate(domains):
            idx = f"{split}-{i}"
            if d == 0:
                task = math_tasks[rng.integers(len(math_tasks))]
                recs.append(math_record(*take(by_task[task], task), idx))
            elif d == 1:
                recs.append(code_record(*take(code_space, "code"), idx))
            else:
                # Ten facts only: general prompts repeat across splits (they test routing, not generalisation).
                thing, sound = GENERAL_FACTS[rng.integers(len(GENERAL_FACTS))]
                recs.append(general_record(thing, sound, idx))
        out[split] = recs
    return out


def solution(rec: dict, *, wrong: bool = False) -> str:
    """A demonstration response. wrong=True gives a *systematic* mistake (imperfect SFT data):
    math: the first listed number that is not the answer (a lazy "copy a number" heuristic), or
    the sum plus one; code: the constant off by one; general: a fixed wrong sound.
    """
    meta = rec["meta"]
    if rec["domain"] == "code":
        if not wrong:
            return meta["solution"]
        words = meta["solution"].split()
        k = int(words[-1])
        return " ".join(words[:-1] + [str(k + 1 if k < CODE_MAX_CONST else k - 1)])
    truth = rec["ground_truth"]
    if not wrong:
        return ANSWER_TEMPLATE.format(answer=truth)
    if rec["domain"] == "general":
        sounds = [s for _, s in GENERAL_FACTS]
        return ANSWER_TEMPLATE.format(answer=sounds[(sounds.index(truth) + 1) % len(sounds)])
    if meta["task"] == "plus":
        return ANSWER_TEMPLATE.format(answer=int(truth) + 1)
    return ANSWER_TEMPLATE.format(answer=next(str(v) for v in meta["numbers"] if str(v) != truth))


def open_prompts(records: list[dict], share: float, seed: int) -> list[dict]:
    """A seeded `share` of the general records as domain "open": ground truth moved to meta["answer"]."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        if r["domain"] == "general" and rng.random() < share:
            rest = {k: v for k, v in r.items() if k != "ground_truth"}
            r = {**rest, "domain": "open", "meta": {**r["meta"], "answer": r["ground_truth"]}}
        out.append(r)
    return out


def preference_pairs(records: list[dict], seed: int, *, label_noise: float = 0.0) -> list:
    """(right, wrong) answer PairRecords for a tiny learned reward model; label_noise: share swapped."""
    from mm_rlhf_jax.data.errors import Where
    from mm_rlhf_jax.data.records import PairRecord

    rng = np.random.default_rng(seed)
    out = []
    for i, r in enumerate(records):
        good, bad = solution(r), solution(r, wrong=True)
        if rng.random() < label_noise:
            good, bad = bad, good
        out.append(PairRecord(id=r["id"], prompt=r["prompt"], chosen=good, rejected=bad,
                              where=Where("synthetic_pairs", i + 1)))
    return out


def sft_conversations(records: list[dict], seed: int, *, label_noise: float = 0.0,
                      prompt_field: str = "prompt") -> list[tuple[str, str]]:
    """(user text, assistant text) demonstrations; a `label_noise` fraction is wrong."""
    rng = np.random.default_rng(seed)
    return [(r[prompt_field] if prompt_field == "prompt" else r["meta"][prompt_field],
             solution(r, wrong=bool(rng.random() < label_noise))) for r in records]


def paraphrased(records: list[dict]) -> list[dict]:
    """Math records with their Align-Pro user phrasing as the prompt (canonical text kept in meta)."""
    out = []
    for r in records:
        if r["domain"] != "math":
            raise ValueError(f"record {r['id']}: only math records have paraphrases, got domain {r['domain']!r}")
        out.append({**r, "prompt": math_paraphrase(r), "meta": {**r["meta"], "canonical": r["prompt"]}})
    return out


def rewrite_conversations(records: list[dict], seed: int, *, p_canonical: float, p_copy: float,
                          template: str = "{prompt}") -> list[tuple[str, str]]:
    """Prompter warm-start demos on paraphrased records: (prompter user turn, rewrite).

    With probability p_canonical the rewrite is the canonical prompt (what the
    frozen model understands), with p_copy the user prompt unchanged (a lazy
    prompter), otherwise a harmful rewrite (the canonical prompt of the opposite
    task: largest <-> smallest; for plus the second operand off by one): an
    imperfect starting prompter that RL can improve. `template` formats the
    prompter's user turn from the user prompt.
    """
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        u = rng.random()
        if u < p_canonical:
            target = r["meta"]["canonical"]
        elif u < p_canonical + p_copy:
            target = r["prompt"]
        else:
            task, nums = r["meta"]["task"], tuple(r["meta"]["numbers"])
            if task == "plus":
                target = math_record("plus", (nums[0], nums[1] + 1), "x")["prompt"]
            else:
                target = math_record({"largest": "smallest", "smallest": "largest"}[task], nums, "x")["prompt"]
        out.append((template.format(prompt=r["prompt"]), target))
    return out


def corpus() -> list[str]:
    """Every word the generators, templates and the tiny judge can write."""
    texts = [SYSTEM_WORDS, JUDGE_WORDS, PROMPTER_TEMPLATE.format(prompt=""), ANSWER_TEMPLATE.format(answer="0"),
             " ".join(str(v) for v in range(-CODE_MAX_CONST, max(2 * PLUS_MAX, MAX_NUMBER) + 2))]
    texts += [math_record(t, (1, 2, 3) if t != "plus" else (1, 2), "x")["prompt"] for t in MATH_TASKS]
    texts += [PARAPHRASE[t].format(a=1, b=2, c=3) for t in MATH_TASKS]
    for f, a, op, k in _code_space():
        rec = code_record(f, a, op, k, "x")
        texts += [rec["prompt"], rec["meta"]["solution"]]
    texts += [GENERAL_TEMPLATE.format(thing=t) + " " + s for t, s in GENERAL_FACTS]
    return texts


def build_tokenizer(path: str) -> str:
    from mm_rlhf_jax.data.synthetic.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(path, texts=corpus())


def write_pool(path: str, records: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def judge_conversations(n: int, seed: int, template: str = "tiny") -> list[tuple[str, str]]:
    """Verdict demonstrations for a tiny GenRM judge on the "general" domain.

    Half the responses state the ground-truth sound ("Score : 1"); the rest
    ("Score : 0") mostly state another sound (70%: the only mistake a policy
    trained on sounds makes, and the one that needs the reference compared),
    else a number or no answer at all.
    """
    from mm_rlhf_jax.rewards.genrm import JUDGE_TEMPLATES

    fmt = JUDGE_TEMPLATES.get(template)
    rng = np.random.default_rng(seed)
    sounds = [s for _, s in GENERAL_FACTS]
    out = []
    for _ in range(n):
        thing, truth = GENERAL_FACTS[rng.integers(len(GENERAL_FACTS))]
        correct = rng.random() < 0.5
        if correct:
            response = ANSWER_TEMPLATE.format(answer=truth)
        else:
            kind = rng.choice(3, p=(0.7, 0.15, 0.15))
            if kind == 0:
                response = ANSWER_TEMPLATE.format(answer=rng.choice([s for s in sounds if s != truth]))
            elif kind == 1:
                response = ANSWER_TEMPLATE.format(answer=int(rng.integers(MAX_NUMBER + 1)))
            else:
                response = rng.choice(["The answer is", "def f ( x ): return x + 1", "moo moo moo", "."])
        text = fmt.format(prompt=GENERAL_TEMPLATE.format(thing=thing), reference=truth, response=response)
        out.append((text, "Score : 1" if correct else "Score : 0"))
    return out
