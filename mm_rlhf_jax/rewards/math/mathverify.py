"""Math-Verify (PyPI `math-verify`) as a second math verifier, in worker processes.

    math_verify_reward(response, reference) -> float   registered as "math_verify"
    math_verify_rewards(pairs) -> list[float]          a batch, spread over the workers
    equivalent(prediction, reference) -> bool          in this process, no timeout
    available() -> bool                                 is math-verify installed?
    configure(workers=2, timeout_s=10.0)                the shared pool's size and timeout

TRL's accuracy reward, verl's `math_verify` score and open-r1 use this
package, so its verdicts make reward figures comparable with theirs. It is
optional: nothing here imports it until a verdict is asked for, and then a
missing package is an ImportError naming the pip requirement.

How it is called (`equivalent`, what the workers run): Math-Verify's own
`verify(parse(reference), parse(prediction))` with its default extraction
(LaTeX, then plain expressions) and comparison (6 decimals, strict
variables). Two adaptations for bare answers, which Math-Verify's LaTeX
extraction does not find without delimiters (`\\frac12`, `(1, 2]` alone):
  * a side with no `$..$`, `\\(..\\)`, `\\[..\\]` or `\\boxed` that is one line of
    at most 80 characters is wrapped in `$..$`, unless it is a plain number
    (digits, `.`, `,`, `%`, signs) or plain words: `2x + 3`, `x < -2` and
    `\\frac12` are read as LaTeX, while `1000,99` stays a decimal comma
    (wrapped, it would be the set {1000, 99}) and `Monday` stays a word;
  * when the reference is a multiple-choice letter (extract.choice_letter),
    both sides are read with StringExtractionConfig over the letters A-J.

Math-Verify times itself out with `signal.alarm`, which fails outside the
main thread; inside the workers its timeouts are off and the pool's per-call
timeout (pool.py) replaces them. A verdict that takes longer than
`timeout_s` scores 0.0, is logged, and is counted in `shared_pool().timeouts`.
"""

import importlib.util
import logging
import re
import threading

from mm_rlhf_jax.rewards.math.extract import choice_letter
from mm_rlhf_jax.rewards.math.pool import CallTimeout, WorkerPool

REQUIREMENT = "math-verify>=0.8,<1"  # as in setup.py; measured with 0.9.0
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
_PLAIN = re.compile(r"[\d\s.,%+-]+|[A-Za-z\s]+")  # a plain number, or plain words
_MAX_BARE = 80
_log = logging.getLogger(__name__)
_pool_lock = threading.Lock()
_pool: WorkerPool | None = None
_settings = {"workers": 2, "timeout_s": 10.0}


def available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def _require() -> None:
    if not available():
        raise ImportError(f"the math_verify verifier needs the math-verify package: "
                          f"pip install '{REQUIREMENT}'")


def _as_latex(text: str) -> str:
    """A bare answer in $..$ (module docstring); anything else unchanged."""
    bare = text.strip()
    if (not _DELIMITED.search(bare) and "\n" not in bare and len(bare) <= _MAX_BARE
            and not _PLAIN.fullmatch(bare)):
        return f"${bare}$"
    return text


def equivalent(prediction: str, reference: str) -> bool:
    """Math-Verify's verdict, computed in this process without any timeout
    (use math_verify_reward for untrusted text)."""
    _require()
    import math_verify

    if choice_letter(reference) is not None:
        config = [math_verify.StringExtractionConfig(strings=tuple("ABCDEFGHIJ"))]
        gold = math_verify.parse(reference, config, parsing_timeout=None)
        answer = math_verify.parse(prediction, config, parsing_timeout=None)
    else:
        gold = math_verify.parse(_as_latex(reference), parsing_timeout=None)
        answer = math_verify.parse(_as_latex(prediction), parsing_timeout=None)
    return bool(math_verify.verify(gold, answer, timeout_seconds=None))


def configure(*, workers: int = 2, timeout_s: float = 10.0) -> None:
    """Sets the shared pool's size and per-verdict timeout; call it before the
    first verdict (a running pool is stopped, and calls in flight fail)."""
    global _pool
    if workers < 1 or not timeout_s > 0:
        raise ValueError(f"configure: need workers >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
    with _pool_lock:
        if _pool is not None:
            _pool.close()
        _pool = None
        _settings.update(workers=workers, timeout_s=timeout_s)


def shared_pool() -> WorkerPool:
    """The process-wide pool behind math_verify_reward (started on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(f"{__name__}:equivalent", **_settings)
        return _pool


def _check(response, reference) -> None:
    for name, value in (("response", response), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"math_verify: {name} must be str, got {type(value).__name__}")


def math_verify_reward(response: str, reference: str) -> float:
    """1.0 when Math-Verify finds the response's answer equal to the
    reference, 0.0 otherwise or past the timeout (module docstring)."""
    _check(response, reference)
    _require()
    try:
        return 1.0 if shared_pool().call(response, reference) else 0.0
    except CallTimeout:
        _log.warning("math_verify: verdict timed out after %s s; scored 0.0",
                     shared_pool().timeout_s)
        return 0.0


def math_verify_rewards(pairs) -> list:
    """math_verify_reward for each (response, reference), in parallel."""
    pairs = [tuple(p) for p in pairs]
    for response, reference in pairs:
        _check(response, reference)
    _require()
    out = []
    for result in shared_pool().map(pairs):
        if isinstance(result, CallTimeout):
            _log.warning("math_verify: verdict timed out; scored 0.0")
            out.append(0.0)
        elif isinstance(result, Exception):
            raise result
        else:
            out.append(1.0 if result else 0.0)
    return out
