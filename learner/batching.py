"""How a rank's slice of a batch becomes forward passes: micro-batches and shared prompts.

* ``by_length`` orders rows for micro-batching: GRPO groups kept together, groups by their
  longest response, rows by their own, so that each micro-batch, trimmed to its longest row,
  pads little;
* ``make_micro`` turns rows into one forward input (``Micro``) trimmed to their longest prompt
  and response, with the rollout engine's position ids (cumsum(mask) - 1); when rows share a
  prompt (a GRPO group) it also lists the distinct prompts (``Prompts``);
* ``response_outputs`` runs a model on a ``Micro``: with shared prompts, each distinct prompt
  runs once and its KV cache is indexed per row (learner.share_prompt: same values and
  gradients, less compute);
* ``informative_rows`` picks the rows with a policy gradient (learner.skip_zero_adv).

Nothing here depends on DeepSpeed; the losses' global denominators (``learner.worker``) make
the result independent of how rows fall into micro-batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from rollout.trajectory import TrajectoryBatch

log = logging.getLogger(__name__)


@dataclass
class Prompts:
    """The g distinct prompts of a micro-batch of b rows (g < b): each runs through the model once
    and its KV cache is shared by the rows that continue it."""

    ids: Tensor
    """(g, lp) left-padded prompt ids"""
    mask: Tensor
    """(g, lp) long"""
    pos: Tensor
    """(g, lp) position ids"""
    inverse: Tensor
    """(b,) long: row -> its prompt"""


@dataclass
class Micro:
    """One micro-batch, trimmed to its own widths and moved to the device."""

    rows: Tensor
    """(b,) long, rows of this rank's batch"""
    ids: Tensor
    """(b, lp + t - 1) prompt + response without its last token"""
    mask: Tensor
    """(b, lp + t - 1) long attention mask"""
    pos: Tensor
    """(b, lp + t - 1) position ids, cumsum(mask) - 1 clamped at 0 (as the rollout engine)"""
    lp: int
    t: int
    tokens: Tensor
    """(b, t) response token ids"""
    resp_mask: Tensor
    """(b, t) bool"""
    prompt: Prompts | None = None
    """the micro-batch's distinct prompts when rows share them (GRPO groups), else None"""

    def take(self, x: Tensor, device) -> Tensor:
        """The micro-batch's (b, t) slice of a per-token (B, T) tensor, or (b,) of a (B,) one."""
        x = x[self.rows]
        return (x[:, : self.t] if x.dim() == 2 else x).to(device)


def make_micro(batch: TrajectoryBatch, rows: Tensor, device, share_prompt: bool) -> Micro:
    """Rows of the batch as one forward input, trimmed to the rows' longest prompt/response."""
    pm, rm = batch.prompt_mask[rows], batch.response_mask[rows]
    lp = int(pm.sum(-1).max())
    t = max(1, int(rm.sum(-1).max()))
    if lp < 1:
        raise ValueError("every response needs a prompt of >= 1 token (the logits of response "
                         "token 0 come from the last prompt column)")
    width = batch.prompt_ids.shape[1]
    resp = batch.response_ids[rows, :t]
    prompt, pmask = batch.prompt_ids[rows, width - lp:], pm[:, width - lp:].long()
    ids = torch.cat([prompt, resp[:, :-1]], 1)  # (b, lp + t - 1)
    mask = torch.cat([pmask, rm[:, : t - 1]], 1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dev = device
    shared = None
    if share_prompt and t > 1:  # t = 1: nothing continues from the prompt
        uniq, inverse = torch.unique(torch.cat([prompt * pmask, pmask], 1), dim=0,
                                     return_inverse=True)
        if len(uniq) < len(rows):
            p_ids, p_mask = uniq[:, :lp], uniq[:, lp:]
            p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
            shared = Prompts(p_ids.to(dev), p_mask.to(dev), p_pos.to(dev), inverse.to(dev))
    return Micro(rows, ids.to(dev), mask.to(dev), pos.to(dev), lp, t, resp.to(dev),
                 rm[:, :t].to(dev), shared)


def response_outputs(call, bare, m: Micro, field: str) -> Tensor:
    """(b, t, .) `field` ("logits" or "last_hidden_state") of `call`'s output at the t positions
    that predict the response tokens; only those positions reach the LM head.

    With shared prompts: one forward of the g distinct prompts (use_cache), whose last position
    predicts response token 0, then one of the responses on the prompts' KV cache indexed per
    row. Gradients reach the prompt columns through the cache, summed over the rows sharing
    them: the same values and gradients as one forward of every row's prompt. `bare` runs the
    prompts: a DeepSpeed engine's own module, so that the engine's forward (whose output hooks
    start its backward) runs once per micro-batch, as it expects; else `call` itself.
    """
    keep = (lambda n: {"logits_to_keep": n}) if field == "logits" else (lambda n: {})
    p = m.prompt
    if p is None:
        out = call(input_ids=m.ids, attention_mask=m.mask, position_ids=m.pos,
                   use_cache=False, **keep(m.t))
        return getattr(out, field)[:, -m.t:]
    out = bare(input_ids=p.ids, attention_mask=p.mask, position_ids=p.pos, use_cache=True,
               **keep(1))
    first = getattr(out, field)[:, -1:][p.inverse]  # (b, 1, .)
    cache = out.past_key_values
    cache.batch_select_indices(p.inverse)
    out = call(input_ids=m.ids[:, m.lp:], attention_mask=m.mask, position_ids=m.pos[:, m.lp:],
               past_key_values=cache, use_cache=True, **keep(m.t - 1))
    return torch.cat([first, getattr(out, field)], 1)


def by_length(batch: TrajectoryBatch, rows: Tensor) -> Tensor:
    """`rows` ordered for micro-batching: groups kept together (rows of a group share a prompt,
    run once: learner.share_prompt), groups by their longest response, rows by their own, so
    that each micro-batch, trimmed to its longest row, pads little. Stable and deterministic."""
    _, group = torch.unique(batch.group_index[rows], return_inverse=True)  # 0 .. groups - 1
    length = batch.response_mask[rows].sum(-1)
    longest = torch.zeros(len(rows), dtype=length.dtype).scatter_reduce(
        0, group, length, "amax")[group]
    order = torch.arange(len(rows))
    for key in (length, group, longest):  # least significant first: a stable lexicographic sort
        order = order[torch.sort(key[order], stable=True).indices]
    return rows[order]


def informative_rows(advantages: Tensor, world_size: int = 1, min_per_rank: int = 1) -> Tensor:
    """Indices of the rows with a non-zero advantage (the only ones with a policy gradient when
    the KL and entropy terms are off), padded with zero-advantage rows to a multiple of
    `world_size` and at least `min_per_rank` rows per rank (the mini-batch count), so that every
    rank gets an equal slice. Deterministic: every rank computes the same indices."""
    nonzero = advantages != 0
    keep = torch.nonzero(nonzero).flatten()
    want = max(world_size * min_per_rank, -(-len(keep) // world_size) * world_size)
    if want > len(keep):
        pad = torch.nonzero(~nonzero).flatten()[: want - len(keep)]
        keep = torch.cat([keep, pad]).sort().values
    return keep


def plain_kv_cache(config) -> bool:
    """True when every layer keeps a plain key/value cache (full or sliding-window attention),
    which `Cache.batch_select_indices` re-indexes per row. Linear-attention / recurrent layers
    keep other state: learner.share_prompt is then off (logged)."""
    kinds = set(getattr(config, "layer_types", None) or ())
    if kinds <= {"full_attention", "sliding_attention"}:
        return True
    log.warning("learner.share_prompt is off for this model: its layer types %s keep states "
                "other than keys and values", sorted(kinds))
    return False


def require_advantages(batch: TrajectoryBatch) -> None:
    if batch.advantages is None:
        raise ValueError("batch.advantages is None; fill it before the update, e.g. "
                         "compute_grpo_advantages(batch.rewards, batch.group_index)")
