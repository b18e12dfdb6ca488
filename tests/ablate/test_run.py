"""The runner without training: commands, resumability (a cell/seed with eval.json is not rerun), failures,
and the CLI end to end with a fake runner in place of the `main` processes."""

import json
import os

import pytest

from mm_rlhf_jax.ablate import __main__ as cli
from mm_rlhf_jax.ablate import run
from mm_rlhf_jax.ablate.tables import TABLES

TABLE = TABLES.get("mm_dpo_beta")


class FakeRunner:
    """Writes eval.json with preference_accuracy = seed / 10 (+ 0.5 for the paper cell); records the jobs."""

    def __init__(self, fail_cell: str = ""):
        self.calls, self.fail_cell = [], fail_cell

    def __call__(self, job: run.Job) -> run.Outcome:
        self.calls.append((job.cell, job.seed))
        if job.cell == self.fail_cell:
            return run.Outcome(1, "Traceback: the fake failure")
        os.makedirs(job.workdir, exist_ok=True)
        value = job.seed / 10 + (0.5 if job.cell == "paper" else 0.0)
        with open(job.eval_path, "w") as f:
            json.dump({"preference_accuracy": value, "greedy_accuracy": 0.5}, f)
        return run.Outcome(0)


def test_command_has_preset_overrides_seed_flags_then_extra(tmp_path):
    (job,) = run.plan(TABLE, cells=["released"], seeds=[7], root=str(tmp_path), extra=["--config.train.steps=3"])
    assert job.workdir == os.path.join(str(tmp_path), "mm_dpo_beta", "released", "seed_7")
    cmd = list(job.command)
    assert cmd[1:4] == ["-m", "mm_rlhf_jax.main", f"--config={os.path.join(run.REPO, 'configs/mm_dpo.py:tiny')}"]
    assert cmd[4] == f"--workdir={job.workdir}" and cmd[5] == "--config.dpo.beta_mode=released"
    assert {"--config.seed=7", "--config.data.seed=7", "--config.data.synthetic_seed=7",
            "--config.warm_start.seed=7"} <= set(cmd)
    assert cmd[-1] == "--config.train.steps=3"  # extra flags last: they win


def test_unknown_cell_names_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="constant"):
        run.plan(TABLE, cells=["nope"], seeds=[0], root=str(tmp_path))


def test_cells_with_eval_json_are_not_rerun(tmp_path):
    jobs = run.plan(TABLE, cells=["constant", "paper"], seeds=[0, 1], root=str(tmp_path))
    first = FakeRunner()
    run.run_jobs([j for j in jobs if (j.cell, j.seed) == ("paper", 1)], runner=first, log=lambda _: None)
    assert first.calls == [("paper", 1)]
    second = FakeRunner()
    status = run.run_jobs(jobs, runner=second, log=lambda _: None)
    assert second.calls == [("constant", 0), ("constant", 1), ("paper", 0)]
    assert status == {("constant", 0): "done", ("constant", 1): "done", ("paper", 0): "done", ("paper", 1): "skipped"}
    third = FakeRunner()
    assert set(run.run_jobs(jobs, runner=third, log=lambda _: None).values()) == {"skipped"} and not third.calls


def test_a_failed_run_does_not_stop_the_others(tmp_path):
    jobs = run.plan(TABLE, cells=None, seeds=[0], root=str(tmp_path))
    lines = []
    status = run.run_jobs(jobs, runner=FakeRunner(fail_cell="released"), log=lines.append)
    assert status == {("constant", 0): "done", ("released", 0): "failed", ("paper", 0): "done"}
    assert any("failed" in line and "the fake failure" in line for line in lines)
    assert set(run.read_evals(jobs)) == {"constant", "released", "paper"} and run.read_evals(jobs)["released"] == {}


def test_cli_runs_and_reports_with_a_fake_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "subprocess_runner", FakeRunner())
    rc = cli.main(["mm_dpo_beta", "--workdir", str(tmp_path), "--seeds", "2", "--", "--config.train.steps=2"])
    assert rc == 0
    data = json.load(open(tmp_path / "mm_dpo_beta.json"))
    assert data["run"]["seeds"] == [0, 1] and data["run"]["extra"] == ["--config.train.steps=2"]
    assert data["cells"]["paper"]["metrics"]["preference_accuracy"]["values"] == {"0": 0.5, "1": 0.6}
    verdicts = {(c["a"], c["op"], c["b"]): c for c in data["comparisons"]}
    assert verdicts[("paper:preference_accuracy", ">", "constant:preference_accuracy")]["seeds_agree"] == 2
    assert verdicts[("paper:greedy_accuracy", ">", "constant:greedy_accuracy")]["agrees"] is False  # a tie
    assert (tmp_path / "mm_dpo_beta.md").exists() and (tmp_path / "mm_dpo_beta.png").exists()
    assert "| paper | preference_accuracy | 0.550 ± 0.071 (n=2)" in capsys.readouterr().out


def test_paper_scale_prints_aot_and_main_commands(tmp_path, capsys):
    assert cli.main(["longpo", "--scale", "paper", "--cells", "sft_rejected", "--seeds", "0,3",
                     "--workdir", "gs://bucket/abl", "--", "--config.model.init_from=/ckpt/m"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("python -m mm_rlhf_jax.aot --config=configs/longpo.py:mistral_7b_128k "
                                                   "--topology=v5p:2x2x4 --config.longpo.lam=0.0")
    assert "--config.longpo.nll_tokens=responses" in lines[0] and lines[0].endswith("--config.model.init_from=/ckpt/m")
    assert lines[2].startswith("python -m mm_rlhf_jax.main --config=configs/longpo.py:mistral_7b_128k "
                               "--workdir=gs://bucket/abl/longpo/sft_rejected/seed_3")
    assert "--config.seed=3" in lines[2] and not os.path.exists("gs:")


def test_a_tiny_only_cell_prints_why_instead_of_paper_commands(tmp_path, capsys):
    assert cli.main(["mmrlhf_rm", "--scale", "paper", "--cells", "scalar,raw_reasons", "--seeds", "1",
                     "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "--config.reward.mode=scalar" in lines[0] and "scalar/seed_0" in lines[1]
    assert lines[2].startswith("# raw_reasons: no paper-scale run (") and "synthetic_critiques" not in lines[2]
