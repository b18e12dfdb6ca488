"""What an ablation table is: a preset, the eval.json figures it reads, its cells and the paper's claims.

    Table(name="mm_dpo_beta", algorithm="mm_dpo", metrics=("preference_accuracy",),
          cells=(Cell("constant", {"dpo.beta_mode": "constant"}), Cell("paper", {"dpo.beta_mode": "paper"})),
          comparisons=(compare("paper:preference_accuracy", ">", "constant:preference_accuracy", "MM-RLHF Fig. 12a"),))

A comparison is between two (cell, metric) figures, so one cell can compare two of its own figures (Align-Pro's
reward with and without the prompter, both in one eval.json). The paper's figures are on the paper's
benchmarks, not ours: the report sets them beside ours and judges only the direction.
"""

import dataclasses
import operator
from typing import Any, Callable

# The directions a paper states; ">=" / "<=" are for "does not help" claims, where a tie agrees.
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}


@dataclasses.dataclass(frozen=True)
class PaperValue:
    value: float
    source: str  # provenance as research/papers.md gives it, e.g. "MM-RLHF Table 4 [S]"


@dataclasses.dataclass(frozen=True)
class Cell:
    label: str  # also the folder name: DIR/<table>/<label>/seed_<s>
    overrides: dict[str, Any]  # dotted config key -> value, on top of the preset (both scales)
    paper: dict[str, PaperValue] = dataclasses.field(default_factory=dict)  # metric -> the paper's figure
    # Only at paper scale: what the paper preset additionally needs for this cell to mean the same thing.
    paper_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Non-empty: why the cell has no paper-scale run (the knob only exists on the tiny task); printed instead.
    tiny_only: str = ""
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Ref:
    cell: str
    metric: str

    def __str__(self) -> str:
        return f"{self.cell}:{self.metric}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    a: Ref
    op: str  # an OPS key: the paper says `a op b`
    b: Ref
    source: str  # where the paper says it

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b}"


def compare(a: str, op: str, b: str, source: str) -> Comparison:
    """Comparison from "cell:metric" strings."""
    if op not in OPS:
        raise ValueError(f"unknown direction {op!r}; use one of {sorted(OPS)}")
    (ac, am), (bc, bm) = a.split(":", 1), b.split(":", 1)
    return Comparison(Ref(ac, am), op, Ref(bc, bm), source)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    algorithm: str  # configs/<algorithm>.py
    preset: str  # the CPU preset (tiny scale)
    paper_preset: str  # the paper-scale preset
    topology: str  # the TPU topology the paper preset is sized for (python -m mm_rlhf_jax.aot)
    metrics: tuple[str, ...]  # eval.json keys the table reads
    cells: tuple[Cell, ...]
    comparisons: tuple[Comparison, ...] = ()
    notes: tuple[str, ...] = ()  # what is missing or differs from the paper

    def __post_init__(self):
        labels = [c.label for c in self.cells]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: duplicate cell labels {labels}")
        for c in self.cells:
            unknown = set(c.paper) - set(self.metrics)
            if unknown:
                raise ValueError(f"{self.name}/{c.label}: paper figures for metrics not read {sorted(unknown)}")
        for cmp in self.comparisons:
            for ref in (cmp.a, cmp.b):
                if ref.cell not in labels or ref.metric not in self.metrics:
                    raise ValueError(f"{self.name}: comparison {cmp} names {ref}, not a (cell, metric) of the table")

    def cell(self, label: str) -> Cell:
        for c in self.cells:
            if c.label == label:
                return c
        raise KeyError(f"table {self.name} has no cell {label!r}; cells: {[c.label for c in self.cells]}")

    def config_spec(self, scale: str) -> str:
        """configs/<algorithm>.py:<preset> of `scale` (a SCALES name), relative to the repository root."""
        if scale not in SCALES:
            raise KeyError(f"unknown scale {scale!r}; use one of {sorted(SCALES)}")
        return f"configs/{self.algorithm}.py:{getattr(self, SCALES[scale])}"

    def overrides(self, cell: Cell, scale: str) -> dict[str, Any]:
        """The cell's config overrides at `scale` (paper scale adds cell.paper_overrides)."""
        return {**cell.overrides, **(cell.paper_overrides if scale == "paper" else {})}


# scale -> the Table field naming its preset
SCALES = {"tiny": "preset", "paper": "paper_preset"}
