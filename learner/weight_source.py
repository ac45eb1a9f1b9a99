"""The learner's weights as vLLM's weight-transfer API reads them: a ``WeightSource``
(``vllm.distributed.weight_transfer.base``) over theta's and phi's DeepSpeed modules, one decoder
layer at a time.

``metadata()`` gives every parameter's name (Hugging Face names for theta, ``temperature_head.*``
for phi), dtype and full shape without moving anything (under ZeRO-3 the full shape is
``ds_shape``). Iterating gathers one layer group (``layer_groups``: the embeddings, each
decoder layer, the final norm and head) at a time under ZeRO-3 (``GatheredParameters`` over that
group only, every rank joining) and yields its full tensors; outside ZeRO-3 every rank already
holds them. So a rank never holds more than one gathered layer plus what the sender packs.

Every rank iterates (the gathers are collectives); only trainer rank 0 sends
(``rollout.weight_transfer``). ``drain()`` finishes an iteration that stopped midway (the
sender's broadcast failed), so that the other ranks' gathers complete and no rank is left
waiting in one.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn


def module_source(parts: dict[str, tuple[nn.Module, bool]]):
    """A ``WeightSource`` over ``parts``: name -> (module, sharded by ZeRO-3); ``select`` picks
    the parts a round sends."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class LayerwiseSource(WeightSource):
        def __init__(self):
            self.parts = parts
            self.which: tuple[str, ...] = tuple(parts)
            self._active: Iterator | None = None
            self._done = True

        def select(self, which: tuple[str, ...]) -> None:
            """Send ``which`` (part names) in the next round, which starts now."""
            unknown = [w for w in which if w not in self.parts]
            if unknown:
                raise ValueError(f"weight sync of {unknown}: this learner has {list(self.parts)}")
            self.which, self._active, self._done = tuple(which), None, False

        def _params(self) -> list[tuple[str, nn.Parameter, bool]]:
            return [(name, p, sharded) for part in self.which
                    for module, sharded in [self.parts[part]]
                    for name, p in module.named_parameters()]

        def metadata(self) -> list:
            return [ParamMeta(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                    for name, p, _ in self._params()]

        def __iter__(self) -> Iterator[tuple[str, Tensor]]:
            self._active = active = self._gathered()
            # not `yield from`: closing this generator (its consumer failed) must not close the
            # gathering one, which drain() then runs to its end
            for item in active:
                yield item
            self._active, self._done = None, True

        def _gathered(self) -> Iterator[tuple[str, Tensor]]:
            by_name = {name: (p, sharded) for name, p, sharded in self._params()}
            for group in layer_groups(list(by_name)):
                sharded = [by_name[n][0] for n in group if by_name[n][1]]
                with gathered(sharded):
                    for name in group:
                        yield name, by_name[name][0].data

        def drain(self) -> None:
            """Run the gathers this round has not run yet (none sent): the rest of an interrupted
            pass, or a whole one if it never started."""
            if self._done:
                return
            rest = self._active if self._active is not None else self._gathered()
            self._active, self._done = None, True
            for _ in rest:
                pass

    return LayerwiseSource()


def layer_groups(names: list[str]) -> list[list[str]]:
    """Parameter names in groups of one decoder layer each (keyed on a name's first integer
    segment: ``model.layers.3.mlp.up_proj.weight`` -> layer 3), with the names before the first
    layer (embeddings) as the first group and those after it (final norm, LM head) as the last;
    layers in order. vLLM's ``layerwise_groups`` partitions the same way."""
    pre, post, layers = [], [], {}
    for name in names:
        parts = name.split(".")
        at = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if at is None:
            (post if layers else pre).append(name)
        else:
            layers.setdefault((".".join(parts[:at]), int(parts[at])), []).append(name)
    order = {}
    for prefix, _ in layers:
        order.setdefault(prefix, len(order))
    stacks = [layers[k] for k in sorted(layers, key=lambda k: (order[k[0]], k[1]))]
    return [g for g in [pre, *stacks, post] if g]


def gathered(params: list[nn.Parameter]):
    """ZeRO-3's ``GatheredParameters`` over ``params`` (every rank gathers; read only), or
    nothing to do when there are none."""
    import contextlib

    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
