"""The role stack: one base model carrying a named LoRA adapter (and scalar head) per role.

InstructGPT needs four networks during PPO: the policy, the frozen SFT model as the KL reference, the
reward model and the value function. Here they are four adapters on ONE base in memory:

    sft     the base's LM head        frozen during PPO; it IS the reference pi^SFT
    reward  scalar head, last token   frozen during PPO
    policy  the base's LM head        trained by PPO (starts as a copy of sft)
    value   scalar head, every token  trained by PPO (starts as a copy of reward, head included)

"base" runs the bare model with every adapter off, and "reference" is another name for "sft".

Gradients are owned by the stack, not by PEFT: a role's parameters train only after
`set_trainable(role)`, and switching roles with `use()` never changes that (PEFT's `set_adapter`
flips `requires_grad` by itself, so `use` restores it, also when an exception is raised).

This file is the stack's adapter lifecycle (adding, switching, training modes, saving and loading
roles); what is computed with a role (log-probs, rewards, values) is in forward.py, as functions of the stack,
the role and the batch, and how the stack generates is in operations.py.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import adapter_io
from lora_rlhf.models.base import (
    BaseModelConfig,
    keep_head_input_contiguous,
    keep_nf4_differentiable,
    load_base_model,
    load_tokenizer,
)
from lora_rlhf.models.heads import HeadKind, ScalarHead
from lora_rlhf.models.logits import LogitsProjection, matches_forward, projection_for
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.names import BASE
from lora_rlhf.models.operations import RoleOperations
from lora_rlhf.models.row_adapters import RowAdapters

logger = logging.getLogger(__name__)

# The roles of the InstructGPT recipe and the head each one carries.
KNOWN_ROLES: dict[str, HeadKind | None] = {"sft": None, "reward": "reward", "policy": None, "value": "value"}
REFERENCE = "reference"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class RoleStack(RoleOperations):
    """One base model and its role adapters; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        *,
        base_name: str | None = None,
        dequantized_decoding: bool | str = "auto",
    ) -> None:
        self.base_model = model
        self.model = model  # becomes a peft.PeftModel when the first role is added
        self.tokenizer = tokenizer
        self.base_name = base_name or getattr(model.config, "_name_or_path", "") or "unknown"
        self.heads = nn.ModuleDict()
        self._params: dict[str, list[nn.Parameter]] = {}
        self._layout = 0  # bumped when an adapter is added or removed: views of the LoRA layers are rebuilt
        self._row_adapters_cache: tuple[int, RowAdapters] | None = None  # (layout it was built for, the view)
        self.dequantized_decoding, self._told_dequantized = dequantized_decoding, False  # see models/dequantized.py
        # Before any no-grad forward (the probe below is one): bitsandbytes' CPU repack breaks NF4 gradients.
        keep_nf4_differentiable(model)
        keep_head_input_contiguous(model)  # a bf16 head is not copied once per row (models/base.py)
        self.projection: LogitsProjection = projection_for(model)
        # Chunked log-probs only where the projection reproduces the model's forward (models/logits.py).
        self.chunked_logits = matches_forward(model, model.base_model, self.projection)

    @classmethod
    def load(cls, config: BaseModelConfig) -> RoleStack:
        """Load the base (and tokenizer) described by `config`."""
        return cls(
            load_base_model(config),
            load_tokenizer(config),
            base_name=config.name_or_path,
            dequantized_decoding=config.dequantized_decoding,
        )

    # ----------------------------------------------------------------- roles
    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._params)

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    @property
    def lm_head(self) -> nn.Module:
        """The base's output projection (shared by every LM role; LoRA does not adapt it)."""
        return self.causal_lm().get_output_embeddings()

    def has_role(self, role: str) -> bool:
        return role in self._params

    def add_role(self, role: str, lora: LoraSettings | None = None, *, head: HeadKind | None | str = "default") -> None:
        """Add a fresh adapter named `role` (LoRA's B = 0, so it starts equal to the base) and its head.

        `head` defaults to the role's head in KNOWN_ROLES (none for other names).
        """
        self._check_new(role)
        self._attach(role, (lora or LoraSettings()).to_peft())
        self._add_head(role, KNOWN_ROLES.get(role) if head == "default" else head)

    def copy_role(self, source: str, target: str, *, head: HeadKind | None | str = "default") -> None:
        """Add `target` as a copy of `source`'s adapter weights (and head weights, if both have one).

        InstructGPT initialises the PPO policy from the SFT model and the value function from the RM.
        """
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        self._require(source)
        self._check_new(target)
        self._attach(target, copy.deepcopy(self.model.peft_config[source]))
        state = get_peft_model_state_dict(self.model, adapter_name=source)
        set_peft_model_state_dict(self.model, state, adapter_name=target)
        self._add_head(target, KNOWN_ROLES.get(target) if head == "default" else head)
        if source in self.heads and target in self.heads:
            self.heads[target].linear.load_state_dict(self.heads[source].linear.state_dict())

    def resolve(self, role: str) -> str:
        """Map a user-facing role name to an adapter name (or BASE), with a one-line error if it cannot run."""
        if role == REFERENCE:
            role = "sft"
        if role == BASE or role in self._params:
            return role
        if role in KNOWN_ROLES:
            raise LoraRlhfError(f"role {role!r} has not been added yet (roles on this base: {self._listing()})")
        raise LoraRlhfError(
            f"unknown role {role!r}: expected one of {', '.join(KNOWN_ROLES)}, {REFERENCE}, {BASE} "
            f"or an added adapter (roles on this base: {self._listing()})"
        )

    def head(self, role: str) -> ScalarHead:
        role = self.resolve(role)
        if role not in self.heads:
            raise LoraRlhfError(
                f"role {role!r} has no scalar head (roles with heads: {', '.join(self.heads) or 'none'})"
            )
        return self.heads[role]

    # --------------------------------------------------------------- switching
    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[None]:
        """Run the body with `role`'s adapter active (or none, for "base").

        Restores the previously active adapter and every parameter's `requires_grad` on exit, also
        on an exception. With gradient checkpointing, call `backward()` inside this block: the
        recomputed forward runs under whichever adapter is active at that time.
        """
        name = self.resolve(role)
        grads = self._grad_state()
        previous = getattr(self.model, "active_adapter", None)
        try:
            if name == BASE:
                with self.model.disable_adapter() if self._params else contextlib.nullcontext():
                    yield
            else:
                self.model.set_adapter(name)
                self._restore_grads(grads)
                yield
        finally:
            if previous is not None and self.model.active_adapter != previous:
                self.model.set_adapter(previous)
            self._restore_grads(grads)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode for the body (no LoRA dropout while measuring), then the previous train/eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @contextlib.contextmanager
    def training(self, *, dropout: bool = True) -> Iterator[None]:
        """Train mode for the body, then the previous mode; `dropout=False` zeroes every dropout probability.

        PPO trains with dropout off (gradient checkpointing recomputes only in train mode, but LoRA
        dropout would make pi_old != pi at the first minibatch, ratio != 1, and rollouts unrepeatable).
        """
        was_training = self.model.training
        saved = [] if dropout else [(m, m.p) for m in self.model.modules() if isinstance(m, nn.Dropout)]
        self.model.train()
        try:
            for module, _ in saved:
                module.p = 0.0
            yield
        finally:
            for module, p in saved:
                module.p = p
            self.model.train(was_training)

    def set_trainable(self, *roles: str) -> None:
        """Make exactly `roles` (adapters and heads) trainable; every other role and the base frozen."""
        wanted = {self.resolve(r) for r in roles}
        if BASE in wanted:
            raise LoraRlhfError("the base model is frozen; only roles can be trained")
        for role, params in self._params.items():
            for param in params:
                param.requires_grad_(role in wanted)
        for role, head in self.heads.items():
            head.requires_grad_(role in wanted)

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        """The trainable tensors of `role`: its LoRA matrices and its head."""
        role = self.resolve(role)
        if role == BASE:
            return []
        head = list(self.heads[role].parameters()) if role in self.heads else []
        return self._params[role] + head

    # ---------------------------------------------------------------- save/load
    def save_role(self, role: str, folder: str | Path, *, card: str | None = None) -> Path:
        """Write `role` as a plain PEFT adapter folder (+ head.safetensors), atomically."""
        role = self.resolve(role)
        if role == BASE:
            raise LoraRlhfError("the bare base has no adapter to save")
        head = self.heads[role] if role in self.heads else None
        return adapter_io.save_adapter(self.model, role, Path(folder), head=head, base_name=self.base_name, card=card)

    def load_role(self, role: str, folder: str | Path) -> None:
        """Attach the adapter saved in `folder` as `role` (frozen until `set_trainable`)."""
        self._check_new(role)
        folder = adapter_io.check_adapter_folder(folder, self.base_model, self.base_name)
        head = adapter_io.load_head(folder, self._hidden_size(), self.device)  # checked before the role attaches
        grads = self._grad_state()
        was_training = self.model.training
        if self._params:
            self.model.load_adapter(str(folder), adapter_name=role, is_trainable=True)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.base_model, str(folder), adapter_name=role, is_trainable=True)
        self.model.train(was_training)
        self._register(role, grads)
        if head is not None:
            head.requires_grad_(False)
            self.heads[role] = head

    def restore_role(self, role: str, folder: str | Path) -> None:
        """Overwrite an existing role's adapter (and head) weights with those saved in `folder` (resuming)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        role = self.resolve(role)
        folder = adapter_io.check_adapter_folder(folder, self.base_model, self.base_name)
        head = adapter_io.load_head(folder, self._hidden_size(), self.device)  # checked before any weight moves
        state = load_file(str(folder / adapter_io.ADAPTER_WEIGHTS), device=str(self.device))
        result = set_peft_model_state_dict(self.model, state, adapter_name=role)
        missing = [k for k in result.missing_keys if f".{role}." in k and "lora_" in k]
        if missing:
            raise LoraRlhfError(f"{folder} does not hold every weight of role {role!r} (missing {missing[0]})")
        if head is not None and role in self.heads:
            with torch.no_grad():
                for mine, saved in zip(self.heads[role].parameters(), head.parameters()):
                    mine.copy_(saved)

    def remove_role(self, role: str) -> None:
        """Delete `role`'s adapter and head (e.g. unloading an adapter from a server).

        PEFT cannot delete a PeftModel's last adapter (it stays the active one), so the last role is
        removed by unwrapping the LoRA layers, leaving the stack as it was before its first role.
        """
        name = self.resolve(role)
        if name == BASE:
            raise LoraRlhfError("the bare base cannot be removed")
        removed = {id(p) for p in self.role_parameters(name)}
        grads = {
            p: flag for p, flag in self._grad_state().items() if id(p) not in removed
        }  # PEFT's set_adapter flips them
        if len(self._params) == 1:
            self.model = self.model.unload()
            self.base_model = self.model
        else:
            if self.model.active_adapter == name:
                self.model.set_adapter(next(r for r in self._params if r != name))
            self.model.delete_adapter(name)
        del self._params[name]
        self._layout += 1
        if name in self.heads:
            del self.heads[name]
        self._restore_grads(grads)

    def adapter_nbytes(self, role: str) -> int:
        """Bytes held by `role`'s adapter and head (what adding it costs in memory)."""
        return sum(p.numel() * p.element_size() for p in self.role_parameters(role))

    # -------------------------------------------------------------- internals
    def _attach(self, role: str, peft_config) -> None:
        grads = self._grad_state()
        was_training = self.model.training
        if self._params:
            self.model.add_adapter(role, peft_config)
        else:
            from peft import get_peft_model

            self.model = get_peft_model(self.base_model, peft_config, adapter_name=role)
        self.model.train(was_training)  # PEFT switches to train mode; train/eval is the caller's choice
        self._register(role, grads)

    def _register(self, role: str, grads: dict[nn.Parameter, bool]) -> None:
        pattern = re.compile(rf"\.lora_[A-Za-z_]+\.{re.escape(role)}(\.|$)")
        params = [p for n, p in self.model.named_parameters() if pattern.search(n)]
        if not params:
            raise LoraRlhfError(f"adapter {role!r} matched no module of this base; check lora.target_modules")
        self._params[role] = params
        self._layout += 1
        self._restore_grads(grads)
        for param in params:
            param.requires_grad_(False)

    def _add_head(self, role: str, kind: HeadKind | None) -> None:
        if kind is None:
            return
        head = ScalarHead(self._hidden_size(), kind).to(self.device)
        head.requires_grad_(False)
        self.heads[role] = head

    def _check_new(self, role: str) -> None:
        if not isinstance(role, str) or not _NAME.match(role) or role in (BASE, REFERENCE):
            raise LoraRlhfError(
                f"invalid role name {role!r}: use letters, digits, '_' or '-', not {BASE!r} or {REFERENCE!r}"
            )
        if role in self._params:
            raise LoraRlhfError(f"role {role!r} already exists on this base")

    def _require(self, role: str) -> None:
        if self.resolve(role) == BASE:
            raise LoraRlhfError("the bare base has no adapter to copy")

    def _listing(self) -> str:
        return ", ".join(self._params) or "none yet"

    def causal_lm(self) -> nn.Module:
        """The `*ForCausalLM` under PEFT's wrapper (the model itself before any role is added)."""
        return self.model.get_base_model() if self._params else self.model

    def _hidden_size(self) -> int:
        config = self.base_model.config
        return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size

    def _grad_state(self) -> dict[nn.Parameter, bool]:
        state = {p: p.requires_grad for params in self._params.values() for p in params}
        state.update({p: p.requires_grad for p in self.heads.parameters()})
        return state

    @staticmethod
    def _restore_grads(state: dict[nn.Parameter, bool]) -> None:
        for param, flag in state.items():
            param.requires_grad_(flag)
