"""A corpus of malformed inputs through the real CLI (issue 12, item 3): every one is ONE line on stderr.

Each case runs `lora_rlhf.cli.main.main([...])` in-process on the tiny recipe with a bad data file, a bad
override, a bad recipe or a bad output directory, and must end with exit code 2, one stderr line
`lora-rlhf <command>: error: ...` naming the file, the line and the value at fault, nothing after it, and
no adapter, eval.json or report.md left behind. `outcome()` sorts a run into one-line, traceback, silent
(exit 0), half-written (an output left that looks finished) or misleading (one line, but not naming the
fault); `python tests/test_bad_inputs.py` prints the totals, which is how issue 12 measured them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES

TINY = str(RECIPES / "tiny-test.yaml")
GOOD_DEMOS = [{"prompt": f"say {i}", "completion": f"ok {i}"} for i in range(6)]
GOOD_RANKS = [{"prompt": f"pick {i}", "responses": [f"a{i}", f"b{i}", f"c{i}"], "ranks": [0, 2, 1]} for i in range(4)]
# Outputs that must not exist after a failed command: they would look like a finished stage.
FINISHED = ("adapters/sft", "adapters/reward", "eval.json", "report.md")


def _lines(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _msgs(*roles: str) -> dict:
    return {"messages": [{"role": role, "content": f"{role} says hi"} for role in roles]}


@dataclasses.dataclass
class Case:
    id: str
    args: list[str]  # command and overrides; {tmp} is the case's folder, {bad} its bad file
    expect: list[str]  # every piece must appear in the error line
    bad: bytes | None = None  # contents of {bad}
    name: str = "bad.jsonl"  # file name of {bad}
    setup: str | None = None  # "file", "under_file", "dir", "readonly": what {tmp}/out is


def _sft(*overrides: str) -> list[str]:
    return ["sft", "demo.enabled=false", "sft.data.path={bad}", *overrides]


def _rm(*overrides: str) -> list[str]:
    return ["rm", "demo.enabled=false", "rm.init=fresh", "rm.on_bad_row=error", "rm.data.path={bad}", *overrides]


def _sft_rows(rows: list, *expect: str, **kwargs) -> Case:
    return Case("", _sft(), ["bad.jsonl", *expect], _lines(rows), **kwargs)


def _rm_rows(rows: list, *expect: str, ties: str = "error") -> Case:
    return Case("", _rm(f"rm.ties={ties}"), ["bad.jsonl", *expect], _lines(rows))


def _generate(*args: str) -> list[str]:
    """`generate` on the tiny base: no recipe, no run directory (see _prepare)."""
    return ["generate", "--base", "tiny:llama", "--quantization", "none", "--device", "cpu", *args]


def _bytes_case(tool: list[str], data: bytes, *expect: str, name: str = "bad.jsonl") -> Case:
    return Case("", tool, [name, *expect], data, name=name)


GOOD = _lines(GOOD_DEMOS)
FIRST = _lines(GOOD_DEMOS[:1])
CASES = {
    # ---------------------------------------------------------------- files that are not JSON lines
    "non_utf8_byte": _bytes_case(_sft(), FIRST + b'{"prompt": "caf\xe9", "completion": "x"}\n', "line 2"),
    "non_utf8_line_5": _bytes_case(_sft(), GOOD + b'{"prompt": "\xff\xfe", "completion": "x"}\n', "line 7", "UTF-8"),
    "not_json": _bytes_case(_sft(), FIRST + b"this is not json\n", "line 2", "'this is not json'"),
    "truncated_last_line": _bytes_case(_sft(), GOOD + b'{"prompt": "cut', "line 7", '\'{"prompt": "cut\''),
    "trailing_comma": _bytes_case(_sft(), b'{"prompt": "a", "completion": "b",}\n', "line 1"),
    "empty_file": _bytes_case(_sft(), b"", "empty"),
    "blank_lines_only": _bytes_case(_sft(), b"\n\n  \n", "no rows"),
    "row_is_list": _bytes_case(_sft(), GOOD + b"[1, 2]\n", "line 7", "object"),
    "row_is_string": _bytes_case(_sft(), b'"hello"\n' + GOOD, "line 1", "object"),
    "row_is_number": _bytes_case(_sft(), GOOD + b"42\n", "line 7", "object"),
    "json_array_bad_item": _bytes_case(_sft(), b'[{"prompt": "a", "completion": "b"}, 7]', "row 1", name="bad.json"),
    "json_not_json": _bytes_case(_sft(), b"{oops", "line 1", name="bad.json"),
    "json_empty_array": _bytes_case(_sft(), b"[]", "no rows", name="bad.json"),
    "parquet_not_parquet": _bytes_case(_sft(), b"not parquet at all", "bad.parquet", name="bad.parquet"),
    "txt_extension": _bytes_case(["sft", "demo.enabled=false", "sft.data.path={bad}"], GOOD, ".jsonl", name="bad.txt"),
    "nested_200k_deep": _bytes_case(_sft(), FIRST + b"[" * 200_000 + b"]" * 200_000 + b"\n", "line 2", "too deeply"),
    "json_array_nested_deep": _bytes_case(
        _sft(), b"[" + b"[" * 200_000 + b"]" * 200_000 + b"]", "the file", "too deeply", name="bad.json"
    ),
    "data_is_directory": Case(
        "", ["sft", "demo.enabled=false", "sft.data.path={tmp}/dir.jsonl"], ["is a directory"], setup="data_dir"
    ),
    # ---------------------------------------------------------------- demonstration rows
    "retyped_column": _sft_rows([*GOOD_DEMOS, {"prompt": "x", "completion": 5}], "line 7", "'completion'", "int"),
    "retyped_prompt_late": _sft_rows([*GOOD_DEMOS, {"prompt": ["a"], "completion": "b"}], "line 7", "'prompt'"),
    "missing_completion": _sft_rows([*GOOD_DEMOS[:2], {"prompt": "x"}], "line 3", "'completion'"),
    "empty_completion": _sft_rows([*GOOD_DEMOS[:2], {"prompt": "x", "completion": " "}], "line 3", "empty"),
    "null_prompt": _sft_rows([{"prompt": None, "completion": "x"}], "line 1", "'prompt'"),
    "messages_not_list": _sft_rows([*GOOD_DEMOS[:3], {"messages": "hi"}], "line 4", "'messages'"),
    "messages_last_user": _sft_rows([*GOOD_DEMOS[:3], _msgs("user")], "line 4", "'user'"),
    "messages_no_user_turn": _sft_rows([*GOOD_DEMOS[:3], _msgs("assistant")], "line 4", "'messages'", "'user'"),
    "messages_system_only_prompt": _sft_rows(
        [*GOOD_DEMOS[:3], _msgs("system", "assistant")], "line 4", "'messages'", "'user'"
    ),
    "role_robot": _sft_rows([*GOOD_DEMOS[:3], _msgs("user", "robot", "assistant")], "line 4", "'robot'"),
    "role_human_first": _sft_rows([_msgs("human", "assistant"), *GOOD_DEMOS], "line 1", "'human'"),
    "role_capitalised": _sft_rows([*GOOD_DEMOS, _msgs("system", "User", "assistant")], "line 7", "'User'"),
    "role_tool": _sft_rows([*GOOD_DEMOS[:1], _msgs("user", "tool", "assistant")], "line 2", "'tool'"),
    "surrogate_prompt": _bytes_case(
        _sft(), FIRST + b'{"prompt": "hi \\ud800", "completion": "x"}\n', "line 2", "'prompt'", "surrogate"
    ),
    "surrogate_completion": _bytes_case(
        _sft(), FIRST + b'{"prompt": "hi", "completion": "\\udfff x"}\n', "line 2", "'completion'", "surrogate"
    ),
    "surrogate_message": _bytes_case(
        _sft(),
        FIRST + b'{"messages": [{"role": "user", "content": "\\ud83d"}, {"role": "assistant", "content": "x"}]}\n',
        "line 2",
        "'messages[0].content'",
        "surrogate",
    ),
    # ---------------------------------------------------------------- ranking rows
    "all_identical": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": ["same"] * 3, "ranks": [0, 1, 2]}], "line 5", "identical"
    ),
    "chosen_is_rejected": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "chosen": "same", "rejected": "same"}], "line 5", "identical"
    ),
    "identical_skip_pairs": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": ["s", "s"], "ranks": [0, 1]}],
        "line 5",
        "identical",
        ties="skip_pairs",
    ),
    "hh_identical": _rm_rows(
        [*GOOD_RANKS, {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: yo"}],
        "line 5",
        "identical",
    ),
    "identical_once_truncated": Case(
        "",
        _rm("rm.ties=error", "rm.max_length=40"),
        ["bad.jsonl", "line 5", "identical in the", "max_length 40", "raise rm.max_length"],
        _lines([*GOOD_RANKS, {"prompt": "p", "chosen": "x " * 60 + "good", "rejected": "x " * 60 + "bad"}]),
    ),
    "ranks_not_permutation": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 2]}], "line 5", "[0, 2]"
    ),
    "ranks_length": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1, 2]}], "line 5", "'ranks'"
    ),
    "one_response": _rm_rows([*GOOD_RANKS, {"prompt": "p", "responses": ["a"], "ranks": [0]}], "line 5", "K = 1"),
    "ranks_strings": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": ["a", "b"], "ranks": ["0", "1"]}], "line 5", "'ranks'"
    ),
    "rank_retyped": _rm_rows(
        [*GOOD_RANKS, {"prompt": "p", "responses": "ab", "ranks": [0, 1]}], "line 5", "'responses'"
    ),
    "hh_no_assistant": _rm_rows([{"chosen": "hello", "rejected": "bye"}], "line 1", "Assistant"),
    "surrogate_response": _bytes_case(
        _rm(), _lines(GOOD_RANKS) + b'{"prompt": "p", "chosen": "a", "rejected": "b \\ud800"}\n', "line 5", "'rejected'"
    ),
    "surrogate_ranked_prompt": _bytes_case(
        _rm(),
        _lines(GOOD_RANKS) + b'{"prompt": "\\udc00", "responses": ["a", "b"], "ranks": [0, 1]}\n',
        "line 5",
        "'prompt'",
        "surrogate",
    ),
    "rankings_non_utf8": _bytes_case(_rm(), _lines(GOOD_RANKS) + b'{"prompt": "\xc3("}\n', "line 5", "UTF-8"),
    # ---------------------------------------------------------------- recipe values
    "lr_nan": Case("", ["sft", "sft.train.learning_rate=.nan"], ["sft.train.learning_rate", "nan"]),
    "lr_inf": Case("", ["sft", "sft.train.learning_rate=.inf"], ["sft.train.learning_rate", "inf"]),
    "lr_negative_exponent": Case("", ["sft", "sft.train.learning_rate=-1e-4"], ["sft.train.learning_rate", "> 0"]),
    "rm_lr_string_nan": Case("", ["rm", "rm.train.learning_rate=nan"], ["rm.train.learning_rate", "nan"]),
    "grad_norm_nan": Case("", ["sft", "sft.train.max_grad_norm=.nan"], ["sft.train.max_grad_norm", "nan"]),
    "head_lr_inf": Case(
        "",
        ["rm", "demo.enabled=false", "rm.init=fresh", "rm.data.path={ranks}", "rm.head_learning_rate=.inf"],
        ["rm.head_learning_rate", "inf is not a finite number"],
    ),
    "device_banana": Case("", ["sft", "model.device=banana"], ["model.device", "banana"]),
    "device_cuda_7": Case("", ["sft", "model.device=cuda:x"], ["model.device", "cuda:x"]),
    "recipe_is_directory": Case("", ["sft", "--config", "{tmp}"], ["is a directory"]),
    "recipe_non_utf8": _bytes_case(
        ["sft", "--config", "{bad}"], b"model:\n  name_or_path: caf\xe9\n", "UTF-8", name="bad.yaml"
    ),
    "sft_max_length_past_positions": Case(
        "", _sft("sft.max_length=4096"), ["sft.max_length", "4096", "position limit (512"], GOOD
    ),
    "rm_max_length_past_positions": Case(
        "", _rm("rm.max_length=513"), ["rm.max_length", "513", "position limit (512"], _lines(GOOD_RANKS)
    ),
    # ---------------------------------------------------------------- generate's own inputs (issue 29)
    "generate_surrogate_prompt": Case(
        "", _generate("--prompt", "ok", "--prompt", "hi \udcff", "--max-new-tokens", "2"), ["--prompt 2", "surrogate"]
    ),
    "generate_surrogate_system": Case(
        "", _generate("--prompt", "hi", "--system", "\ud800", "--max-new-tokens", "2"), ["--system", "surrogate"]
    ),
    "generate_surrogate_stop": Case(
        "", _generate("--prompt", "hi", "--stop", "x\udfff", "--max-new-tokens", "2"), ["--stop", "surrogate"]
    ),
    "generate_prompts_file_non_utf8": _bytes_case(
        _generate("--prompts-file", "{bad}", "--max-new-tokens", "2"),
        b"hi\ncaf\xe9\n",
        "line 2",
        "UTF-8",
        name="bad.txt",
    ),
    "generate_max_new_tokens_past_positions": Case(
        "", _generate("--prompt", "hi", "--max-new-tokens", "4096"), ["--max-new-tokens", "4096", "context of 512"]
    ),
    # ---------------------------------------------------------------- training that diverges
    "sft_diverges": Case(
        "",
        [*_sft("sft.train.learning_rate=1.0e+30", "sft.train.max_grad_norm=0")],
        ["sft stopped at step 2", "held-out loss is nan"],
        GOOD,
    ),
    "sft_overflows": Case(
        "",
        [*_sft("sft.train.learning_rate=1.0e+38", "sft.train.max_grad_norm=0")],
        ["sft stopped at step", "not finite"],
        GOOD,
    ),
    "rm_diverges": Case(
        "",
        [*_rm("rm.train.learning_rate=1.0e+38", "rm.train.max_grad_norm=0", "rm.train.batch_size=1")],
        ["rm stopped at step", "not finite"],
        _lines(GOOD_RANKS),
    ),
    # ---------------------------------------------------------------- output directories
    "output_is_file": Case("", ["sft"], ["{tmp}/out", "not a directory"], setup="file"),
    "output_under_file": Case("", ["sft"], ["{tmp}/blocker", "not a directory"], setup="under_file"),
    "output_readonly": Case("", ["sft"], ["{tmp}/out", "not writable"], setup="readonly"),
}
if not importlib.util.find_spec("torch") or not __import__("torch").cuda.is_available():
    CASES["device_cuda_missing"] = Case("", ["sft", "model.device=cuda"], ["model.device", "'cuda'", "CUDA"])
for _key, _case in CASES.items():
    _case.id = _key


@dataclasses.dataclass
class Outcome:
    kind: str  # one-line, traceback, silent, half-written, misleading
    code: int | None
    err: str


def _fill(text: str, tmp: Path) -> str:
    text = text.replace("{tmp}", str(tmp)).replace("{bad}", str(tmp / "bad"))
    text = text.replace("{good}", str(tmp / "good.jsonl"))
    text = text.replace("{ranks}", str(tmp / "ranks.jsonl"))
    return text


def _prepare(case: Case, tmp: Path) -> tuple[list[str], Path]:
    """Write the case's files under `tmp`; return the CLI arguments and the run directory."""
    (tmp / "good.jsonl").write_bytes(GOOD)
    (tmp / "ranks.jsonl").write_bytes(_lines(GOOD_RANKS))
    bad = tmp / case.name
    if case.bad is not None:
        bad.write_bytes(case.bad)
    run = tmp / "run"
    if case.setup == "file":
        run = tmp / "out"
        run.write_text("a file\n")
    elif case.setup == "under_file":
        (tmp / "blocker").write_text("a file\n")
        run = tmp / "blocker" / "out"
    elif case.setup == "readonly":
        run = tmp / "out"
        run.mkdir()
    elif case.setup == "data_dir":
        (tmp / "dir.jsonl").mkdir()
    args = [_fill(a, tmp).replace(str(tmp / "bad"), str(bad)) for a in case.args]
    if args[0] == "generate":  # takes a base, not a recipe, and writes no run directory
        return args, run
    if "--config" not in args:
        args[1:1] = ["--config", TINY]
    return [*args[:1], "--output-dir", str(run), *args[1:]], run


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make `folder` refuse writes as a read-only directory would, even for root (chmod does not stop root)."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path) -> bool:
        return str(os.fspath(path)).startswith(str(folder) + os.sep)

    def fake_open(path, flags, *args, **kwargs):
        if refuse(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if refuse(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    os.open, os.mkdir = fake_open, fake_mkdir
    try:
        yield
    finally:
        os.open, os.mkdir = real_open, real_mkdir


def outcome(case: Case, tmp: Path, read_err) -> Outcome:
    """Run `case` through the CLI in `tmp`; `read_err()` returns what the command wrote on stderr."""
    args, run = _prepare(case, tmp)
    guard = _read_only(run) if case.setup == "readonly" else contextlib.nullcontext()
    try:
        with guard:
            code = main(args)
    except BaseException as exc:  # noqa: BLE001 - a traceback is what the corpus counts
        return Outcome("traceback", None, f"{type(exc).__name__}: {exc}".splitlines()[0])
    err = read_err()
    if code == 0:
        return Outcome("silent", code, err)
    if run.is_dir() and any((run / name).exists() for name in FINISHED):
        return Outcome("half-written", code, err)
    last = err.rstrip("\n").split("\n")[-1] if err.strip() else ""
    error_lines = [line for line in err.splitlines() if ": error: " in line]
    ok = (
        code == 2
        and len(error_lines) == 1
        and err.endswith(error_lines[0] + "\n")
        and last.startswith(f"lora-rlhf {args[0]}: error: ")
        and all(_fill(piece, tmp) in last for piece in case.expect)
    )
    return Outcome("one-line" if ok else "misleading", code, last or err)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line(case, tmp_path, capsys):
    result = outcome(case, tmp_path, lambda: capsys.readouterr().err)
    assert result.kind == "one-line", (result, case.expect)


@pytest.mark.parametrize("case_id", ["non_utf8_byte", "lr_nan", "output_is_file"])
def test_bad_input_as_a_subprocess(case_id, tmp_path):
    """The installed entry point too: exit 2, the error is stderr's last line, and no traceback."""
    case = CASES[case_id]
    args, _ = _prepare(case, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lora_rlhf.cli.main", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"lora-rlhf {args[0]}: error: ") and proc.stderr.endswith(last + "\n")
    assert all(_fill(piece, tmp_path) in last for piece in case.expect), last


def _totals() -> None:
    """Print each case's outcome and the totals (the issue's before/after figures)."""
    import logging
    import tempfile

    logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    counts: dict[str, int] = {}
    for case in CASES.values():
        buffer = io.StringIO()
        with (
            tempfile.TemporaryDirectory() as tmp,
            contextlib.redirect_stderr(buffer),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            result = outcome(case, Path(tmp), buffer.getvalue)
        counts[result.kind] = counts.get(result.kind, 0) + 1
        print(f"{case.id:<24} {result.kind:<12} {result.err.strip().splitlines()[-1][:150] if result.err else ''}")
    print("tried", len(CASES), ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    _totals()


def test_an_error_inside_a_progress_bar_is_still_the_last_line(monkeypatch, capsys):
    """A bar left open by the error (PPO's guard stops inside its loop) is cleared before the line, not after."""
    import gc

    from tqdm.auto import tqdm

    from lora_rlhf.cli import sft_cmd
    from lora_rlhf.errors import LoraRlhfError

    def stop_inside_a_bar(args):
        bar = tqdm(total=3, desc="sft: training sft")
        bar.update(1)
        raise LoraRlhfError("sft stopped at step 1: loss is nan")

    monkeypatch.setattr(sft_cmd, "run", stop_inside_a_bar)
    assert main(["sft"]) == 2
    gc.collect()  # an open bar prints its last state when collected
    err = capsys.readouterr().err
    assert err.endswith("lora-rlhf sft: error: sft stopped at step 1: loss is nan\n"), err[-200:]


@pytest.mark.parametrize("case_id", ["retyped_column", "role_robot", "all_identical", "not_json"])
def test_a_bad_local_file_fails_before_the_model_loads(case_id, tmp_path, capsys, monkeypatch):
    from lora_rlhf.pipeline import runner

    def no_model(recipe):
        raise AssertionError("the base model was loaded before the data was checked")

    monkeypatch.setattr(runner, "load_stack", no_model)
    result = outcome(CASES[case_id], tmp_path, lambda: capsys.readouterr().err)
    assert result.kind == "one-line", result
