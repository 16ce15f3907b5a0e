"""IFEval-style training prompts written by code: a task stem of our own, then 1-3 verifiable instructions.

Each instruction is one of IFEval's checker classes (the same registry the benchmark judges with), built with
freshly drawn arguments and described in its own words (`build_description`), so what a prompt asks is
exactly what its checker tests. The stems are ours ("Write a short note to a neighbour about ..."),
composed from templates and fillers below; a test shows none of them is one of IFEval's 541 requests and no
generated prompt shares an 8-word sequence with them outside the instruction sentences (IFEval is a test set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.ifeval import checkers

# (template, fillers): a stem is a template with one filler.
_STEMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Write a short note to a neighbour about {}.",
        (
            "a parcel you took in for them",
            "the noise from your renovation next week",
            "a lost cat you saw in the garden",
            "sharing a lawn mower",
            "a street party in June",
            "their tree leaning over the fence",
        ),
    ),
    (
        "Describe {} to someone who has never seen one.",
        ("a lighthouse", "a snowstorm", "a coral reef", "a night market", "a windmill", "a glacier", "a volcano"),
    ),
    (
        "Explain to a twelve year old how {} works.",
        (
            "a bicycle gear",
            "a refrigerator",
            "a rainbow",
            "a library card",
            "a bank loan",
            "a compass",
            "recycling paper",
            "a vaccine",
        ),
    ),
    (
        "Give some advice to a student who is nervous about {}.",
        ("a first job interview", "moving to a new city", "a piano recital", "a science fair", "a driving test"),
    ),
    (
        "Write a product description for {}.",
        (
            "a reusable water bottle",
            "a folding umbrella",
            "a wool blanket",
            "a solar lantern",
            "a wooden chess set",
            "a pair of hiking socks",
        ),
    ),
    (
        "Tell a short story about {}.",
        (
            "a baker who forgets an order",
            "a dog that finds a key",
            "two friends lost in a museum",
            "a kite stuck on a roof",
            "a train that arrives early",
            "a gardener and a stubborn tomato plant",
        ),
    ),
    (
        "Write a message inviting your colleagues to {}.",
        ("a farewell lunch", "a charity run", "a board game evening", "a team picnic", "a book club meeting"),
    ),
    (
        "List the pros and cons of {}.",
        (
            "working from home",
            "living near the sea",
            "owning an electric car",
            "learning two languages at once",
            "keeping a paper diary",
        ),
    ),
    (
        "Write a review of {}.",
        (
            "a small family restaurant",
            "a free walking tour",
            "a second hand bookshop",
            "a rainy weekend at the lake",
            "a budget hotel",
        ),
    ),
    (
        "Summarize why people enjoy {}.",
        ("gardening", "long train journeys", "cooking for friends", "birdwatching", "jigsaw puzzles", "camping"),
    ),
    (
        "Write a thank you letter to {}.",
        (
            "a teacher who helped you with maths",
            "a nurse who looked after your grandmother",
            "a coach of a youth football team",
            "a bus driver who found your wallet",
        ),
    ),
    (
        "Write a short speech for {}.",
        (
            "the opening of a community garden",
            "a friend's retirement party",
            "the last day of a summer camp",
            "a school sports day",
            "the launch of a village newsletter",
        ),
    ),
    (
        "Compare {}.",
        (
            "tea and coffee as morning drinks",
            "trains and buses for a commute",
            "paper books and e-readers",
            "cats and rabbits as pets",
            "city parks and forests for a walk",
        ),
    ),
    (
        "Write an email to your landlord about {}.",
        ("a dripping kitchen tap", "a broken window latch", "paying the rent a week late", "a damp bathroom wall"),
    ),
    (
        "Offer tips for {}.",
        (
            "keeping houseplants alive in winter",
            "packing a suitcase for a week",
            "saving money on groceries",
            "sleeping better before an exam",
            "running a first five kilometre race",
        ),
    ),
    (
        "Write a diary entry about {}.",
        (
            "a day without electricity",
            "meeting an old school friend",
            "a first visit to the mountains",
            "a rainy afternoon at home",
        ),
    ),
    (
        "Write a note for a museum visitor about {}.",
        ("an old steam engine", "a dinosaur skeleton", "a medieval map", "a collection of sea shells"),
    ),
    (
        "Suggest a plan for {}.",
        (
            "a rainy Sunday with children",
            "cleaning a cluttered garage",
            "a cheap weekend in the countryside",
            "learning to swim as an adult",
        ),
    ),
)
# Instructions a 135M model cannot meet and code cannot demonstrate: answers in another language.
EXCLUDED = frozenset({"language:response_language"})
# One stem in EVAL_BUCKETS (by a hash of its text) is held out for the recipe's own evaluation prompts.
EVAL_BUCKETS = 6


@dataclasses.dataclass(frozen=True)
class InstructionTask:
    """A generated prompt: the stem, the instructions' descriptions after it, and their checker arguments."""

    stem: str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]

    def row(self) -> dict[str, Any]:
        """IFEval's own row format (key omitted), so the checkers and `benchmark.load_prompts` read it."""
        return {"prompt": self.prompt, "instruction_id_list": list(self.instruction_ids), "kwargs": list(self.kwargs)}


def stems() -> list[str]:
    """Every task stem, in a fixed order."""
    return [template.format(filler) for template, fillers in _STEMS for filler in fillers]


def split_of(stem: str) -> str:
    """ "eval" for a fixed share of the stems (by hash), so the recipe's held-out prompts never share a stem."""
    bucket = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:4], "big") % EVAL_BUCKETS
    return "eval" if bucket == 0 else "train"


def instruction_pool(allowed: Sequence[str] | None = None) -> list[str]:
    """The instruction ids to draw from: `allowed`, or every IFEval instruction but EXCLUDED."""
    known = checkers.registry()
    pool = sorted(set(known) - EXCLUDED) if allowed is None else list(allowed)
    unknown = [i for i in pool if i not in known]
    if unknown or not pool:
        raise LoraRlhfError(f"demo.ifeval_instructions: {unknown or pool!r} is not a subset of IFEval's instructions")
    return pool


@contextlib.contextmanager
def _seeded_global_random(seed: int) -> Iterator[None]:
    """IFEval's checkers draw their arguments from the global `random`; seed it, then give the state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def draw_instruction(instruction_id: str, stem: str, seed: int) -> tuple[str, dict[str, Any]]:
    """(description, checker kwargs) of one instruction with arguments freshly drawn by its own checker class."""
    cls = checkers.registry()[instruction_id]
    with _seeded_global_random(seed):
        for _ in range(20):
            instance = cls(instruction_id)
            extra = {"prompt_to_repeat": stem} if instruction_id == "combination:repeat_prompt" else {}
            description = instance.build_description(**extra)
            args = dict(instance.get_instruction_args() or {})
            if _feasible(instruction_id, args):
                return description, args
    raise LoraRlhfError(f"could not draw feasible arguments for {instruction_id!r}")


def _feasible(instruction_id: str, args: Mapping[str, Any]) -> bool:
    """Google's generator may ask for paragraph 6 of 5; such a prompt cannot be followed and is drawn again."""
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        return args["nth_paragraph"] <= args["num_paragraphs"]
    return True


def sample_tasks(
    n: int,
    seed: int,
    *,
    split: str = "train",
    instructions: Sequence[str] | None = None,
    max_instructions: int = 3,
) -> list[InstructionTask]:
    """`n` distinct prompts of `split`, each a stem and 1..max_instructions non-conflicting instructions."""
    pool = instruction_pool(instructions)
    conflicts = checkers.conflicts()
    candidates = [s for s in stems() if split_of(s) == split]
    rng = random.Random(seed)
    tasks: dict[str, InstructionTask] = {}
    for _ in range(50 * n + 100):
        if len(tasks) == n:
            break
        stem = rng.choice(candidates)
        wanted = rng.randint(1, max_instructions)
        chosen: list[str] = []
        for instruction_id in rng.sample(pool, len(pool)):
            if len(chosen) == wanted:
                break
            if not any(
                instruction_id in conflicts.get(c, ()) or c in conflicts.get(instruction_id, ()) for c in chosen
            ):
                chosen.append(instruction_id)
        drawn = [draw_instruction(i, stem, rng.randrange(2**31)) for i in chosen]
        prompt = " ".join([stem] + [description for description, _ in drawn])
        tasks.setdefault(prompt, InstructionTask(stem, prompt, tuple(chosen), tuple(args for _, args in drawn)))
    if len(tasks) < n:
        raise LoraRlhfError(f"could only draw {len(tasks)} distinct {split} prompts of {n}")
    return list(tasks.values())
