"""Adaptive multipliers for the named loss parts (``--loss_weighting fixed|inverse_ema|log_norm|grad_balance``).

``LossWeighter.weights(parts, shared_params, step)`` takes the raw part tensors {name: scalar L_k}
(``avemo.training.losses.total.loss_terms``) and returns {name: multiplier m_k} (floats, no gradient), passed as
``dynamic`` to ``avemo.training.losses.total.combine`` / ``compute_losses``: total = sum_k w_k m_k L_k where w_k are
the static ``LossWeights``. Modes:

  fixed        m_k = 1.
  inverse_ema  E_k <- mu E_k + (1 - mu) L_k (E_k = L_k at first sight, mu = momentum 0.9);
               m_k = (1 / E_k) / mean_j(1 / E_j): mean 1 (equivalently, the m_k sum to the number of parts).
  log_norm     m_k = 1 / (1 + L_k) with L_k detached, so d(m_k L_k) = dL_k / (1 + L_k) = d log(1 + L_k):
               the gradient of log(1 + L_k). (The multiplier log(1 + L)/L would give the value log(1 + L)
               but the gradient log(1 + L)/L * dL, which is not the gradient of log(1 + L).)
  grad_balance G_k = || dL_k / d shared_params ||_2 (torch.autograd.grad, retain_graph=True), recomputed
               when step % every == 0 (or a new part appears), reused in between;
               m_k = (1 / G_k) / mean_j(1 / G_j) over parts with G_k > 0; parts not touching the shared
               parameters get m_k = 1.

The weights in force are returned so the trainer can log them; ``state_dict``/``load_state_dict``
carry the EMA, the last grad_balance weights and the step counter for exact resume.
"""

from __future__ import annotations

import torch

MODES = ("fixed", "inverse_ema", "log_norm", "grad_balance")


def _normalise_inverse(values: dict[str, float], eps: float) -> dict[str, float]:
    """{k: v_k} with v_k > 0 -> {k: (1/v_k) / mean_j(1/v_j)} (mean 1)."""
    if not values:
        return {}
    inv = {k: 1.0 / max(v, eps) for k, v in values.items()}
    mean = sum(inv.values()) / len(inv)
    return {k: x / mean for k, x in inv.items()}


class LossWeighter:
    """Per-part loss multipliers; see the module docstring for the formulas."""

    def __init__(self, mode: str = "fixed", momentum: float = 0.9, every: int = 50, eps: float = 1e-12):
        if mode not in MODES:
            raise ValueError(f"loss weighting must be one of {MODES}, got {mode!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.mode, self.momentum, self.every, self.eps = mode, momentum, every, eps
        self.ema: dict[str, float] = {}
        self.last: dict[str, float] = {}  # last grad_balance weights
        self.last_step: int | None = None  # step at which grad_balance last recomputed
        self.calls = 0  # internal step counter used when ``step`` is not given

    def weights(
        self, parts: dict[str, torch.Tensor], shared_params: list[torch.Tensor] | None = None, step: int | None = None
    ) -> dict[str, float]:
        """parts {name: scalar tensor} -> {name: multiplier}. ``step`` defaults to an internal counter
        (number of previous calls). ``shared_params`` is required for grad_balance."""
        step = self.calls if step is None else int(step)
        self.calls += 1
        values = {k: float(v.detach()) for k, v in parts.items()}
        if self.mode == "fixed":
            return {k: 1.0 for k in parts}
        if self.mode == "log_norm":
            return {k: 1.0 / (1.0 + max(v, 0.0)) for k, v in values.items()}
        if self.mode == "inverse_ema":
            for k, v in values.items():
                self.ema[k] = v if k not in self.ema else self.momentum * self.ema[k] + (1 - self.momentum) * v
            return _normalise_inverse({k: self.ema[k] for k in parts}, self.eps)
        # grad_balance
        stale = self.last_step is None or step % self.every == 0 or any(k not in self.last for k in parts)
        if stale:
            self.last = self._grad_weights(parts, shared_params)
            self.last_step = step
        return {k: self.last.get(k, 1.0) for k in parts}

    def _grad_weights(
        self, parts: dict[str, torch.Tensor], shared_params: list[torch.Tensor] | None
    ) -> dict[str, float]:
        if not shared_params:
            raise ValueError("grad_balance needs shared_params (the parameters all parts flow through)")
        params = [p for p in shared_params if p.requires_grad]
        norms: dict[str, float] = {}
        for k, v in parts.items():
            if not v.requires_grad:
                norms[k] = 0.0
                continue
            grads = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
            sq = sum(float(g.detach().pow(2).sum()) for g in grads if g is not None)
            norms[k] = sq**0.5
        out = {k: 1.0 for k, g in norms.items() if g <= self.eps}
        out.update(_normalise_inverse({k: g for k, g in norms.items() if g > self.eps}, self.eps))
        return {k: out[k] for k in parts}

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "momentum": self.momentum,
            "every": self.every,
            "ema": dict(self.ema),
            "last": dict(self.last),
            "last_step": self.last_step,
            "calls": self.calls,
        }

    def load_state_dict(self, state: dict) -> None:
        self.mode, self.momentum, self.every = state["mode"], state["momentum"], state["every"]
        self.ema, self.last = dict(state["ema"]), dict(state["last"])
        self.last_step, self.calls = state["last_step"], state["calls"]
