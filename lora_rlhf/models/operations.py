"""How a RoleStack runs one decoding step with its roles, and the modes decoding runs in.

Kept apart from the stack's adapter lifecycle (roles.py: adding, switching, saving roles), from what is computed
with a role (forward.py: log-probs, rewards, values) and from the decoding loop (engine.py) so each file has one
job. `RoleOperations` is a mixin of `RoleStack`; the class annotations below are what it takes from its host.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from lora_rlhf.models.base import gradient_checkpointing_on
from lora_rlhf.models.dequantized import (
    copy_fits,
    dequantized_bytes,
    dequantized_linears,
    kv_cache_bytes,
    wants_dequantized_copy,
)
from lora_rlhf.models.kv_cache import cache_argument, returned_cache
from lora_rlhf.models.names import BASE
from lora_rlhf.models.row_adapters import BASE_ROW, RowAdapters

logger = logging.getLogger(__name__)


class RoleOperations:
    """One decoding step (one role, or a role per row) and the decoding modes; annotated: what `RoleStack` gives."""

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
    causal_lm: Callable[[], nn.Module]  # the model under PEFT's wrapper

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
                `engine.sample`), the plain forward.
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
            row_adapters = self.row_adapters()
            if row_adapters.supports(per_row):  # two batched matmuls per layer (models/row_adapters.py)
                grouped = row_adapters.applied(per_row)
            elif self.model.has_active_enabled_adapter:  # PEFT's loop over the adapters present
                mixed = {"adapter_names": per_row}
            else:  # inside use("base"), PEFT would skip its per-row hooks
                raise RuntimeError("rows of several roles need the adapters enabled; call this outside use('base')")
        with self.generation_mode(), grouped:
            causal_lm = self.causal_lm()
            kwargs = {"use_cache": True, **_logits_to_keep(causal_lm), **mixed}
            if cache is not None:
                kwargs[cache_argument(causal_lm)] = cache
            out = (self.model if mixed else causal_lm)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        return out.logits[:, -1].float(), returned_cache(out)

    def row_adapters(self) -> RowAdapters:
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
    def dequantized_base(self, rows: int, tokens: int) -> Iterator[None]:
        """A 4-bit base's weights dequantized once for the block where that is asked for (`dequantized_decoding`;
        "auto": on the CPU) and the copy fits beside the KV cache of `rows` sequences of `tokens`
        (models/dequantized.py); else as they are, and each decoding step dequantizes every layer again."""
        wanted = self.dequantized_decoding
        nbytes = dequantized_bytes(self.model) if wants_dequantized_copy(wanted, self.device.type) else 0
        if not nbytes or not copy_fits(nbytes, self.device, kv_cache_bytes(self.causal_lm(), rows, tokens)):
            yield
            return
        if not self._told_dequantized:
            logger.info("decoding with the 4-bit base dequantized once per call (%.0f MiB)", nbytes / 2**20)
            self._told_dequantized = True
        with dequantized_linears(self.model):
            yield

    @contextlib.contextmanager
    def generation_mode(self) -> Iterator[None]:
        """Decoding's mode for the block: eval mode, the KV cache on, gradient checkpointing off; restored after."""
        causal_lm = self.causal_lm()
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
