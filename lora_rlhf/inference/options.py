"""Sampling options for inference, validated on construction (the knobs of `transformers.generate`, drawn by
models/sampling.py)."""

from __future__ import annotations

import dataclasses

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.validation import check_positive_ints

# The seeds `torch.Generator.manual_seed` takes; a larger one was "Overflow when unpacking long long" (issue 29).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# Between the seeds of one request's choices (an odd 64-bit constant, the golden ratio's: no two collide).
_SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclasses.dataclass
class GenerationOptions:
    """How to sample one response; the defaults are greedy decoding of up to 128 tokens."""

    # Response budget in tokens.
    max_new_tokens: int = 128
    # Softmax temperature; 0 means greedy decoding (argmax), which is reproducible.
    temperature: float = 0.0
    # Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p (1.0 = off).
    top_p: float = 1.0
    # Keep only the k most likely tokens (0 = off).
    top_k: int = 0
    # >1 discourages repeating tokens already in the text (CTRL, Keskar et al. 2019); 1.0 = off.
    repetition_penalty: float = 1.0
    # Strings that end the response; the response is cut before the first one (OpenAI's `stop`).
    stop: list[str] = dataclasses.field(default_factory=list)
    # Seed of the sampler, for reproducible sampling (ignored when greedy).
    seed: int | None = None
    # OpenAI's additive penalties in [-2, 2] (models/sampling.penalize): subtracted from a token's logit once per time
    # it was generated (frequency) or once if it was (presence); 0 = off.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_new_tokens",))
        if self.temperature < 0:
            raise LoraRlhfError(f"temperature: {self.temperature!r} must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise LoraRlhfError(f"top_p: {self.top_p!r} must be in (0, 1]")
        if self.top_k < 0:
            raise LoraRlhfError(f"top_k: {self.top_k!r} must be >= 0 (0 = off)")
        if self.repetition_penalty <= 0:
            raise LoraRlhfError(f"repetition_penalty: {self.repetition_penalty!r} must be > 0")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise LoraRlhfError(f"{name}: {getattr(self, name)!r} must be in [-2, 2] (0 = off)")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise LoraRlhfError(f"seed: {self.seed!r} must be an integer in [-2**63, 2**64 - 1]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise LoraRlhfError(f"stop: {self.stop!r} must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def for_choice(self, index: int) -> GenerationOptions:
        """The options of response `index` of one request (its n choices, or its list of prompts): a seeded sampled
        request's responses draw from streams of their own (response 0 from `seed` itself), or they would repeat
        each other, and each is the same whatever else shares its batch."""
        if not index or self.seed is None or self.greedy:
            return self
        return dataclasses.replace(self, seed=(self.seed + index * _SEED_STRIDE) % 2**63)
