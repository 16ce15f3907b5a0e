"""The Python half of scripts/gpu_check.sh (issue 30): the checks it runs and the report it writes.

    python scripts/gpu_check_report.py device --out DIR        the device, torch, CUDA and bitsandbytes, as JSON
    python scripts/gpu_check_report.py parity --out DIR        NF4 on CUDA against the CPU path on a tiny model
    python scripts/gpu_check_report.py assemble DIR            DIR/report.md from what the pieces left in DIR

Every piece of gpu_check.sh leaves DIR/<piece>.rc (its exit status) and DIR/<piece>.log (its output); `assemble`
puts each piece's result in the report, marks a piece that failed or never ran as FAILED with the end of its log,
and exits 1 if any did: nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Pieces in report order: (name, title, what the report shows of it).
PIECES = (
    ("device", "Device", "json"),
    ("parity", "NF4 on CUDA against the CPU path (tiny Llama)", "json"),
    ("validate_demo", "Plan against measured: demo model (validate_plan.py --device cuda)", "table"),
    ("validate_8b", "Plan against measured: 8B-shaped random NF4 at the recipe's sizes", "table"),
    ("ppo_8b", "One PPO iteration (and every phase) of the 8B-shaped model", "table"),
    ("dequant_true", "bench_ppo.py --dequantized-decoding true (demo, NF4)", "tail"),
    ("dequant_false", "bench_ppo.py --dequantized-decoding false (demo, NF4)", "tail"),
    ("serve16", "Serving benchmark at 16 clients (bench_serve.py)", "tail"),
)
# NF4 on CUDA against the CPU: the same packed weights and LoRA matrices, fp32 compute, TF32 off. The 4-bit
# dequantization is exact on both; what differs is the order of fp32 sums in the matmuls (and bitsandbytes' kernels).
LOGPROB_ATOL = 1e-3  # nats, per token
GRAD_RTOL = 1e-2  # max |g_cuda - g_cpu| / max |g_cpu|, per LoRA tensor
TAIL_LINES = 25


def device_info() -> dict:
    import bitsandbytes
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": bitsandbytes.__version__,
    }


def _parity_stack(folder: Path, device: str):
    import torch

    from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack

    stack = RoleStack.load(BaseModelConfig(str(folder), quantization="nf4", compute_dtype="float32", device=device))
    stack.add_role("sft", LoraSettings(r=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at 0: give every matrix the same nonzero values on both devices
        for param in stack.role_parameters("sft"):
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.02)
    stack.set_trainable("sft")
    return stack


def parity() -> dict:
    """Log-probs and LoRA gradients of one batch, CPU vs CUDA, each quantizing the same saved fp32 weights to NF4."""
    import torch

    from lora_rlhf.models import forward
    from lora_rlhf.testing import make_tiny_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_model(Path(tmp) / "tiny", "llama", hidden=128, layers=2)
        results = {}
        ids = torch.randint(8, 300, (4, 24), generator=torch.Generator().manual_seed(0))
        for device in ("cpu", "cuda"):
            stack = _parity_stack(folder, device)
            with stack.training():
                out = forward.logprobs(stack, "sft", ids.to(device), torch.ones_like(ids).to(device)).logprobs
                out.sum().backward()
            grads = {n: p.grad.detach().cpu() for n, p in stack.model.named_parameters() if p.grad is not None}
            results[device] = (out.detach().cpu(), grads)
    (lp_cpu, g_cpu), (lp_cuda, g_cuda) = results["cpu"], results["cuda"]
    logprob_diff = float((lp_cpu - lp_cuda).abs().max())
    grad_rel = max(float((g_cuda[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)) for n, g in g_cpu.items())
    return {
        "rows_x_tokens": "4 x 24",
        "logprob_max_abs_diff": logprob_diff,
        "logprob_atol": LOGPROB_ATOL,
        "grad_max_rel_diff": grad_rel,
        "grad_rtol": GRAD_RTOL,
        "lora_tensors": len(g_cpu),
        "passed": logprob_diff <= LOGPROB_ATOL and grad_rel <= GRAD_RTOL and len(g_cpu) == len(g_cuda) > 0,
    }


def _status(folder: Path, piece: str) -> int | None:
    rc = folder / f"{piece}.rc"
    return int(rc.read_text().strip() or 1) if rc.is_file() else None


def _tail(folder: Path, piece: str, lines: int = TAIL_LINES) -> str:
    log = folder / f"{piece}.log"
    text = log.read_text(errors="replace").rstrip().splitlines()[-lines:] if log.is_file() else ["(no log)"]
    return "```\n" + "\n".join(text) + "\n```"


def _table(folder: Path, piece: str) -> str:
    """The Markdown table rows ('|' lines) the piece printed, in order."""
    log = folder / f"{piece}.log"
    rows = (
        [line for line in log.read_text(errors="replace").splitlines() if line.startswith("|")] if log.is_file() else []
    )
    return "\n".join(rows) if rows else _tail(folder, piece)


def _section(folder: Path, piece: str, title: str, kind: str) -> tuple[str, bool]:
    rc = _status(folder, piece)
    if rc is None:
        return f"## {title}\n\n**FAILED**: this piece did not run (no {piece}.rc).\n", False
    result = folder / f"{piece}.json"
    ok = rc == 0
    if kind == "json" and result.is_file():
        data = json.loads(result.read_text())
        ok = ok and data.get("passed", True)
        body = "\n".join(f"- {key}: {value}" for key, value in data.items())
    elif kind == "table":
        body = _table(folder, piece)
    else:
        body = _tail(folder, piece)
    if not ok:
        return f"## {title}\n\n**FAILED** (exit status {rc}).\n\n{body}\n\n{_tail(folder, piece)}\n", False
    return f"## {title}\n\n{body}\n", True


def assemble(folder: Path) -> tuple[str, bool]:
    """The report's Markdown and whether every piece passed."""
    device = folder / "device.json"
    name = json.loads(device.read_text())["name"] if device.is_file() else "UNKNOWN DEVICE"
    parts = [
        f"# gpu_check on {name}",
        "",
        f"Tolerances of the NF4 parity check: log-probs within {LOGPROB_ATOL} nats per token, LoRA gradients within "
        f"{GRAD_RTOL:.0%} of the largest CPU gradient of each tensor (fp32 compute, TF32 off).",
        "",
    ]
    passed = True
    for piece, title, kind in PIECES:
        text, ok = _section(folder, piece, title, kind)
        parts.append(text)
        passed = passed and ok
    parts.append(f"**Result: {'every piece passed' if passed else 'FAILED: see the pieces marked FAILED'}.**")
    return "\n".join(parts) + "\n", passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("device", "parity"):
        sub.add_parser(command).add_argument("--out", type=Path, required=True)
    sub.add_parser("assemble").add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "assemble":
        report, passed = assemble(args.folder)
        (args.folder / "report.md").write_text(report)
        print(report)
        return 0 if passed else 1
    data = device_info() if args.command == "device" else parity()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.command}.json").write_text(json.dumps(data, indent=1))
    print(json.dumps(data))
    return 0 if data.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
