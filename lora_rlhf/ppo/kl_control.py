"""The β of the KL penalty: fixed (InstructGPT) or adapted toward a target KL (Ziegler et al. 2019)."""

from __future__ import annotations

from lora_rlhf.ppo.config import KLControl


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: InstructGPT keeps β fixed (β = 0.02 in its PPO-ptx runs)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593) §2.2: a proportional controller of β.

    e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
    β_{t+1} = β_t · (1 + K_β · e_t),   K_β = n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target  # KL (nats per sequence) the controller steers toward
        self.horizon = horizon  # steps over which β changes by at most a factor of about e^{±0.2}

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def make_kl_controller(
    kind: KLControl, init_kl_coef: float, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """The controller a PPO config asks for; `target` is required (and > 0) for "adaptive"."""
    if kind == "fixed":
        return FixedKLController(init_kl_coef)
    if kind != "adaptive":
        raise ValueError(f"kl controller kind must be 'fixed' or 'adaptive', got {kind!r}")
    if target is None or target <= 0:
        raise ValueError(f"the adaptive KL controller needs a positive target KL, got {target!r}")
    if horizon <= 0:
        raise ValueError(f"the adaptive KL controller needs a positive horizon, got {horizon!r}")
    return AdaptiveKLController(init_kl_coef, target, horizon)
