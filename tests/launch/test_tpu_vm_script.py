"""launch/tpu_vm.sh against a stand-in gcloud that runs each worker command locally (in a separate HOME):
setup installs through uv with the tested Python and jax[tpu]; run starts the entry point with the exact
arguments, detached, and follows the log; stop sends SIGTERM to the recorded process."""

import os
import shutil
import stat
import subprocess

from tests.launch.runs import ROOT

GCLOUD = r"""#!/usr/bin/env bash
echo "gcloud $*" >> "$FAKE_CALLS"
verb=""; command=""
for a in "$@"; do
  case "$a" in
    --command=*) command="${a#--command=}" ;;
    create|delete|ssh|scp) [[ -z "$verb" ]] && verb="$a" ;;
  esac
done
if [[ "$verb" == ssh && -n "$command" ]]; then HOME="$FAKE_HOME" bash -c "$command"; fi
"""

UV = r"""#!/usr/bin/env bash
echo "uv $*" >> "$FAKE_CALLS"
if [[ "$1" == venv ]]; then
  mkdir -p .venv/bin
  cat > .venv/bin/python <<'EOF'
#!/usr/bin/env bash
if [[ "$1" == -c ]]; then echo "3.11.9 jax 0.10.2"; exit 0; fi
printf '%s\n' "$@" > "$FAKE_ARGS"
echo "training with $# arguments"
sleep 0.5
EOF
  chmod +x .venv/bin/python
fi
"""


# The worker installs bubblewrap when it lacks bwrap: recorded, not run (this host may have no sudo).
SUDO = r"""#!/usr/bin/env bash
echo "sudo $*" >> "$FAKE_CALLS"
"""


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_setup_run_and_stop_on_a_stand_in_slice(tmp_path):
    bin_dir, home, checkout = tmp_path / "bin", tmp_path / "home", tmp_path / "checkout"
    for d in (bin_dir, home, checkout):
        d.mkdir()
    _script(bin_dir / "gcloud", GCLOUD)
    _script(bin_dir / "uv", UV)
    _script(bin_dir / "sudo", SUDO)
    (checkout / "setup.py").write_text("# the checkout that setup ships\n")
    calls, args = tmp_path / "calls.txt", tmp_path / "args.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_CALLS": str(calls),
           "FAKE_HOME": str(home), "FAKE_ARGS": str(args), "TPU_NAME": "slice", "ZONE": "zone-a", "PROJECT": "p"}
    script = os.path.join(ROOT, "launch", "tpu_vm.sh")
    sh = lambda *a: subprocess.run(["bash", script, *a], cwd=checkout, env=env, capture_output=True, text=True,
                                   timeout=120)

    out = sh("setup")
    assert out.returncode == 0, out.stderr
    assert (home / "mm_rlhf_jax" / "setup.py").exists()  # the checkout was unpacked on the worker
    log = calls.read_text()
    assert "uv venv --allow-existing --python 3.11 .venv" in log
    assert "uv pip install --python .venv/bin/python -e .[gcs] jax[tpu]==0.10.2" in log
    assert "3.11.9 jax 0.10.2" in out.stdout
    if shutil.which("bwrap") is None:  # the code sandbox's bubblewrap, from the image's packages
        assert "sudo apt-get install -y -q bubblewrap" in log

    out = sh("run", "configs/mm_dpo.py:llava_ov_7b", "gs://bucket/runs/x", "--config.eval.note=two words")
    assert out.returncode == 0, out.stderr
    assert args.read_text().splitlines() == ["-m", "mm_rlhf_jax.main", "--config", "configs/mm_dpo.py:llava_ov_7b",
                                             "--workdir", "gs://bucket/runs/x", "--config.eval.note=two words"]
    assert "training with 7 arguments" in out.stdout  # run follows worker 0's log until the process exits
    assert (home / "mm_rlhf_jax_run.pid").read_text().strip().isdigit()
    assert "--worker=all" in calls.read_text()

    out = sh("stop")
    assert out.returncode == 0, out.stderr
    assert sh("bogus").returncode == 2
