"""One run directory, one writer (issue 12): a second process is refused at once, naming the holder's PID;
a holder killed with SIGKILL leaves nothing that blocks the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.pipeline.lock import LOCK_NAME, run_dir_lock

TINY = str(RECIPES / "tiny-test.yaml")
_HOLD = (
    "import sys, time\n"
    "from lora_rlhf.pipeline.lock import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture()
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/run; killed (if still alive) after the test."""
    run = tmp_path / "run"
    run.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield run, process
    if process.poll() is None:
        process.kill()
    process.wait()


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)  # no cleanup of any kind runs in the holder
    process.wait()


def test_a_second_writer_is_refused_with_the_holders_pid_until_the_holder_dies(holder):
    run, process = holder
    with (
        pytest.raises(LoraRlhfError, match=f"in use by another lora-rlhf process \\(pid {process.pid}\\)"),
        run_dir_lock(run),
    ):
        pass
    _kill(process)
    assert (run / LOCK_NAME).read_text().strip() == str(process.pid)  # the dead holder's file is still there
    with run_dir_lock(run):
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("command", ["sft", "ppo", "pipeline"])
def test_stage_commands_fail_in_one_line_naming_the_holder(holder, command, capsys):
    run, process = holder
    assert main([command, "--config", TINY, "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lora-rlhf {command}: error: ") and f"pid {process.pid}" in err and "\n" not in err
    assert not (run / "recipe.yaml").exists()  # refused before writing anything


def test_eval_fails_in_one_line_naming_the_holder(holder, capsys):
    run, process = holder
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "tiny:llama"}}))
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lora-rlhf eval: error: ") and f"pid {process.pid}" in err and "\n" not in err


def test_the_next_command_runs_after_the_holder_is_killed(holder, capsys):
    run, process = holder
    _kill(process)
    # Gets past the lock: it then fails on a missing recipe, which is read only once the lock is held.
    assert main(["sft", "--config", "missing.yaml", "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "in use" not in err and "missing.yaml" in err


def test_other_processes_of_a_multi_process_launch_take_no_lock(holder):
    run, _ = holder
    with run_dir_lock(run, main_process=False):
        pass


def test_the_lock_is_released_when_the_command_ends(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with run_dir_lock(run):
        pass
    with run_dir_lock(run):
        pass
