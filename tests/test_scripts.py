"""The scripts under scripts/ import the library (and lora_rlhf.testing.bench) as any user code does: none edits
the import path, and each one's `--help` runs from its own file without its folder on the path (issue 26)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
SCRIPTS = sorted(SCRIPTS_DIR.rglob("*.py"))
# What scripts/trl_peer/trl_ppo_peak.py sets with os.environ.setdefault when imported; pinned here so the
# test process's environment is restored afterwards.
PEER_ENV = ("TRL_EXPERIMENTAL_SILENCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def test_no_script_edits_the_import_path():
    assert SCRIPTS
    edits = [str(path.relative_to(SCRIPTS_DIR)) for path in SCRIPTS if "sys.path" in path.read_text()]
    assert edits == []


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(SCRIPTS_DIR)))
def test_every_script_runs_its_help_without_its_folder_on_the_path(path, monkeypatch, capsys):
    for name in PEER_ENV:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    assert str(path.parent) not in sys.path
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
