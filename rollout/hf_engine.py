"""transformers rollout engine: the reference implementation and the CPU fallback.

Batched sampling with a KV cache, written out step by step so that the temperature strategy
sits exactly where it does in the vLLM engine: after the final norm and the LM head, before
sampling. At each step, for the B rows of a batch:

    h = final post-norm hidden state (B, d)       logits = lm_head(h) (B, V)
    decision = strategy.select(RowContext(positions, prev_tau, base_tau, step, h, logits))
    y ~ softmax(logits / tau)                      logp = log_softmax(logits / tau)[y]

No top-k / top-p / penalties, so the recorded log-prob is exactly that of the distribution the
token was drawn from (the per-token temperature invariant).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from meta.base import RowContext, TemperatureStrategy
from rollout.base import ResponseRecord, RolloutRequest, assemble_batch
from rollout.trajectory import TrajectoryBatch


class HFEngine:
    def __init__(self, model, tokenizer, strategy: TemperatureStrategy, max_new_tokens: int = 64,
                 batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = _eos_ids(model, tokenizer)

    @classmethod
    def from_path(cls, path, strategy: TemperatureStrategy, dtype: str = "float32",
                  **kw) -> "HFEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model, AutoTokenizer.from_pretrained(path), strategy, **kw)

    def load_weights(self, state_dict: dict[str, Tensor]) -> float:
        """New theta (the model's parameter names) and/or phi (keys 'temperature_head.*');
        returns the seconds it took (as ``VLLMEngine.load_weights``)."""
        t0 = time.perf_counter()
        head = {k.split(".", 1)[1]: v for k, v in state_dict.items()
                if k.startswith("temperature_head.")}
        theta = {k: v for k, v in state_dict.items() if not k.startswith("temperature_head.")}
        if head:
            self.strategy.load_state_dict(head)
        if theta:
            missing, unexpected = self.model.load_state_dict(theta, strict=False)
            if unexpected:
                raise KeyError(f"weights not in the model: {unexpected[:5]}")
        return time.perf_counter() - t0

    def alive(self) -> bool:
        """Always: the engine is this process."""
        return True

    def set_strategy(self, strategy: TemperatureStrategy) -> None:
        """Sample with ``strategy`` from the next generate() on."""
        self.strategy = strategy

    @torch.no_grad()
    def generate(self, requests: list[RolloutRequest], step: int = 0, seed: int | None = None,
                 greedy: bool = False) -> TrajectoryBatch:
        """Sample one response per request; returns a validated TrajectoryBatch."""
        t0 = time.perf_counter()
        self._select_s = 0.0
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        records: list[ResponseRecord] = []
        for s in range(0, len(requests), self.batch_size):
            records += self._generate_batch(requests[s : s + self.batch_size], step, gen, greedy)
        n_tokens = sum(len(r.token_ids) for r in records)
        elapsed = time.perf_counter() - t0
        stats = {"gen_s": elapsed, "gen_tokens": float(n_tokens), "select_s": self._select_s}
        return assemble_batch(requests, records, self.pad_id, step, stats)

    def _generate_batch(self, reqs, step, gen, greedy) -> list[ResponseRecord]:
        b = len(reqs)
        lp = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((b, lp), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, lp), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's next token is at column lp
            ids[i, lp - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, lp - len(r.prompt_ids):] = 1
        base_tau = torch.tensor([r.base_tau for r in reqs], dtype=torch.float32)  # (B,)
        prev_tau = base_tau.clone()
        active = torch.ones(b, dtype=torch.bool)
        out = {k: [[] for _ in range(b)] for k in ("tok", "tau", "logp", "gate", "z", "logp_phi")}
        finish = ["length"] * b
        past, inputs = None, ids
        eos = torch.tensor(self.eos_ids, dtype=torch.long)
        for t in range(self.max_new_tokens):
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1]:]
            o = self.model.model(input_ids=inputs, attention_mask=mask, position_ids=position_ids,
                                 past_key_values=past, use_cache=True)
            past = o.past_key_values
            hidden = o.last_hidden_state[:, -1]  # (B, d) after the final norm
            logits = self.model.lm_head(hidden).float()  # (B, V)
            ctx = RowContext(positions=torch.full((b,), t, dtype=torch.long), prev_tau=prev_tau,
                             base_tau=base_tau, step=step,
                             hidden=hidden if self.strategy.needs_hidden else None,
                             logits=logits if self.strategy.needs_logits else None, generator=gen)
            t_sel = time.perf_counter()
            decision = self.strategy.select(ctx)
            self._select_s += time.perf_counter() - t_sel
            tau = decision.tau if not greedy else torch.ones(b)
            logp_all = torch.log_softmax(logits / tau[:, None], dim=-1)  # (B, V)
            if greedy:
                y = logp_all.argmax(-1)
            else:
                y = torch.multinomial(logp_all.exp(), 1, generator=gen).squeeze(-1)  # (B,)
            logp = logp_all.gather(-1, y[:, None]).squeeze(-1)
            cols = {"tok": y.tolist(), "tau": tau.tolist(), "logp": logp.tolist()}  # one sweep
            if decision.gate is not None:
                cols.update(gate=decision.gate.tolist(), z=decision.z.tolist(),
                            logp_phi=decision.logp_phi.tolist())
            for i in torch.nonzero(active).flatten().tolist():
                for key, values in cols.items():
                    out[key][i].append(values[i])
            done = active & torch.isin(y, eos)
            for i in torch.nonzero(done).flatten().tolist():
                finish[i] = "stop"
            active &= ~done
            prev_tau = tau
            if not active.any():
                break
            inputs = torch.where(active, y, torch.full_like(y, self.pad_id))[:, None]
            mask = torch.cat([mask, active.long()[:, None]], 1)
        with_phi = decision.gate is not None  # the strategy records IntroLLM actions
        return [
            ResponseRecord(
                token_ids=out["tok"][i], tau=out["tau"][i], logp=out["logp"][i],
                finish_reason=finish[i],
                text=self.tokenizer.decode(out["tok"][i], skip_special_tokens=True),
                gate=out["gate"][i] if with_phi else None, z=out["z"][i] if with_phi else None,
                logp_phi=out["logp_phi"][i] if with_phi else None)
            for i in range(b)
        ]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token id (generation_config or tokenizer); set one")
    return ids
