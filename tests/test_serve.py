"""``python -m launch.serve``: an exported IntroLLM folder behind vLLM's OpenAI server samples at
its head's per-token temperatures.

The head's gate always fires (gate bias 30: σ = 1 in fp32) and temperature_mode is "mean", so
τ_t = τ_min + E[z | h_t] (τ_max - τ_min) is a function of the hidden state alone and every
returned log-prob can be recomputed by teacher forcing the served tokens through transformers and
the head: log_softmax(z_t / (τ_t T))[y_t]. A head with another τ range, recomputed on the same
tokens, disagrees (the check has teeth). One server start (~40 s on 2 cores), a few short
requests: completion and chat at the learned temperatures, T = 0.5 (multiplies τ_t), T = 0
(greedy), and echo with logprobs (refused, the server keeps serving).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import tensors_writer

pytestmark = pytest.mark.slow

MAX_TOKENS = 12
TOL = 1e-3
REPO = Path(__file__).resolve().parents[1]


def fired_head_strategy(hidden: int, tau_min: float, tau_max: float, seed: int = 5):
    """IntroLLM, mean mode, whose gate always fires and whose Beta mean varies with h."""
    from meta.introllm import IntroLLM

    torch.manual_seed(seed)
    strategy = IntroLLM(hidden_size=hidden, tau_min=tau_min, tau_max=tau_max,
                        temperature_mode="mean")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        fc2 = strategy.head.fc2
        fc2.weight.copy_(0.5 * torch.randn(fc2.weight.shape, generator=g))
        fc2.weight[0].zero_()
        fc2.bias[0] = 30.0  # u_c = 30 for every h: sigmoid(30) == 1.0 in fp32
    return strategy


def export(out: Path, base: Path, strategy) -> Path:
    from transformers import AutoModelForCausalLM

    from launch.model_export import write_model_folder

    weights = dict(AutoModelForCausalLM.from_pretrained(base).state_dict())
    weights.update({f"temperature_head.{k}": v for k, v in strategy.head.state_dict().items()})
    return write_model_folder(out, base, tensors_writer(weights), strategy, steps=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_ready(base_url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n"
                                 f"{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"the server did not answer in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """(base URL, served name, strategy A, strategy B, model folder) with A's folder served."""
    from transformers import AutoConfig

    tmp = tmp_path_factory.mktemp("serve")
    hidden = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    strategy = fired_head_strategy(hidden, 0.3, 1.7)
    other = fired_head_strategy(hidden, 0.8, 1.0)  # the same head, another τ range
    folder = export(tmp / "model", tiny_model_dir, strategy)
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPO_CACHE": str(tmp / "cache"),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "launch.serve", str(folder), "--port", str(port),
           "--kv-cache-gb", "1", "--dtype", "float32", "--max-model-len", "256",
           "--max-num-seqs", "8", "--seed", "3"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc, log)
        yield base_url, str(folder), strategy, other, folder
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
    assert not list((tmp / "cache" / "vllm_overlays").glob("*")), "the overlay was not removed"


@pytest.fixture(scope="module")
def model_and_tokenizer(served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = served[4]
    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(folder))


@torch.no_grad()
def recompute(model, strategy, prompt_ids: list[int], ids: list[int],
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax(z_t / (τ_t T))[y_t], τ_t) for the T response tokens, teacher-forced."""
    seq = torch.tensor([prompt_ids + ids])
    h = model.model(input_ids=seq).last_hidden_state[0, len(prompt_ids) - 1: -1]  # (T, d)
    z = model.lm_head(h).float()  # (T, V)
    gate_logit, alpha, beta = strategy.head.distribution_params(h)
    assert bool((torch.sigmoid(gate_logit) == 1).all())  # the gate fires: τ_t from h_t alone
    tau = strategy.tau_from_z(alpha / (alpha + beta))  # (T,)
    logp = torch.log_softmax(z / (tau[:, None] * temperature), -1)
    return logp.gather(1, torch.tensor(ids)[:, None])[:, 0], tau


def check(model, served, prompt_ids, ids, logps, temperature: float = 1.0) -> None:
    _, _, strategy, other, _ = served
    assert len(ids) == len(logps) == MAX_TOKENS
    got = torch.tensor(logps, dtype=torch.float32)
    want, tau = recompute(model, strategy, prompt_ids, ids, temperature)
    assert (got - want).abs().max() < TOL, (got, want)
    assert tau.std() > 0.02  # per-token temperatures, not one value
    wrong, _ = recompute(model, other, prompt_ids, ids, temperature)
    assert (got - wrong).abs().max() > 1e-2  # another head's temperatures are told apart


def prompt_ids_of(tokenizer) -> list[int]:
    from data.prompts import render_prompt
    from data.synthetic import generate

    problem = generate(1, "eval", seed=0)[0]
    return tokenizer(render_prompt(problem, tokenizer))["input_ids"]


def completion(served, prompt_ids, **kw) -> tuple[int, dict]:
    base_url, name = served[:2]
    return post(f"{base_url}/v1/completions",
                {"model": name, "prompt": prompt_ids, "max_tokens": MAX_TOKENS, "logprobs": 1,
                 "ignore_eos": True, "return_token_ids": True, "seed": 1, **kw})


def test_completion_samples_at_the_heads_temperatures(served, model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = prompt_ids_of(tok)
    status, reply = completion(served, prompt)  # no temperature: the learned ones (T = 1)
    assert status == 200, reply
    choice = reply["choices"][0]
    check(model, served, prompt, choice["token_ids"], choice["logprobs"]["token_logprobs"])


def test_chat_samples_at_the_heads_temperatures(served, model_and_tokenizer):
    model, tok = model_and_tokenizer
    base_url, name = served[:2]
    status, reply = post(f"{base_url}/v1/chat/completions",
                         {"model": name, "messages": [{"role": "user", "content": "3 + 4 * 2 ="}],
                          "max_tokens": MAX_TOKENS, "logprobs": True, "ignore_eos": True,
                          "return_token_ids": True, "seed": 2})
    assert status == 200, reply
    choice = reply["choices"][0]
    logps = [c["logprob"] for c in choice["logprobs"]["content"]]
    check(model, served, reply["prompt_token_ids"], choice["token_ids"], logps)


def test_a_request_temperature_multiplies_tau_and_zero_is_greedy(served, model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = prompt_ids_of(tok)
    status, reply = completion(served, prompt, temperature=0.5)
    assert status == 200, reply
    choice = reply["choices"][0]
    check(model, served, prompt, choice["token_ids"], choice["logprobs"]["token_logprobs"], 0.5)
    status, reply = completion(served, prompt, temperature=0.0)
    assert status == 200, reply
    ids = reply["choices"][0]["token_ids"]
    seq = torch.tensor([prompt + ids])
    with torch.no_grad():
        z = model(input_ids=seq).logits[0, len(prompt) - 1: -1]
    assert z.argmax(-1).tolist() == ids


def test_echo_with_logprobs_is_refused_and_the_server_keeps_serving(served, model_and_tokenizer):
    _, tok = model_and_tokenizer
    prompt = prompt_ids_of(tok)
    status, reply = completion(served, prompt, echo=True)
    assert status == 400, reply
    assert "prompt_logprobs" in json.dumps(reply) and "without echo" in json.dumps(reply)
    status, reply = completion(served, prompt, max_tokens=2, ignore_eos=True)
    assert status == 200 and len(reply["choices"][0]["token_ids"]) == 2
