"""The sizes the memory plan needs, read from a model's config alone (weights never downloaded).

The model is instantiated on the meta device (`accelerate.init_empty_weights`), so every architecture
transformers can build from a config gives its exact linear layers, embeddings and norms, without
hand-written per-family formulas.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.config_sizes import kv_dim_of
from lora_rlhf.models.names import resolve_model_name

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What memory depends on: per-layer linear shapes, the quantizable and the other parameters."""

    name: str
    layers: int
    hidden: int
    vocab: int
    kv_dim: int  # key (= value) width per token per layer: kv heads x head dim
    layer_linears: tuple[tuple[int, int], ...]  # (in, out) of every linear in ONE decoder layer
    linear_params: int  # weights of all decoder-layer linears: what bitsandbytes quantizes
    other_params: int  # embeddings, norms, biases, the LM head: kept in the compute dtype

    @property
    def widest(self) -> int:
        """The MLP's inner width (the widest linear output of a layer)."""
        return max(fan_out for _, fan_out in self.layer_linears)

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU-style MLP (gate and up projections, as Llama): two linears reach the inner width."""
        return sum(fan_out == self.widest for _, fan_out in self.layer_linears) >= 2

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int) -> int:
        """Parameters of one LoRA adapter of rank `r` on every decoder-layer linear ("all-linear")."""
        return self.layers * sum(r * (fan_in + fan_out) for fan_in, fan_out in self.layer_linears)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear, quantized like nn.Linear
        fan_in, fan_out = module.weight.shape
        return int(fan_in), int(fan_out)
    return None


def _decoder_layers(model: nn.Module, count: int) -> nn.ModuleList:
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if not lists:
        raise LoraRlhfError(f"could not find the {count} decoder layers of {type(model).__name__}")
    return lists[0]


def shape_of(model: nn.Module, name: str = "") -> ModelShape:
    """The ModelShape of an instantiated (possibly meta-device) causal LM."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    decoder = _decoder_layers(model, layers)
    layer_linears = tuple(s for s in (_linear_shape(m) for m in decoder[0].modules()) if s is not None)
    shapes = [_linear_shape(module) for layer in decoder for module in layer.modules()]
    linear_weights = sum(fan_in * fan_out for fan_in, fan_out in filter(None, shapes))
    total = sum(p.numel() for p in model.parameters())
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or type(model).__name__,
        layers=layers,
        hidden=hidden,
        vocab=int(config.vocab_size),
        kv_dim=kv_dim_of(config),
        layer_linears=layer_linears,
        linear_params=linear_weights,
        other_params=total - linear_weights,
    )


def model_shape(name_or_path: str, *, trust_remote_code: bool = False) -> ModelShape:
    """Read `name_or_path`'s config (a folder, a Hub id, or a built-in name) and build it on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model_name(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise LoraRlhfError(f"could not read the config of {name_or_path!r}: {first}") from exc
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # a tied LM head shares the embeddings' storage; on the meta device it must be asked
    return shape_of(model, name_or_path)
