"""How a token is drawn, for every decoding path: the one sampler (issue 26).

The one decoding engine (models/engine.py) draws its tokens here for every caller: rollouts, evaluation,
best-of-N and the demo's rankings (`engine.sample`, one set of options for the whole batch) and inference
(`lora-rlhf generate`, the registry and the server, options per row), so a change to how a token is drawn is
made and tested once.

The order is `generate`'s, with transformers' own processors: the CTRL repetition penalty over prompt and
response, OpenAI's frequency and presence penalties over the response, then for a sampled row temperature,
top-k and top-p; a greedy row (T = 0) takes the argmax of the penalized scores. A sampled token inverts its
row's cumulative distribution at a float64 uniform, drawn from the row's own `torch.Generator` when it has one
(a seeded inference row, whose answer then does not depend on the rows beside it) and else from torch's global
generator, one uniform per row in row order: the draws a rollout makes under `torch.manual_seed` are the ones
it made before this module existed, so the same seeds give the same samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

# JSON has no -inf: a token top_p removed is reported with this log-prob (as vLLM does).
FLOOR_LOGPROB = -9999.0


class DrawOptions(Protocol):
    """What decides how one row's token is drawn (`inference.GenerationOptions` is one)."""

    temperature: float  # 0: greedy (argmax)
    top_k: int  # 0: off
    top_p: float  # 1.0: off
    repetition_penalty: float  # 1.0: off
    frequency_penalty: float  # 0: off
    presence_penalty: float  # 0: off


# ------------------------------------------------------------------ one set of options for every row
def draw(logits: torch.Tensor, temperature: float, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(N, V) logits -> (N,) next tokens: argmax at T = 0, else a sample of softmax(logits / T) truncated to its
    top_k tokens (0: all) and then to the smallest set holding top_p of the mass (1.0: all), each row's uniform
    from torch's global generator.

    Sampled by inverting each row's cumulative distribution (in float64, so no token's mass is lost to
    rounding), which on the CPU takes a tenth of `torch.multinomial`'s time over a 49k-token vocabulary
    (0.05 s vs 0.48 s for 384 rows): multinomial was a third of eval's decoding.
    """
    if temperature == 0:
        return logits.argmax(-1)
    scores = warp(logits, temperature, top_k=top_k, top_p=top_p)
    return inverse_cdf(scores, uniforms([None] * scores.shape[0], scores.device))


def warp(logits: torch.Tensor, temperature: float, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(N, V) logits -> (N, V) float32 logits / T, -inf where top-k then top-p cut (transformers' warpers, in
    `generate`'s order); T must be > 0."""
    scores = logits.float() / temperature
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


def uniforms(generators: Sequence[torch.Generator | None], device: torch.device | str) -> torch.Tensor:
    """(N, 1) float64 uniforms in [0, 1), one per row: those of rows without a generator drawn together from torch's
    global generator (in row order), the others each from its own."""
    if all(g is None for g in generators):
        return torch.rand((len(generators), 1), dtype=torch.float64, device=device)
    u = torch.empty((len(generators), 1), dtype=torch.float64, device=device)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        u[unseeded] = torch.rand((len(unseeded), 1), dtype=torch.float64, device=device)
    for i, g in enumerate(generators):
        if g is not None:
            u[i] = torch.rand((1,), dtype=torch.float64, device=device, generator=g)
    return u


def inverse_cdf(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N, V) scores (-inf for tokens cut) and (N, 1) float64 uniforms in [0, 1) -> (N,) the token of each row
    where its cumulative softmax(scores) first exceeds u: a sample of softmax(scores). A token of probability 0
    (cut by top-k / top-p) is never drawn: the search returns the first index whose cumulative mass exceeds u."""
    cdf = scores.softmax(-1).double().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def sampling_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, V) logits -> (N, V) float32 log softmax(logits / T): the distribution the log-probs of a rollout are
    measured on (T = 0, greedy, measures T = 1)."""
    return (logits.float() / (temperature if temperature > 0 else 1.0)).log_softmax(-1)


def drawn_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits and (N,) drawn tokens -> (N,) each token's log-prob under softmax(logits / T) and (N,) that
    distribution's entropy: what PPO's behaviour policy needs, with no second forward."""
    logp = sampling_logprobs(logits, temperature)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


# -------------------------------------------------------------------------- options per row
def penalized(
    logits: torch.Tensor,
    options: Sequence[DrawOptions],
    prompts: Sequence[torch.Tensor],
    responses: Sequence[Sequence[int]],
) -> torch.Tensor:
    """(N, V) float logits -> (N, V) scores after each row's penalties (a copy; `logits` itself where no row has any).

    Args:
        options: N rows' options.
        prompts: N (P_i,) prompt ids; the repetition penalty counts them, as `generate` does.
        responses: N response ids so far; the frequency and presence penalties count only these.
    """
    if all(o.repetition_penalty == 1.0 and not o.frequency_penalty and not o.presence_penalty for o in options):
        return logits
    scores = logits.clone()
    for i, o in enumerate(options):
        if o.repetition_penalty != 1.0:  # CTRL's penalty (Keskar et al. 2019) over this row's prompt and response
            seen = torch.cat([prompts[i].to(scores.device), _ids(responses[i], scores.device)])[None]
            scores[i] = RepetitionPenaltyLogitsProcessor(float(o.repetition_penalty))(seen, scores[i : i + 1])[0]
        if o.frequency_penalty or o.presence_penalty:
            generated = _ids(responses[i], scores.device)[None]
            scores[i] = penalize(scores[i : i + 1], generated, [o.frequency_penalty], [o.presence_penalty])[0]
    return scores


def penalize(
    scores: torch.Tensor, generated: torch.Tensor, frequency: Sequence[float], presence: Sequence[float]
) -> torch.Tensor:
    """(B, V) scores, (B, A) response ids so far -> (B, V) scores minus each row's frequency and presence penalties.

    As the OpenAI API defines them (platform.openai.com/docs/guides/text-generation, "frequency and presence
    penalties"): mu[j] -> mu[j] - c[j] * frequency_penalty - [c[j] > 0] * presence_penalty, where c[j] counts
    token j in the response so far (the prompt does not count); additive and per row, unlike CTRL's.
    """
    counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    freq = torch.tensor(frequency, dtype=scores.dtype, device=scores.device)[:, None]
    pres = torch.tensor(presence, dtype=scores.dtype, device=scores.device)[:, None]
    return scores - counts * freq - (counts > 0).to(scores.dtype) * pres


def _ids(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def warped(scores: torch.Tensor, options: Sequence[DrawOptions]) -> torch.Tensor:
    """(N, V) penalized scores -> (N, V) the scores each row's token is drawn from: greedy rows unchanged, sampled
    rows through `warp` with their own options, rows with the same options together; a copy, or `scores` itself
    when every row is greedy."""
    groups: dict[tuple[float, int, float], list[int]] = defaultdict(list)
    for i, o in enumerate(options):
        if o.temperature != 0:
            groups[o.temperature, o.top_k, o.top_p].append(i)
    if not groups:
        return scores
    out = scores.clone()
    for (temperature, top_k, top_p), rows in groups.items():
        index = torch.tensor(rows, device=scores.device)
        out[index] = warp(scores[index], temperature, top_k=top_k, top_p=top_p)
    return out


def draw_rows(
    scores: torch.Tensor, options: Sequence[DrawOptions], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """(N, V) warped scores -> (N,) next tokens: the argmax for greedy rows, a sample of softmax(scores) for the
    others, each from its row's generator when it has one, else from torch's global one (`uniforms`)."""
    tokens = scores.argmax(-1)
    sampled = [i for i, o in enumerate(options) if o.temperature != 0]
    if not sampled:
        return tokens
    index = torch.tensor(sampled, device=scores.device)
    tokens[index] = inverse_cdf(scores[index], uniforms([generators[i] for i in sampled], scores.device))
    return tokens


def reported_logprobs(scores: torch.Tensor) -> torch.Tensor:
    """(N, V) warped scores -> (N, V) the log-probs a response reports: log softmax of what the token was drawn
    from, tokens cut by top-k / top-p at FLOOR_LOGPROB instead of -inf."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    return torch.nan_to_num(logp, neginf=FLOOR_LOGPROB).clamp(min=FLOOR_LOGPROB)


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded with `seed` (a row's own random stream); None without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)
