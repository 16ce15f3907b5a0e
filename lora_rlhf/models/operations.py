"""What a RoleStack computes with its roles: hidden states, log-probs, rewards, values, generations.

Kept apart from the stack's adapter lifecycle (roles.py: adding, switching, saving roles) so each file
has one job. `RoleOperations` is a mixin of `RoleStack`: it relies on the stack's `model`, `base_model`,
`tokenizer`, `projection` / `chunked_logits` (models/logits.py), `use(role)`, `head(role)` and
`_causal_lm()`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator

import torch
from torch import nn

from lora_rlhf.models.base import gradient_checkpointing_on
from lora_rlhf.models.dequantized import copy_fits, dequantized_bytes, dequantized_linears, kv_cache_bytes
from lora_rlhf.models.heads import gather_last, last_token_index
from lora_rlhf.models.logits import IDENTITY, LogitsProjection
from lora_rlhf.models.logprobs import Projection, TokenLogProbs, token_logprobs
from lora_rlhf.models.names import BASE
from lora_rlhf.models.positions import position_ids
from lora_rlhf.models.row_adapters import BASE_ROW, RowAdapters

logger = logging.getLogger(__name__)


def _cache_argument(module: nn.Module) -> str:
    """The forward's name for a KV cache: `cache` in recent transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _returned_cache(out):
    """The KV cache a forward returned (`cache` in recent transformers 5.x, `past_key_values` before), or None."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _distinct_prefixes(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The distinct rows of the first `width` columns of (B, T) ids and mask: (D, width) ids, (D, width) mask
    and (B,) each row's index among them; None when no two rows share their first `width` columns."""
    rows = torch.cat([input_ids[:, :width], attention_mask[:, :width].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return None
    return distinct[:, :width], distinct[:, width:].to(attention_mask.dtype), inverse


class RoleOperations:
    """Forward passes under one role at a time; see the module docstring for what the host provides."""

    model: nn.Module
    base_model: nn.Module
    tokenizer: object
    projection: LogitsProjection
    chunked_logits: bool
    dequantized_decoding: bool | str  # decode from a 4-bit base dequantized once per call: True, False, "auto"
    _told_dequantized: bool
    # and the methods use(role), head(role) and _causal_lm(), defined by RoleStack

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, H) last hidden states under the active adapter (no LM head)."""
        backbone = self._causal_lm().base_model
        # Positions count real tokens only, so a left-padded row is encoded as if it were unpadded.
        positions = position_ids(attention_mask)
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def logprobs(
        self,
        role: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        chunk_size: int = 256,
        start: int = 0,
    ) -> TokenLogProbs:
        """Per-token log pi_role(x_{t+1} | x_{<=t}) of given sequences: (B, T) -> (B, T-1-start), chunked over T.

        `start` skips the LM head on the first positions (e.g. a prompt's, when only the response's
        log-probs are wanted: start = P - 1 gives (B, A)); the backbone still sees every token.
        """
        with self.use(role):
            states, project = self.logit_states(input_ids, attention_mask)
            return token_logprobs(
                states[:, start:-1],
                input_ids[:, start + 1 :],
                project,
                chunk_size=chunk_size,
                temperature=temperature,
                with_entropy=with_entropy,
            )

    def logit_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Projection]:
        """Under the active adapter: (B, T, .) states and the projection of any slice of them to float32 logits.

        The last hidden states and the chunkable LM-head projection where that reproduces the model's
        forward; otherwise the forward's own (B, T, V) logits and the identity (see `models/logits.py`).
        """
        if self.chunked_logits:
            return self.hidden_states(input_ids, attention_mask), self.projection
        positions = position_ids(attention_mask)
        out = self._causal_lm()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.logits, IDENTITY

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, role: str = "reward") -> torch.Tensor:
        """(B, T) sequences -> (B,) scalar scores read at each row's last non-pad token."""
        head = self.head(role)
        with self.use(role):
            return gather_last(head(self.hidden_states(input_ids, attention_mask)), attention_mask)

    def prefix_hidden_states(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        prompt_index: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states of N responses that share B prompts, each prompt encoded ONCE.

        The prompts run first and their KV cache is gathered to one copy per response, then the responses
        run on top of it; gradients reach the prompt's tokens through the cache. With K responses per prompt
        that encodes a prompt once instead of K times: the C(K, 2) pairs of a ranking (InstructGPT §3.5)
        cost P + K*R tokens instead of K*(P + R).

        Args:
            prompt_ids, prompt_mask: (B, P), padded on the LEFT.
            response_ids, response_mask: (N, R), padded on the RIGHT (every response non-empty).
            prompt_index: (N,) which prompt row each response continues.
        Returns:
            (N, R, H) last hidden states of the response positions, equal (up to float rounding) to those
            of `hidden_states` over each left-padded prompt + response.
        """
        backbone = self._causal_lm().base_model
        out = backbone(
            input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), use_cache=True
        )
        cache = _returned_cache(out)
        if cache is None:
            raise RuntimeError("the model returned no KV cache (gradient checkpointing on?): use hidden_states")
        cache.batch_select_indices(prompt_index)  # (B, heads, P, d) -> (N, heads, P, d) in every layer
        mask = torch.cat([prompt_mask[prompt_index], response_mask], dim=1)
        # A response's positions continue after its prompt's real tokens, as in the unshared left-padded row.
        offset = prompt_mask.long().sum(-1)[prompt_index].unsqueeze(1)
        positions = offset + torch.arange(response_ids.shape[1], device=response_ids.device)
        out = backbone(
            input_ids=response_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{_cache_argument(backbone): cache},
        )
        return out.last_hidden_state

    def prefix_rewards(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        prompt_index: torch.Tensor,
        role: str = "reward",
    ) -> torch.Tensor:
        """`rewards` of N responses sharing B prompts (see `prefix_hidden_states` for the shapes) -> (N,)."""
        head = self.head(role)
        with self.use(role):
            hidden = self.prefix_hidden_states(prompt_ids, prompt_mask, response_ids, response_mask, prompt_index)
        values = head(hidden)  # (N, R)
        return values.gather(1, last_token_index(response_mask).unsqueeze(1)).squeeze(1)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, role: str = "value") -> torch.Tensor:
        """(B, T) sequences -> (B, T) value of the state ending at each position."""
        head = self.head(role)
        with self.use(role):
            return head(self.hidden_states(input_ids, attention_mask))

    # --- rollout rows: [left-padded prompt (P columns) | right-padded response (A columns)], as PPO lays them out.
    # Several samples of one prompt arrive as rows with equal prompt columns; each method below then encodes
    # that prompt once (`prefix_hidden_states`) and equals its full-row form up to float rounding.

    def response_logprobs(
        self,
        role: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> TokenLogProbs:
        """(B, P + A) rollout rows -> (B, A) log pi_role of each response token: `logprobs(start=P - 1)`."""
        with self.use(role):
            states, project = self.response_logit_states(input_ids, attention_mask, prompt_width)
            return token_logprobs(
                states, input_ids[:, prompt_width:], project, temperature=temperature, with_entropy=with_entropy
            )

    def response_logit_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
    ) -> tuple[torch.Tensor, Projection]:
        """Under the active adapter: (B, P + A) rollout rows -> the (B, A, .) states that predict the A response
        tokens and their projection to logits: `logit_states(...)[:, P - 1 : -1]`."""
        p = prompt_width
        shared = self._shared_prompts(input_ids, attention_mask, p) if self.chunked_logits else None
        if shared is None:
            states, project = self.logit_states(input_ids, attention_mask)
            return states[:, p - 1 : -1], project
        return self.prefix_hidden_states(*shared)[:, :-1], self.projection  # positions P-1 .. T-2

    def response_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, role: str = "value"
    ) -> torch.Tensor:
        """(B, P + A) rollout rows -> (B, A) values of the states before each response token:
        `values(...)[:, P - 1 : -1]`."""
        p = prompt_width
        head = self.head(role)
        with self.use(role):
            shared = self._shared_prompts(input_ids, attention_mask, p)
            if shared is None:
                return head(self.hidden_states(input_ids, attention_mask))[:, p - 1 : -1]
            return head(self.prefix_hidden_states(*shared))[:, :-1]

    def response_rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, role: str = "reward"
    ) -> torch.Tensor:
        """(B, P + A) rollout rows -> (B,) scores at each row's last real token: `rewards(...)`."""
        shared = self._shared_prompts(input_ids, attention_mask, prompt_width)
        if shared is None:
            return self.rewards(input_ids, attention_mask, role)
        return self.prefix_rewards(*shared, role=role)

    @torch.no_grad()
    def frozen_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        *,
        temperature: float = 1.0,
        with_reward: bool = True,
        with_value: bool = True,
    ) -> dict[str, torch.Tensor] | None:
        """(B, P + A) rollout rows -> {"ref_logprobs": (B, A), "values": (B, A), "scores": (B,)} in ONE forward:
        what `response_logprobs("reference")`, `response_values` and `response_rewards` give, up to float rounding.

        The rows pass through the base once per role, stacked (2B or 3B rows), each copy under its own adapter
        (models/row_adapters.py): the base's weights are read (a 4-bit base: dequantized) once instead of three
        times, and each layer's fixed cost is paid once. None where this cannot run, and the caller makes the
        passes one role at a time: prompts that repeat (each role's pass then encodes each prompt once, which
        saves more), a model whose logits need its own forward, or adapters the per-row path cannot apply.
        Without `with_value` (critic-free PPO, issue 27) the value role is not stacked and "values" not returned.
        """
        p, b = prompt_width, input_ids.shape[0]
        roles = ["reference"] + (["value"] if with_value else []) + (["reward"] if with_reward else [])
        if not self.chunked_logits or self._shared_prompts(input_ids, attention_mask, p) is not None:
            return None
        per_row = [BASE_ROW if (n := self.resolve(r)) == BASE else n for r in roles for _ in range(b)]
        row_adapters = self._row_adapters()
        if not row_adapters.supports(per_row):
            return None
        with row_adapters.applied(per_row):
            hidden = self.hidden_states(input_ids.repeat(len(roles), 1), attention_mask.repeat(len(roles), 1))
        reference = token_logprobs(hidden[:b, p - 1 : -1], input_ids[:, p:], self.projection, temperature=temperature)
        out = {"ref_logprobs": reference.logprobs}
        if with_value:
            out["values"] = self.head("value")(hidden[b : 2 * b])[:, p - 1 : -1]
        if with_reward:
            out["scores"] = gather_last(self.head("reward")(hidden[(len(roles) - 1) * b :]), attention_mask)
        return out

    def _shared_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int):
        """Rollout rows split for `prefix_hidden_states`, or None when no prompt repeats.

        The distinct prompts but their last token (D, P - 1) form the shared part; each row's last prompt
        token and its response (B, A + 1) run on top, so the hidden states come back for positions P - 1 ..
        T - 1, the ones that predict or score the response. None too where the prefix path cannot run: a
        one-token prompt (nothing to share) or gradient checkpointing in training (no KV cache is returned).
        """
        p = prompt_width
        checkpointing = self.model.training and gradient_checkpointing_on(self._causal_lm())
        if p < 2 or input_ids.shape[0] < 2 or checkpointing:
            return None
        shared = _distinct_prefixes(input_ids, attention_mask, p - 1)
        if shared is None or not shared[1].any(dim=1).all():
            return None
        prompt_ids, prompt_mask, inverse = shared
        return prompt_ids, prompt_mask, input_ids[:, p - 1 :], attention_mask[:, p - 1 :], inverse

    @torch.no_grad()
    def next_token_logits(
        self,
        roles: list[str] | None,
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
            roles: N role names, one per row; None: every row under the adapter `use()` made active (models/engine.py
                `decode`), the plain forward.
            input_ids, attention_mask: (N, S) new ids and (N, C + S) mask over the cached and new columns.
            position_ids: (N, S) each new token's position (pads not counted).
        """
        names = None if roles is None else [self.resolve(r) for r in roles]
        active = getattr(self.model, "active_adapter", None) if self._params else None
        # Rows of the active adapter (or, with no adapter on the base, of "base") take the plain forward. Any other
        # mix gets each row's adapter per row, whatever adapter is active: no adapter is switched, which would cost
        # more than the step itself on a small model (set_adapter walks every layer).
        plain = names is None or set(names) == {active if self._params else BASE}
        grouped = contextlib.nullcontext()
        mixed: dict = {}
        if not plain:
            per_row = [BASE_ROW if n == BASE else n for n in names]
            row_adapters = self._row_adapters()
            if row_adapters.supports(per_row):  # two batched matmuls per layer (models/row_adapters.py)
                grouped = row_adapters.applied(per_row)
            elif self.model.has_active_enabled_adapter:  # PEFT's loop over the adapters present
                mixed = {"adapter_names": per_row}
            else:  # inside use("base"), PEFT would skip its per-row hooks
                raise RuntimeError("rows of several roles need the adapters enabled; call this outside use('base')")
        with self._generation_mode(), grouped:
            causal_lm = self._causal_lm()
            kwargs = {"use_cache": True, **_logits_to_keep(causal_lm), **mixed}
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


def _logits_to_keep(module: nn.Module) -> dict[str, int]:
    """{"logits_to_keep": 1} where the forward takes it (only the last position's logits are needed)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(module.forward).parameters else {}
