"""IntroLLM: a learned per-token temperature policy pi_phi(tau_t | h_t, tau_{t-1})
(arXiv 2602.13035).

docs/algorithms.md §2. A small head on the final post-norm hidden state h_t,

    u_t = W2 ReLU(W1 h_t + b1) + b2,   W1: d -> d/2,  W2: d/2 -> 3,   u_t = [u_c, u_alpha, u_beta],

picks a hybrid action at each generated position:

    c_t ~ Bernoulli(sigmoid(u_c))                      # draw a new temperature or keep the last
    c_t = 1:  z_t ~ Beta(softplus(u_alpha) + eps, softplus(u_beta) + eps),
              tau_t = tau_min + z_t (tau_max - tau_min)
    c_t = 0:  tau_t = tau_{t-1}, z_t recorded as 0

    log pi_phi(a_t) = c_t log sig(u_c) + (1 - c_t) log(1 - sig(u_c))
                      + c_t log Beta(z_t; alpha, beta)

(in fp32 at least, z clamped to [1e-6, 1 - 1e-6]). At position 0 the gate is forced to 1 (the head
decides the first temperature), so the gate term is dropped there: it was not a decision.
The Jacobian of z -> tau is constant and cancels in every ratio, so log-probs are over z.

The phi-phase loss is `learner.core_algos.phi_policy_loss` over `TemperatureHead.log_prob`.
Dimension vocabulary: N rows being sampled at once (or any leading shape such as (B, T)), d hidden.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meta.base import (
    RowContext,
    TempDecision,
    TemperatureStrategy,
    check_positive,
    check_tau_bounds,
)

Z_CLAMP = 1e-6  # z is clamped to [Z_CLAMP, 1 - Z_CLAMP] inside log Beta (docs/algorithms.md §2)


def beta_log_prob(z: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """log Beta(z; alpha, beta) = (a-1) log z + (b-1) log(1-z)
    - [lgamma a + lgamma b - lgamma(a+b)]."""
    z = z.clamp(Z_CLAMP, 1 - Z_CLAMP)
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return (alpha - 1) * torch.log(z) + (beta - 1) * torch.log1p(-z) - log_norm


def beta_entropy(alpha: Tensor, beta: Tensor) -> Tensor:
    """Differential entropy of Beta(alpha, beta) in nats."""
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return (log_norm - (alpha - 1) * torch.digamma(alpha) - (beta - 1) * torch.digamma(beta)
            + (alpha + beta - 2) * torch.digamma(alpha + beta))


class TemperatureHead(nn.Module):
    """The phi branch: two linear layers, d -> d/2 -> 3, evaluated in fp32 (fp64 if its weights
    are).

    Init (our default): W1, b1 keep PyTorch's default Linear init; W2 ~ N(0, head_init_std^2),
    small, so that at start u is close to b2, and b2 is set so that sigmoid(u_c) = gate_init_prob
    and softplus(u_alpha) + eps = softplus(u_beta) + eps = beta_init (Beta(2, 2): mean tau =
    midpoint).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-3,
                 gate_init_prob: float = 0.5,  # (our default)
                 beta_init: float = 2.0,  # (our default)
                 head_init_std: float = 1e-3):  # (our default)
        super().__init__()
        if int(hidden_size) != hidden_size or hidden_size < 2:
            raise ValueError(f"hidden_size ({hidden_size}) must be an integer >= 2; pass the "
                             f"backbone's hidden size, e.g. hidden_size=2048 for Qwen3-1.7B")
        check_positive("eps", eps, 1e-3)
        if not 0.0 < gate_init_prob < 1.0:
            raise ValueError(f"gate_init_prob ({gate_init_prob}) must be in (0, 1); "
                             f"set e.g. gate_init_prob=0.5")
        if not beta_init > eps:
            raise ValueError(f"beta_init ({beta_init}) must be > eps ({eps}) since "
                             f"softplus(.) + eps > eps; set e.g. beta_init=2.0")
        check_positive("head_init_std", head_init_std, 1e-3)
        self.eps = float(eps)
        self.fc1 = nn.Linear(hidden_size, hidden_size // 2)
        self.fc2 = nn.Linear(hidden_size // 2, 3)
        with torch.no_grad():
            nn.init.normal_(self.fc2.weight, std=head_init_std)
            shape_bias = math.log(math.expm1(beta_init - eps))  # softplus^-1(beta_init - eps)
            gate_bias = math.log(gate_init_prob / (1 - gate_init_prob))  # logit(gate_init_prob)
            self.fc2.bias.copy_(torch.tensor([gate_bias, shape_bias, shape_bias]))

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (..., d) of any dtype -> u (..., 3) in fp32 (fp64 if the head is fp64)."""
        dtype = torch.float64 if self.fc1.weight.dtype == torch.float64 else torch.float32
        x = F.linear(hidden.to(dtype), self.fc1.weight.to(dtype), self.fc1.bias.to(dtype))
        return F.linear(F.relu(x), self.fc2.weight.to(dtype), self.fc2.bias.to(dtype))

    def gate_and_shapes(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden (..., d) -> gate logit u_c (...,) and the Beta shapes (..., 2): alpha, beta."""
        u = self(hidden)
        return u[..., 0], F.softplus(u[..., 1:]) + self.eps

    def distribution_params(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hidden (..., d) -> gate logit u_c, alpha, beta, each (...,)."""
        gate_logit, shapes = self.gate_and_shapes(hidden)
        return gate_logit, shapes[..., 0], shapes[..., 1]

    def log_prob(self, hidden: Tensor, gate: Tensor, z: Tensor, forced: Tensor) -> Tensor:
        """log pi_phi(a) (...,) of recorded actions; differentiable in the head's parameters.

        hidden (..., d); gate (...,) in {0, 1}; z (...,) Beta draw (ignored where gate == 0);
        forced (...,) bool, True where the gate was forced to 1 (position 0): no gate term there.
        Uses torch.where (not multiplication by 0) so garbage z at gate-0 rows cannot leak NaN.
        """
        return self.log_prob_from_params(*self.distribution_params(hidden), gate, z, forced)

    @staticmethod
    def log_prob_from_params(gate_logit: Tensor, alpha: Tensor, beta: Tensor, gate: Tensor,
                             z: Tensor, forced: Tensor) -> Tensor:
        """`log_prob` given the head's outputs (so sampling need not run the head twice)."""
        on = gate > 0.5  # (...,) bool; NaN -> False
        log_gate = F.logsigmoid(torch.where(on, gate_logit, -gate_logit))
        log_gate = log_gate.masked_fill(forced.bool(), 0.0)
        z_safe = torch.where(on, z.to(alpha.dtype), 0.5)
        return log_gate + torch.where(on, beta_log_prob(z_safe, alpha, beta), 0.0)

    def entropy(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(gate Bernoulli entropy, Beta entropy), each (...,) in nats."""
        gate_logit, alpha, beta = self.distribution_params(hidden)
        p = torch.sigmoid(gate_logit)
        gate_entropy = -(p * F.logsigmoid(gate_logit) + (1 - p) * F.logsigmoid(-gate_logit))
        return gate_entropy, beta_entropy(alpha, beta)


class IntroLLM(TemperatureStrategy):
    """Learned per-token temperature: the head decides, the learner trains it (phi-phase).

    temperature_mode: "sample" draws z ~ Beta; "mean" uses the Beta mean alpha / (alpha + beta)
    (evaluation option `eval.temperature_mode=mean`); the gate is sampled in both modes.
    """

    name = "introllm"
    per_token = True
    needs_hidden = True
    learns_head = True
    temperature_modes = ("sample", "mean")

    def __init__(self, hidden_size: int,
                 tau_min: float = 0.5,  # (our default)
                 tau_max: float = 1.5,  # (our default)
                 eps: float = 1e-3,  # (our default)
                 tau_init: float = 1.0,  # (our default) tau_0, the request's base temperature
                 gate_init_prob: float = 0.5,  # (our default)
                 beta_init: float = 2.0,  # (our default)
                 head_init_std: float = 1e-3,  # (our default)
                 temperature_mode: str = "sample"):
        check_tau_bounds(tau_min, tau_max, 0.5)
        check_positive("tau_init", tau_init, 1.0)
        self._check_mode(temperature_mode)
        self.tau_min, self.tau_max, self.tau_init = float(tau_min), float(tau_max), float(tau_init)
        self.temperature_mode = temperature_mode
        self.head = TemperatureHead(hidden_size, eps, gate_init_prob, beta_init, head_init_std)

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in ("sample", "mean"):
            raise ValueError(f"temperature_mode ({mode!r}) must be 'sample' or 'mean'; "
                             f"set e.g. temperature_mode='sample'")

    def set_temperature_mode(self, mode: str) -> None:
        self._check_mode(mode)
        self.temperature_mode = mode

    def temperature_at(self, step: int) -> float:
        return self.tau_init

    def tau_from_z(self, z: Tensor) -> Tensor:
        """tau = tau_min + z (tau_max - tau_min)."""
        return self.tau_min + z * (self.tau_max - self.tau_min)

    def log_prob(self, hidden: Tensor, gate: Tensor, z: Tensor, forced: Tensor) -> Tensor:
        """See `TemperatureHead.log_prob`."""
        return self.head.log_prob(hidden, gate, z, forced)

    @torch.inference_mode()  # runs once per decoding step: the cheapest dispatch torch has
    def select(self, ctx: RowContext, temperature_mode: str | None = None) -> TempDecision:
        """Draw every row's action and its behaviour log pi_phi (the learner's own formula,
        `TemperatureHead.log_prob_from_params`)."""
        if ctx.hidden is None:
            raise ValueError("IntroLLM needs ctx.hidden (N, d) final post-norm hidden states; the "
                             "engine must pass them because strategy.needs_hidden is True")
        mode = temperature_mode or self.temperature_mode
        self._check_mode(mode)
        gate_logit, shapes = self.head.gate_and_shapes(ctx.hidden)  # (N,), (N, 2) fp32
        alpha, beta = shapes[:, 0], shapes[:, 1]
        forced = ctx.positions == 0  # (N,) the first generated token always draws
        gate = torch.bernoulli(torch.sigmoid(gate_logit), generator=ctx.generator)
        gate = gate.masked_fill_(forced, 1.0)
        if mode == "mean":
            z = alpha / (alpha + beta)
        else:  # Beta(a, b) = first coordinate of Dirichlet(a, b); this op accepts a generator
            z = torch._sample_dirichlet(shapes, generator=ctx.generator)[:, 0]
        on = gate > 0.5
        logp = self.head.log_prob_from_params(gate_logit, alpha, beta, gate, z, forced)
        z = z.masked_fill_(~on, 0.0)
        tau = torch.where(on, self.tau_from_z(z), ctx.prev_tau.to(z.dtype))
        f32 = torch.float32
        return TempDecision(tau=tau.to(f32), gate=gate.to(f32), z=z.to(f32), logp_phi=logp.to(f32))

    def temperature_summary(self, step: int) -> dict:
        """The head decides per token: its range, the start temperature and the draw mode."""
        return {"tau_min": self.tau_min, "tau_max": self.tau_max, "tau_init": self.tau_init,
                "eps": self.head.eps, "temperature_mode": self.temperature_mode}

    def spec(self) -> dict:
        spec = super().spec()
        spec["kwargs"]["temperature_mode"] = self.temperature_mode  # may change after __init__
        return spec
