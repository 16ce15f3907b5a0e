"""scripts/gpu_check.sh and its report (issue 30), on the CPU: argument handling, failing loudly without CUDA, and
the report assembled from fake results (a missing or failed piece is FAILED, never left out)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "scripts" / "gpu_check_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--only", "parity,warp"], "unknown piece 'warp'"),
        (["--model-config", "/nonexistent.json"], "does not exist"),
        (["--out"], "--out needs a folder"),
    ],
)
def test_bad_arguments_stop_with_status_2(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr


def test_help_says_what_it_measures():
    result = _run("--help")
    assert result.returncode == 0 and "validate_8b" in result.stderr and "serve16" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_fails_loudly_and_measures_nothing(tmp_path):
    result = _run("--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "FAILED: CUDA is not available" in result.stderr
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_the_python_pieces_refuse_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="CUDA is not available"):
        report.main(["device", "--out", str(tmp_path)])


def _fake_results(folder: Path, *, fail: str | None = None, missing: str | None = None) -> None:
    for piece, _, _kind in report.PIECES:
        if piece == missing:
            continue
        (folder / f"{piece}.rc").write_text("1\n" if piece == fail else "0\n")
        if piece == "device":
            (folder / "device.json").write_text(json.dumps({"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1}))
        elif piece == "parity":
            data = {"logprob_max_abs_diff": 2e-6, "logprob_atol": report.LOGPROB_ATOL, "passed": True}
            (folder / "parity.json").write_text(json.dumps(data))
        log = f"loading\n| model | op |\n|---|---|\n| {piece} | train |\ndone {piece}\n"
        (folder / f"{piece}.log").write_text(log)


def test_a_complete_run_assembles_one_report_naming_the_device(tmp_path):
    _fake_results(tmp_path)
    text, passed = report.assemble(tmp_path)
    assert passed and text.startswith("# gpu_check on NVIDIA H100 80GB HBM3")
    assert "| validate_8b | train |" in text and "| ppo_8b | train |" in text  # tables keep only their rows
    assert "done serve16" in text  # logs shown by their tail
    assert "logprob_max_abs_diff: 2e-06" in text and "FAILED" not in text
    assert f"{report.LOGPROB_ATOL} nats" in text  # the tolerances are stated


@pytest.mark.parametrize(("fail", "missing"), [("validate_8b", None), (None, "serve16"), (None, "device")])
def test_a_failed_or_missing_piece_is_marked_and_fails_the_report(tmp_path, fail, missing):
    _fake_results(tmp_path, fail=fail, missing=missing)
    assert report.main(["assemble", str(tmp_path)]) == 1
    text = (tmp_path / "report.md").read_text()
    name = fail or missing
    section = text.split(f"## {dict((p, t) for p, t, _ in report.PIECES)[name]}")[1]
    assert section.lstrip().startswith("**FAILED**")
    assert text.rstrip().endswith("**Result: FAILED: see the pieces marked FAILED.**")
    if missing == "device":
        assert text.startswith("# gpu_check on UNKNOWN DEVICE")


def test_a_parity_beyond_tolerance_fails_even_with_status_0(tmp_path):
    _fake_results(tmp_path)
    (tmp_path / "parity.json").write_text(json.dumps({"logprob_max_abs_diff": 0.5, "passed": False}))
    text, passed = report.assemble(tmp_path)
    assert not passed and "**FAILED** (exit status 0)" in text


def test_the_pieces_fit_the_ten_minutes():
    limits = [int(line.split()[2]) for line in SCRIPT.read_text().splitlines() if line.startswith("run ")]
    assert len(limits) == len(report.PIECES) and sum(limits) <= 600


def test_the_assembler_runs_as_a_script(tmp_path):
    _fake_results(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check_report.py"), "assemble", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and (tmp_path / "report.md").is_file()
