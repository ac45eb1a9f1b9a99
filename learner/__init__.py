"""GRPO learner maths (pure torch): see learner/core_algos.py and learner/logprobs.py."""
