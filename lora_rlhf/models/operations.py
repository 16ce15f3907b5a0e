"""How a RoleStack generates with its roles: `generate`, `sample`, one decoding step of mixed roles.

Kept apart from the stack's adapter lifecycle (roles.py: adding, switching, saving roles) and from what is
computed with a role (forward.py: log-probs, rewards, values) so each file has one job. `RoleOperations` is a
mixin of `RoleStack`; the class annotations below are what it takes from its host.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import LogitsProcessorList

from lora_rlhf.models.base import gradient_checkpointing_on
from lora_rlhf.models.decoding import Samples, logits_to_keep_argument, sample
from lora_rlhf.models.dequantized import copy_fits, dequantized_bytes, dequantized_linears, kv_cache_bytes
from lora_rlhf.models.kv_cache import cache_argument as _cache_argument
from lora_rlhf.models.kv_cache import distinct_prefixes as _distinct_prefixes
from lora_rlhf.models.kv_cache import returned_cache as _returned_cache
from lora_rlhf.models.names import BASE
from lora_rlhf.models.positions import position_ids
from lora_rlhf.models.row_adapters import BASE_ROW, RowAdapters
from lora_rlhf.models.sampled_logprobs import SampledLogProbs
from lora_rlhf.models.sequences import sampling_kwargs, stop_mask

logger = logging.getLogger(__name__)


class RoleOperations:
    """Decoding under one role, or several roles a row; the annotations are what `RoleStack` provides."""

    model: nn.Module  # a peft.PeftModel once a role is added, else the base
    base_model: nn.Module
    tokenizer: object
    device: torch.device
    dequantized_decoding: bool | str  # decode from a 4-bit base dequantized once per call: True, False, "auto"
    _told_dequantized: bool
    _params: dict[str, list[nn.Parameter]]  # each role's LoRA tensors
    _layout: int  # bumped when an adapter is added or removed
    _row_adapters_cache: tuple[int, RowAdapters] | None
    use: Callable[[str], contextlib.AbstractContextManager[None]]  # run the body under a role's adapter
    resolve: Callable[[str], str]  # a role's adapter name, or BASE
    _causal_lm: Callable[[], nn.Module]  # the model under PEFT's wrapper

    @torch.no_grad()
    def generate(
        self, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generate_kwargs
    ) -> torch.Tensor:
        """`model.generate` under `role`, in eval mode with the KV cache on and gradient checkpointing off.

        Returns (B, T + new) ids; pad `input_ids` on the left.
        """
        if self.tokenizer is not None:
            generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self.use(role), self._generation_mode():
            # Not with PEFT's mixed-adapter batches (`adapter_names`): the prefill here runs the active adapter only;
            # not when generate itself expands the rows (several sequences or beams per row).
            plain = all(generate_kwargs.get(k) is None for k in ("past_key_values", "cache", "adapter_names"))
            expands = any(generate_kwargs.get(k, 1) != 1 for k in ("num_return_sequences", "num_beams"))
            if plain and not expands:
                cache = self._shared_prompt_cache(input_ids, attention_mask)
                if cache is not None:
                    generate_kwargs[_cache_argument(self._causal_lm())] = cache
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    @torch.no_grad()
    def sample(
        self,
        role: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int = 0,
        top_p: float = 1.0,
        with_logprobs: bool = False,
        stop_ids: Iterable[int] | None = None,
        pad_id: int | None = None,
    ) -> Samples:
        """Sample `role`'s responses (greedy at T = 0), each row leaving the batch at its stop token.

        What `generate(**sampling_kwargs(T, top_p=..., top_k=...))` returns, without decoding finished rows
        (models/decoding.py); each distinct prompt is prefilled once. Stops at `stop_ids` (default `eos_ids()`);
        pads with `pad_id` (default the tokenizer's). With `with_logprobs`, also the (B, A) log-probs of the
        drawn tokens under softmax(logits / T) and the entropies. Pad `input_ids` on the left.
        """
        stops = sorted(self.eos_ids() if stop_ids is None else set(stop_ids))
        pad = self.tokenizer.pad_token_id if pad_id is None else pad_id
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        rows, tokens = input_ids.shape[0], input_ids.shape[1] + max_new_tokens
        with self.use(role), self._generation_mode(), self._dequantized_base(rows, tokens):
            causal_lm = self._causal_lm()
            keep, cache_arg = logits_to_keep_argument(causal_lm), _cache_argument(causal_lm)
            cache = self._shared_prompt_cache(input_ids, attention_mask)  # all but the last prompt column
            if cache is not None:
                last = attention_mask.long().sum(-1, keepdim=True) - 1
                out = causal_lm(
                    input_ids=input_ids[:, -1:],
                    attention_mask=attention_mask,
                    position_ids=last,
                    use_cache=True,
                    **{cache_arg: cache},
                    **keep,
                )
            else:
                positions = position_ids(attention_mask, as_generate=True)
                out = causal_lm(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **keep
                )
                cache = _returned_cache(out)
            if cache is None:  # a model that returns no KV cache from its forward: generate's own loop
                return self._generate_sampled(role, input_ids, attention_mask, max_new_tokens, stops, pad, options)

            def step(ids, mask, positions, cache):
                kwargs = {cache_arg: cache, **keep}
                return causal_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)

            return sample(
                lambda *args: step(*args).logits[:, -1],
                out.logits[:, -1],
                cache,
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                stop_ids=stops,
                pad_id=pad,
                with_logprobs=with_logprobs,
                **options,
            )

    @torch.no_grad()
    def next_token_logits(
        self,
        roles: list[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
    ) -> tuple[torch.Tensor, object]:
        """One forward of rows that each run under their own role ("base" = no adapter): (N, V) float32 logits of
        the token after each row's last input, and the KV cache (`cache` extended, or a new one; None for a model
        that returns none).

        Rows of different roles share the forward: each LoRA layer adds each row's own adapter, in two batched
        matmuls (models/row_adapters.py) or, for adapters that cannot (DoRA, ...), through PEFT's mixed-adapter
        batches (`adapter_names`, "__base__" for the bare model). Rows all of the active adapter take the plain
        path. No adapter is switched, so the stack's active adapter is left as it was.

        Args:
            roles: N role names, one per row.
            input_ids, attention_mask: (N, S) new ids and (N, C + S) mask over the cached and new columns.
            position_ids: (N, S) each new token's position (pads not counted).
        """
        names = [self.resolve(r) for r in roles]
        active = getattr(self.model, "active_adapter", None) if self._params else None
        # Rows of the active adapter (or, with no adapter on the base, of "base") take the plain forward. Any other
        # mix gets each row's adapter per row, whatever adapter is active: no adapter is switched, which would cost
        # more than the step itself on a small model (set_adapter walks every layer).
        plain = set(names) == {active if self._params else BASE}
        per_row = [BASE_ROW if n == BASE else n for n in names]
        grouped = contextlib.nullcontext()
        mixed: dict = {}
        if not plain:
            row_adapters = self._row_adapters()
            if row_adapters.supports(per_row):  # two batched matmuls per layer (models/row_adapters.py)
                grouped = row_adapters.applied(per_row)
            elif self.model.has_active_enabled_adapter:  # PEFT's loop over the adapters present
                mixed = {"adapter_names": per_row}
            else:  # inside use("base"), PEFT would skip its per-row hooks
                raise RuntimeError("rows of several roles need the adapters enabled; call this outside use('base')")
        with self._generation_mode(), grouped:
            causal_lm = self._causal_lm()
            kwargs = {"use_cache": True, **logits_to_keep_argument(causal_lm), **mixed}
            if cache is not None:
                kwargs[_cache_argument(causal_lm)] = cache
            out = (self.model if mixed else causal_lm)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        return out.logits[:, -1].float(), _returned_cache(out)

    def _row_adapters(self) -> RowAdapters:
        """The per-row LoRA view of the model's LoRA layers, rebuilt when an adapter is added or removed."""
        cached = self._row_adapters_cache
        if cached is None or cached[0] != self._layout:
            cached = (self._layout, RowAdapters(self.model))
            self._row_adapters_cache = cached
        return cached[1]

    def _generate_sampled(self, role, input_ids, attention_mask, max_new_tokens, stops, pad, options) -> Samples:
        """`sample` through `generate`, the log-probs recorded by a logits processor (`SampledLogProbs`)."""
        t = options["temperature"]
        recorder = SampledLogProbs(t if t > 0 else 1.0)
        out = self.generate(
            role,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([recorder]),
            **sampling_kwargs(t, top_p=options["top_p"], top_k=options["top_k"]),
        )
        logprobs, entropy = recorder.result(out)
        response = stop_mask(out[:, input_ids.shape[1] :], stops).float()  # 0 after the stop, as `sample` gives
        return Samples(out, logprobs.float() * response, entropy.float() * response)

    def _shared_prompt_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The KV cache of every prompt but its last token, each DISTINCT prompt encoded once; None if none repeats.

        K samples of one prompt (the rankings' K, best-of-N's N) arrive as K equal rows: prefilling them K
        times costs as much as decoding on the CPU. `generate` then runs only each row's last prompt token
        on top of this cache, so the samples are those of the unshared call (up to float rounding).
        """
        if input_ids.shape[0] < 2 or input_ids.shape[1] < 2:
            return None
        shared = _distinct_prefixes(input_ids, attention_mask, input_ids.shape[1] - 1)
        if shared is None:
            return None
        ids, mask, inverse = shared
        # Positions as generate computes them for a left-padded batch (pads at 1, masked out anyway).
        positions = position_ids(mask, as_generate=True)
        out = self._causal_lm().base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = _returned_cache(out)
        if cache is None:
            return None
        cache.batch_select_indices(inverse)  # (distinct, heads, P-1, d) -> (rows, heads, P-1, d)
        return cache

    def eos_ids(self) -> set[int]:
        """Every token id that ends a response: the tokenizer's EOS and the generation config's
        (chat models add theirs).
        """
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.base_model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return {i for i in ids if i is not None}

    @contextlib.contextmanager
    def _dequantized_base(self, rows: int, tokens: int) -> Iterator[None]:
        """A 4-bit base's weights dequantized once for the block where that is asked for (`dequantized_decoding`;
        "auto": on the CPU) and the copy fits beside the KV cache of `rows` sequences of `tokens`
        (models/dequantized.py); else as they are, and each decoding step dequantizes every layer again."""
        wanted = self.dequantized_decoding
        nbytes = (
            dequantized_bytes(self.model) if wanted is True or (wanted == "auto" and self.device.type == "cpu") else 0
        )
        if not nbytes or not copy_fits(nbytes, self.device, kv_cache_bytes(self._causal_lm(), rows, tokens)):
            yield
            return
        if not self._told_dequantized:
            logger.info("decoding with the 4-bit base dequantized once per call (%.0f MiB)", nbytes / 2**20)
            self._told_dequantized = True
        with dequantized_linears(self.model):
            yield

    @contextlib.contextmanager
    def _generation_mode(self) -> Iterator[None]:
        causal_lm = self._causal_lm()
        was_training = self.model.training
        # Checkpointing acts only in training mode (and asking walks every module): an eval-mode model skips both.
        checkpointing = was_training and gradient_checkpointing_on(causal_lm)
        use_cache = causal_lm.config.use_cache
        # Every module follows the root's mode (RoleStack sets it for the whole model, adapters loaded included), so
        # an eval-mode model is left as it is: `eval()` walks every module, a cost per decoding step otherwise.
        if was_training:
            self.model.eval()
        if checkpointing:
            causal_lm.gradient_checkpointing_disable()
        causal_lm.config.use_cache = True
        try:
            yield
        finally:
            causal_lm.config.use_cache = use_cache
            if checkpointing:
                causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if was_training:
                self.model.train()
