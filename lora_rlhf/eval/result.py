"""eval.json's one owner: the typed result `lora-rlhf eval` writes and the report, the hub card, the ablation and
the pipeline's summary read (issue 26).

`write_eval_result` writes it (atomically), `read_eval_result` reads it back, a malformed or missing field being
a one-line LoraRlhfError naming the file and the key. The JSON layout is docs/design.md's ("eval.json"). Files
written before issue 26 still read: their best-of-N baseline keys `gold_sft_greedy` / `gold_sft_samples` (one
figure under two names) become `gold_sft`, and `gold_sft_sample` becomes `gold_random_sample`. Keys this version
does not know are ignored.

Scores are means over the held-out prompts (a prompt's score is the mean over its samples); model names are
eval's report names ("base", "sft", "ppo" for the policy, "dpo"); every interval is a (lo, hi) bootstrap
interval at `EvalResult.confidence`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import write_json

Interval = tuple[float, float]  # (lo, hi)
T = TypeVar("T")
_RERUN = "rerun `lora-rlhf eval` to write it again"


@dataclasses.dataclass
class PairAccuracy:
    """The RM's pairwise accuracy against one ordering of held-out rankings (the labels', or the gold judge's)."""

    accuracy: float | None  # fraction of untied pairs the RM orders right, a tie 1/2; None without any pair
    ci: Interval | None = None  # bootstrap over prompts (pairs of a prompt clustered); None without pairs
    pairs: int | None = None  # untied pairs counted; None where not measured here (source "metrics")


@dataclasses.dataclass
class RMAccuracy:
    """How well the reward model orders held-out responses (InstructGPT §3.5)."""

    source: Literal["rankings", "metrics"]  # measured on eval.rankings, or the rm stage's last logged figure
    labels: PairAccuracy  # against the labels ("metrics": the accuracy alone, None where nothing was logged)
    gold: PairAccuracy | None = None  # against the gold judge (rankings with a gold judge only)
    rows: int | None = None  # rankings only: rows scored
    skipped_rows: int | None = None  # rankings only: unusable rows skipped


@dataclasses.dataclass
class BestOfN:
    """N sft samples per prompt, the RM's favourite kept (Gao et al. 2022): is there anything for PPO to climb?"""

    n: int  # candidates per prompt
    temperature: float  # their sampling temperature
    reward: float  # mean RM score of the picks
    gold: float | None = None  # mean gold of the picks (gold fields: only with a gold judge)
    gold_ci: Interval | None = None  # interval of that mean
    gold_random_sample: float | None = None  # mean gold of all N×P candidates: what one random sft sample scores
    prompts: int | None = None  # the first `prompts` eval prompts (None in files from before it was recorded)
    candidates_from_eval_samples: bool | None = None  # the candidates were sft's eval samples, not drawn again
    gold_sft: float | None = (
        None  # sft's own gold on those prompts: greedy, or its eval samples' mean (temperature > 0)
    )
    gold_minus_sample_ci: Interval | None = None  # paired: each pick minus its prompt's mean candidate
    gold_minus_sft_ci: Interval | None = None  # paired: each pick minus sft's own gold on its prompt


@dataclasses.dataclass
class IFEvalSection:
    """IFEval (Zhou et al. 2023) on every model of the run; accuracies are fractions in [0, 1]."""

    prompts: int  # IFEval prompts answered
    accuracy: dict[str, dict[str, float]]  # model -> {prompt,instruction}_{strict,loose}
    headline: dict[str, float]  # model -> mean of prompt- and instruction-level strict accuracy (the cards' figure)
    accuracy_ci: dict[str, Interval]  # "<model>_<strict|loose>" -> interval of the prompt-level accuracy
    diff: dict[str, float]  # "<a>_minus_<b>_<strict|loose>" -> prompt-level accuracy difference
    diff_ci: dict[str, Interval]  # the same keys -> paired interval
    per_instruction: dict[str, dict[str, dict[str, float]]]  # model -> instruction id -> {count, strict, loose}
    max_new_tokens: int | None = None  # the answers' token budget
    decoding: str | None = None  # "greedy"
    chat_template: str | None = None  # how the prompts were rendered, in words
    responses: dict[str, str] | None = None  # model -> its answers file, relative to the run directory
    hit_max_new_tokens: dict[str, int] | None = None  # model -> answers that used the whole budget


@dataclasses.dataclass
class EvalResult:
    """Everything `lora-rlhf eval` measured. The held-out fields are None where only a benchmark ran (`eval
    --benchmark` on a run never evaluated); the gold fields need a gold judge (the demo task), the reward fields
    a reward role."""

    prompts: int | None = None  # held-out prompts every model answered
    temperature: float | None = None  # the answers' sampling temperature; 0 = greedy
    samples_per_prompt: int | None = None  # answers per prompt
    confidence: float | None = None  # level of every interval
    bootstrap_samples: int | None = None  # resamples of the prompts behind every interval
    gold: dict[str, float] | None = None  # model -> mean gold score
    gold_mean_ci: dict[str, Interval] | None = None  # model -> interval of that mean
    gold_ci: dict[str, Interval] | None = None  # "<later>_minus_<earlier>" -> paired interval of the difference
    reward: dict[str, float] | None = None  # model -> mean RM score
    reward_mean_ci: dict[str, Interval] | None = None  # model -> interval of that mean
    win_rate: dict[str, float] | None = None  # "<later>_vs_<earlier>" -> fraction of prompts later wins, tie 1/2
    win_rate_ci: dict[str, Interval] | None = None  # the same keys -> paired interval
    win_rate_judge: Literal["gold", "reward_model"] | None = None  # what judged the wins
    rm_accuracy: RMAccuracy | None = None
    kl_to_sft: dict[str, float] | None = None  # tuned model -> mean over prompts of its summed exact KL(· ‖ sft), nats
    best_of_n: BestOfN | None = None
    lm_loss: dict[str, float] | None = None  # model -> mean NLL per token of eval.lm_text, nats (alignment tax)
    ifeval: IFEvalSection | None = None

    @property
    def kl(self) -> float | None:
        """KL(ppo ‖ sft): eval.json's `kl`, the run contract's figure (docs/design.md)."""
        return (self.kl_to_sft or {}).get("ppo")

    def to_json(self) -> dict[str, Any]:
        """eval.json's content: the keys of docs/design.md, None fields left out (rm_accuracy's null kept)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.name == "rm_accuracy":
                out.update(_rm_accuracy_json(value))
            elif field.name == "best_of_n":
                out.update(_best_of_n_json(value))
            else:
                out[field.name] = _plain(value)
            if field.name == "kl_to_sft" and self.kl is not None:
                out["kl"] = self.kl
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "eval.json") -> EvalResult:
        """The result in `data` (eval.json's content, as this or an earlier version wrote it); a malformed or
        missing field is a one-line LoraRlhfError naming `source` and the key."""
        try:
            return _parse(data)
        except _Malformed as error:
            raise LoraRlhfError(f"{source}: {error.key} {error.why}; {_RERUN}") from None


def write_eval_result(path: str | Path, result: EvalResult) -> Path:
    """Write `result` to `path` (a run's eval.json) atomically."""
    write_json(path, result.to_json())
    return Path(path)


def read_eval_result(path: str | Path) -> EvalResult:
    """The result in `path`; a missing, unreadable or malformed file is a one-line LoraRlhfError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoraRlhfError(f"{path} does not exist; run `lora-rlhf eval` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraRlhfError(f"{path} is not readable JSON ({_one_line(error)}); {_RERUN}") from None
    return EvalResult.from_json(data, str(path))


# --- writing


def _plain(value: Any) -> Any:
    """Dataclasses, dicts and intervals -> JSON values (tuples as lists), None fields of dataclasses left out."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, Mapping):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _rm_accuracy_json(rm: RMAccuracy) -> dict[str, Any]:
    """The flat rm_accuracy* keys: the accuracy against the labels always (null where none), the rest if known."""
    out: dict[str, Any] = {"rm_accuracy_source": rm.source}
    if rm.rows is not None:
        out["rm_accuracy_rows"] = rm.rows
    if rm.skipped_rows is not None:
        out["rm_accuracy_skipped_rows"] = rm.skipped_rows
    for prefix, pair in (("rm_accuracy", rm.labels), ("rm_accuracy_gold", rm.gold)):
        if pair is None:
            continue
        out[prefix] = pair.accuracy
        if pair.pairs is not None:  # measured here: the interval (null without pairs) and the count
            out[f"{prefix}_ci"] = _plain(pair.ci)
            out[f"{prefix}_pairs"] = pair.pairs
    return out


def _best_of_n_json(bon: BestOfN) -> dict[str, Any]:
    """ "best_of_n" and, where there are any, its paired intervals under "best_of_n_ci"."""
    summary = _plain(dataclasses.replace(bon, gold_minus_sample_ci=None, gold_minus_sft_ci=None))
    intervals = {"bon_minus_sample": bon.gold_minus_sample_ci, "bon_minus_sft": bon.gold_minus_sft_ci}
    out = {"best_of_n": summary}
    if any(v is not None for v in intervals.values()):
        out["best_of_n_ci"] = {key: list(v) for key, v in intervals.items() if v is not None}
    return out


# --- reading


class _Malformed(Exception):
    def __init__(self, key: str, why: str) -> None:
        super().__init__(key, why)
        self.key, self.why = key, why


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(key, f"must be a number, got {value!r:.60}")
    return float(value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(key, f"must be a count (an integer >= 0), got {value!r:.60}")
    return value


def _interval(value: Any, key: str) -> Interval:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Malformed(key, f"must be an interval [lo, hi], got {value!r:.60}")
    lo, hi = _number(value[0], key), _number(value[1], key)
    if lo > hi:  # NaN bounds (an empty sample) pass: they compare false
        raise _Malformed(key, f"must be an interval [lo, hi] with lo <= hi, got {value!r:.60}")
    return lo, hi


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(key, f"must be a string, got {value!r:.60}")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Malformed(key, f"must be true or false, got {value!r:.60}")
    return value


def _table(item: Callable[[Any, str], T]) -> Callable[[Any, str], dict[str, T]]:
    """A parser of {name: item} objects (the model -> figure tables)."""

    def parse(value: Any, key: str) -> dict[str, T]:
        if not isinstance(value, Mapping):
            raise _Malformed(key, f"must be an object of name -> value, got {value!r:.60}")
        return {str(name): item(v, f"{key}.{name}") for name, v in value.items()}

    return parse


def _choice(*allowed: str) -> Callable[[Any, str], str]:
    def parse(value: Any, key: str) -> str:
        if value not in allowed:
            raise _Malformed(key, f"must be one of {', '.join(allowed)}, got {value!r:.60}")
        return value

    return parse


def _object(data: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _Malformed(key, f"must be a JSON object, got {type(data).__name__}")
    return data


def _get(data: Mapping[str, Any], name: str, parse: Callable[[Any, str], T], prefix: str = "") -> T | None:
    """data[name] parsed, None where it is absent (or null)."""
    value = data.get(name)
    return None if value is None else parse(value, prefix + name)


def _need(data: Mapping[str, Any], name: str, parse: Callable[[Any, str], T], prefix: str = "") -> T:
    if data.get(name) is None:
        raise _Malformed(prefix + name, "is missing")
    return parse(data[name], prefix + name)


_NUMBERS, _INTERVALS = _table(_number), _table(_interval)
# Top-level fields read as they are written (the others have a reader of their own below).
_PLAIN_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "prompts": _count,
    "temperature": _number,
    "samples_per_prompt": _count,
    "confidence": _number,
    "bootstrap_samples": _count,
    "gold": _NUMBERS,
    "gold_mean_ci": _INTERVALS,
    "gold_ci": _INTERVALS,
    "reward": _NUMBERS,
    "reward_mean_ci": _INTERVALS,
    "win_rate": _NUMBERS,
    "win_rate_ci": _INTERVALS,
    "win_rate_judge": _choice("gold", "reward_model"),
    "kl_to_sft": _NUMBERS,
    "lm_loss": _NUMBERS,
}
# Figures of the held-out comparison: a file with any of them says how many prompts they are over.
_HELD_OUT = ("gold", "reward", "win_rate", "kl", "kl_to_sft", "best_of_n", "lm_loss")


def _parse(data: Any) -> EvalResult:
    data = _object(data, "the file")
    fields: dict[str, Any] = {name: _get(data, name, parse) for name, parse in _PLAIN_FIELDS.items()}
    if fields["prompts"] is None and any(data.get(key) is not None for key in _HELD_OUT):
        raise _Malformed("prompts", "is missing (the file holds held-out figures)")
    kl = _get(data, "kl", _number)
    if fields["kl_to_sft"] is None and kl is not None:  # files from before kl_to_sft: kl is ppo's
        fields["kl_to_sft"] = {"ppo": kl}
    fields["rm_accuracy"] = _rm_accuracy(data)
    fields["best_of_n"] = _get(data, "best_of_n", _best_of_n)
    if fields["best_of_n"] is not None:
        intervals = _get(data, "best_of_n_ci", _table(_interval)) or {}
        fields["best_of_n"].gold_minus_sample_ci = intervals.get("bon_minus_sample")
        fields["best_of_n"].gold_minus_sft_ci = intervals.get("bon_minus_sft")
    fields["ifeval"] = _get(data, "ifeval", _ifeval)
    return EvalResult(**fields)


def _rm_accuracy(data: Mapping[str, Any]) -> RMAccuracy | None:
    if "rm_accuracy_source" not in data and "rm_accuracy" not in data:
        return None
    # Without a source (files from before rankings at eval time) the figure is the rm stage's logged one.
    source = _choice("rankings", "metrics")(data.get("rm_accuracy_source", "metrics"), "rm_accuracy_source")
    if source == "metrics":
        return RMAccuracy("metrics", PairAccuracy(_get(data, "rm_accuracy", _number)))
    pairs = {
        prefix: PairAccuracy(
            _get(data, prefix, _number), _get(data, f"{prefix}_ci", _interval), _need(data, f"{prefix}_pairs", _count)
        )
        for prefix in ("rm_accuracy", "rm_accuracy_gold")
        if prefix == "rm_accuracy" or f"{prefix}_pairs" in data
    }
    return RMAccuracy(
        "rankings",
        pairs["rm_accuracy"],
        pairs.get("rm_accuracy_gold"),
        _get(data, "rm_accuracy_rows", _count),
        _get(data, "rm_accuracy_skipped_rows", _count),
    )


def _best_of_n(value: Any, key: str) -> BestOfN:
    data = _object(value, key)
    at = f"{key}."
    # sft's own gold on the same prompts was written as gold_sft_greedy or gold_sft_samples before issue 26.
    sft = next((name for name in ("gold_sft", "gold_sft_greedy", "gold_sft_samples") if name in data), "gold_sft")
    sample = "gold_random_sample" if "gold_random_sample" in data else "gold_sft_sample"
    return BestOfN(
        n=_need(data, "n", _count, at),
        temperature=_need(data, "temperature", _number, at),
        reward=_need(data, "reward", _number, at),
        gold=_get(data, "gold", _number, at),
        gold_ci=_get(data, "gold_ci", _interval, at),
        gold_random_sample=_get(data, sample, _number, at),
        prompts=_get(data, "prompts", _count, at),
        candidates_from_eval_samples=_get(data, "candidates_from_eval_samples", _flag, at),
        gold_sft=_get(data, sft, _number, at),
    )


def _ifeval(value: Any, key: str) -> IFEvalSection:
    data = _object(value, key)
    at = f"{key}."
    return IFEvalSection(
        prompts=_need(data, "prompts", _count, at),
        accuracy=_need(data, "accuracy", _table(_NUMBERS), at),
        headline=_need(data, "headline", _NUMBERS, at),
        accuracy_ci=_need(data, "accuracy_ci", _INTERVALS, at),
        diff=_need(data, "diff", _NUMBERS, at),
        diff_ci=_need(data, "diff_ci", _INTERVALS, at),
        per_instruction=_need(data, "per_instruction", _table(_table(_table(_instruction_figure))), at),
        max_new_tokens=_get(data, "max_new_tokens", _count, at),
        decoding=_get(data, "decoding", _text, at),
        chat_template=_get(data, "chat_template", _text, at),
        responses=_get(data, "responses", _table(_text), at),
        hit_max_new_tokens=_get(data, "hit_max_new_tokens", _table(_count), at),
    )


def _instruction_figure(value: Any, key: str) -> float:
    """A per-instruction figure: "count" stays an integer, the rates are numbers."""
    return _count(value, key) if key.endswith(".count") else _number(value, key)
