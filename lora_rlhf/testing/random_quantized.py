"""A random-weight 4-bit causal LM at any shape, built without ever holding its 16-bit weights (issue 30).

`from_pretrained` with a `BitsAndBytesConfig` quantizes each linear as its checkpoint shard arrives; this module
does the same for random weights, so an 8B-shaped model exists on a machine with a few GiB free:

    1. the model is instantiated on the meta device (`accelerate.init_empty_weights`): shapes only;
    2. each decoder-layer `nn.Linear` is replaced, one at a time, by a bitsandbytes `Linear4bit` holding packed
       NF4 codes: the first linear of each shape is drawn (N(0, initializer_range)) and quantized, and every
       later one of that shape gets uniformly random codes under its own copy of those scales (quantizing
       7B weights on the CPU takes ~6 minutes, drawing codes seconds), so at most one linear's compute-dtype
       weight ever exists;
    3. embeddings, norms, biases and the LM head are materialised in the compute dtype (norms at 1).

The result is marked the way transformers marks a 4-bit load (`is_loaded_in_4bit`, `quantization_method`,
`config.quantization_config`), so PEFT's k-bit preparation and LoRA's `Linear4bit` dispatch treat it as one.
Only the weights are random: what it is good for is memory and speed at the real shapes, not text.
"""

from __future__ import annotations

import torch
from torch import nn


def random_nf4_model(
    config, *, compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True, seed: int = 0
) -> nn.Module:
    """A causal LM of `config` (a transformers PretrainedConfig) on the CPU: NF4 decoder linears, the rest in
    `compute_dtype`, random weights; see the module docstring."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(seed)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    head = model.get_output_embeddings()
    std = float(getattr(config, "initializer_range", 0.02))
    templates: dict[tuple[int, int], nn.Module] = {}  # (out, in) -> the quantized draw of that shape
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not head:
                key = (child.out_features, child.in_features)
                if key not in templates:
                    templates[key] = layer = _quantized_linear(child, compute_dtype, double_quant, std)
                else:
                    layer = _random_codes_like(templates[key], child, compute_dtype, double_quant)
                setattr(parent, name, layer)
    _materialise_rest(model, compute_dtype, std)
    model.tie_weights()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    model.config.quantization_config = quant
    model.is_loaded_in_4bit = True
    model.quantization_method = quant.quant_method
    model.eval()
    return model


def _empty_linear4bit(linear: nn.Linear, dtype: torch.dtype, double_quant: bool) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=dtype,
        compress_statistics=double_quant,
        quant_type="nf4",
        device="meta",
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=dtype), requires_grad=False)
    return layer


def _quantized_linear(linear: nn.Linear, dtype: torch.dtype, double_quant: bool, std: float) -> nn.Module:
    """A Linear4bit of `linear`'s shape, its random weight quantized on the spot (the draw is freed at return)."""
    import bitsandbytes as bnb

    layer = _empty_linear4bit(linear, dtype, double_quant)
    weight = torch.randn(linear.out_features, linear.in_features, dtype=dtype) * std
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=double_quant, quant_type="nf4", module=layer
    ).to("cpu")  # quantizes: Params4bit packs on its first move to a real device
    return layer


def _random_codes_like(template: nn.Module, linear: nn.Linear, dtype: torch.dtype, double_quant: bool) -> nn.Module:
    """A Linear4bit of `linear`'s shape with uniformly random packed codes under a copy of `template`'s scales."""
    import copy

    import bitsandbytes as bnb

    layer = _empty_linear4bit(linear, dtype, double_quant)
    state = copy.deepcopy(template.weight.quant_state)
    layer.weight = bnb.nn.Params4bit(
        torch.randint(0, 256, template.weight.shape, dtype=torch.uint8),
        requires_grad=False,
        quant_state=state,
        compress_statistics=double_quant,
        quant_type="nf4",
        bnb_quantized=True,
        module=layer,
    )
    layer.quant_state = state
    return layer


def _materialise_rest(model: nn.Module, dtype: torch.dtype, std: float) -> None:
    """Every parameter still on the meta device (embeddings, norms, the head) in `dtype`: norms 1, biases 0."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type != "meta":
                continue
            if param.dim() == 1:
                value = torch.ones if "norm" in type(module).__name__.lower() and name == "weight" else torch.zeros
                data = value(param.shape, dtype=dtype)
            else:
                data = torch.randn(param.shape, dtype=dtype) * std
            setattr(module, name, nn.Parameter(data, requires_grad=False))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device.type == "meta":
                module.register_buffer(name, torch.zeros(buffer.shape, dtype=buffer.dtype))
