"""The project's vLLM plugin (entry point ``vllm.general_plugins``:
``tempo = rollout.vllm_plugin:register``).

vLLM calls ``register()`` in every process it starts (the engine core, each tensor-parallel
worker), before it resolves the model class. A process that was *spawned* has none of its
parent's registrations, so the Tempo model classes (``rollout.vllm_model``) and the gloo
weight-transfer engine (``rollout.weight_transfer``) are registered here, the classes for the
architectures the parent engine names in ``$TEMPO_VLLM_ARCHS`` (comma-separated checkpoint
architectures, e.g. ``Qwen2ForCausalLM``; ``VLLMEngine`` sets it). Without that variable the plugin
does nothing, so installing the project changes no other vLLM user's process.
"""

from __future__ import annotations

import os

ARCHS_ENV = "TEMPO_VLLM_ARCHS"


def register() -> None:
    archs = [a for a in os.environ.get(ARCHS_ENV, "").split(",") if a]
    if not archs:
        return
    from rollout.vllm_model import register_architecture
    from rollout.weight_transfer import register as register_weight_transfer

    for arch in archs:
        register_architecture(arch)
    register_weight_transfer()  # the gloo weight-transfer engine (rollout.weight_transfer)


def announce(arch: str) -> None:
    """Name ``arch`` in ``$TEMPO_VLLM_ARCHS`` for the processes this one will start."""
    archs = [a for a in os.environ.get(ARCHS_ENV, "").split(",") if a]
    if arch not in archs:
        os.environ[ARCHS_ENV] = ",".join(archs + [arch])
