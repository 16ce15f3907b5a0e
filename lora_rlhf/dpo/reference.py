"""The reference's log-probs, once for the whole dataset, cached in the run directory (`dpo.precompute_reference`).

DPO's reference is the frozen SFT model (Rafailov et al. 2023, §4: π_ref = π^SFT where there is one); here it
is the `sft` adapter on the same base, so its log-probs never change during training and can be computed
once. The cache (checkpoints/dpo/reference_logps.safetensors) carries a fingerprint of the token ids it was
computed on and of the sft weights: a rerun, a resume or another process reuses it only when both match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from lora_rlhf.dpo.batching import DPOExample, collate_dpo, sequence_logprobs
from lora_rlhf.io import atomic_file
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.train import distributed

logger = logging.getLogger(__name__)
REFERENCE = "sft"
CACHE_NAME = "reference_logps.safetensors"


@torch.no_grad()
def reference_logprobs(stack: RoleStack, examples: list[DPOExample], batch_size: int) -> list[list[float]]:
    """log π_ref(y_k|x) of every response of every example (eval mode: no LoRA dropout), in order."""
    pad = stack.tokenizer.pad_token_id
    out: list[list[float]] = []
    with stack.evaluating():
        for start in range(0, len(examples), batch_size):
            items = [DPOExample(e.ranking) for e in examples[start : start + batch_size]]
            batch = {k: v.to(stack.device) for k, v in collate_dpo(items, pad).items()}
            flat = sequence_logprobs(stack, REFERENCE, batch).float().cpu().tolist()
            for e in items:
                out.append(flat[: len(e.ranking.response_ids)])
                flat = flat[len(e.ranking.response_ids) :]
    return out


def attach_reference(
    stack: RoleStack, splits: dict[str, list[DPOExample]], batch_size: int, cache_dir: Path
) -> dict[str, list[DPOExample]]:
    """`splits` with every example's `reference_logps` set: read from the cache in `cache_dir` when it matches,
    else computed (by every process, so none waits on another's GPU) and written by the main process."""
    fingerprint = _fingerprint(stack, splits)
    cached = _read(cache_dir / CACHE_NAME, fingerprint)
    if cached is None:
        logger.info("dpo: computing the reference's log-probs once for %d rankings", sum(map(len, splits.values())))
        cached = {name: reference_logprobs(stack, examples, batch_size) for name, examples in splits.items()}
        if distributed.is_main():
            _write(cache_dir / CACHE_NAME, cached, fingerprint)
    else:
        logger.info("dpo: the reference's log-probs come from %s", cache_dir / CACHE_NAME)
    return {
        name: [DPOExample(e.ranking, logps) for e, logps in zip(examples, cached[name])]
        for name, examples in splits.items()
    }


def _fingerprint(stack: RoleStack, splits: dict[str, list[DPOExample]]) -> str:
    digest = hashlib.sha256()
    for name, examples in sorted(splits.items()):
        rows = [[e.ranking.prompt_ids, e.ranking.response_ids] for e in examples]
        digest.update(json.dumps([name, rows]).encode())
    for param in stack.role_parameters(REFERENCE):
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _read(path: Path, fingerprint: str) -> dict[str, list[list[float]]] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("fingerprint") != fingerprint:
                logger.info("dpo: %s was computed on other data or another sft adapter; recomputing", path)
                return None
            sizes = json.loads(meta["sizes"])
            return {name: _split(handle.get_tensor(name).tolist(), sizes[name]) for name in sizes}
    except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file is recomputed, never trusted
        logger.warning("dpo: ignoring the unreadable reference cache %s (%s)", path, exc)
        return None


def _write(path: Path, logps: dict[str, list[list[float]]], fingerprint: str) -> None:
    from safetensors.torch import save

    tensors = {
        name: torch.tensor([x for row in rows for x in row], dtype=torch.float32) for name, rows in logps.items()
    }
    sizes = {name: [len(row) for row in rows] for name, rows in logps.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        handle.write(save(tensors, metadata={"fingerprint": fingerprint, "sizes": json.dumps(sizes)}))


def _split(flat: list[float], sizes: list[int]) -> list[list[float]]:
    out, start = [], 0
    for size in sizes:
        out.append(flat[start : start + size])
        start += size
    return out
