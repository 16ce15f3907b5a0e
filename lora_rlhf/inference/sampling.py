"""Each row of a serving batch decoded with its own options: penalties, temperature, top-k, top-p and seed.

`generate` takes one set of sampling options per call; a continuously batched server (inference/engine.py)
holds rows of many requests at once, so every row carries its own. The order is `generate`'s, with
transformers' own processors: the CTRL repetition penalty over prompt and response, OpenAI's frequency and
presence penalties over the response (inference/penalties.py), then for a sampled row temperature, top-k and
top-p; greedy rows take the argmax of the penalized scores. A sampled row draws its uniform from its own
`torch.Generator` when it has a seed, so its answer does not depend on the rows it shares a batch with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.inference.penalties import penalize
from lora_rlhf.models.decoding import inverse_cdf

# JSON has no -inf: a token top_p removed is reported with this log-prob (as vLLM does).
FLOOR_LOGPROB = -9999.0


def penalized(
    logits: torch.Tensor,
    options: Sequence[GenerationOptions],
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


def _ids(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def warped(scores: torch.Tensor, options: Sequence[GenerationOptions]) -> torch.Tensor:
    """(N, V) penalized scores -> (N, V) the scores each row's token is drawn from: greedy rows unchanged, sampled
    rows through transformers' temperature, top-k and top-p warpers (in `generate`'s order), -inf where cut.
    Rows with the same options are warped together; a copy, or `scores` itself when every row is greedy."""
    groups: dict[tuple[float, int, float], list[int]] = defaultdict(list)
    for i, o in enumerate(options):
        if not o.greedy:
            groups[o.temperature, o.top_k, o.top_p].append(i)
    if not groups:  # all greedy: nothing to warp
        return scores
    out = scores.clone()
    for (temperature, top_k, top_p), rows in groups.items():
        index = torch.tensor(rows, device=scores.device)
        group = TemperatureLogitsWarper(temperature)(None, scores[index])
        if top_k:
            group = TopKLogitsWarper(top_k)(None, group)
        if top_p < 1.0:
            group = TopPLogitsWarper(top_p)(None, group)
        out[index] = group
    return out


def choose(
    scores: torch.Tensor, options: Sequence[GenerationOptions], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """(N, V) warped scores -> (N,) next tokens: the argmax for greedy rows, a sample of softmax(scores) for the
    others (inverting the cumulative distribution, as models/decoding.draw does), from the row's own generator
    when it has one, else from torch's global one."""
    tokens = scores.argmax(-1)
    sampled = [i for i, o in enumerate(options) if not o.greedy]
    if not sampled:
        return tokens
    u = torch.empty((len(sampled), 1), dtype=torch.float64, device=scores.device)
    unseeded = [k for k, i in enumerate(sampled) if generators[i] is None]
    if unseeded:
        u[unseeded] = torch.rand((len(unseeded), 1), dtype=torch.float64, device=scores.device)
    for k, i in enumerate(sampled):
        if generators[i] is not None:
            u[k] = torch.rand((1,), dtype=torch.float64, device=scores.device, generator=generators[i])
    index = torch.tensor(sampled, device=scores.device)
    tokens[index] = inverse_cdf(scores[index], u)
    return tokens


def reported_logprobs(scores: torch.Tensor) -> torch.Tensor:
    """(N, V) warped scores -> (N, V) the log-probs a response reports: log softmax of what the token was drawn
    from, tokens cut by top-k / top-p at FLOOR_LOGPROB instead of -inf."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    return torch.nan_to_num(logp, neginf=FLOOR_LOGPROB).clamp(min=FLOOR_LOGPROB)


def row_generator(options: GenerationOptions, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded with the row's seed, for a sampled row that has one; None otherwise."""
    if options.seed is None or options.greedy:
        return None
    return torch.Generator(device=device).manual_seed(options.seed)
