"""Build the embedded default model: a byte-level BPE tokenizer and a tiny Qwen2 causal LM,
pre-trained from scratch on worked solutions of the synthetic maths tasks.

    python -m launch.build_model                 # build (or reuse) the cached default
    python -m launch.build_model --out DIR       # build into DIR
    python -m launch.build_model sft_steps=300   # override any TinyModelSpec field
    python -m launch.build_model --out DIR hidden_size=512 num_layers=8 sft_steps=0  # untrained

The result is an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer files
with a chat template) that loads in transformers and in vLLM. It is deliberately under-trained:
RL needs room to improve, so it solves the easy levels often and the hard ones rarely.

Tokenizer: a byte-level BPE trained with ``tokenizers`` using exactly Qwen2's pre-tokenizer
(NFC, Qwen2's split regex, byte-level without prefix space). transformers forces
``Qwen2Tokenizer`` for ``model_type=qwen2`` and rebuilds that pre-tokenizer itself, so a
tokenizer trained any other way would silently change (e.g. lose spaces) once loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump when the build procedure or its data change, so cached models are rebuilt
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Everything that determines the built model; its hash names the cache folder."""

    vocab_size: int = 512
    """tokenizer vocabulary incl. 256 byte tokens and the special tokens"""
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position: int = 512
    sft_examples: int = 60_000
    """generated (train split) worked solutions used for pre-training"""
    sft_steps: int = 1500
    """0 = random weights (e.g. a larger model for ``launch.bench rollout --model``)"""
    sft_left_to_right: float = 0.0
    """fraction of arithmetic worked solutions written carelessly, every operator in reading
    order (``data.synthetic.left_to_right_solution``): a flaw the verifier penalises wherever
    precedence changes the answer, for RL to correct"""
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**dataclasses.asdict(self), "_v": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    root = os.environ.get("TEMPO_CACHE") or os.path.join(Path.home(), ".cache", "tempo-rl")
    return Path(root) / "models"


def cached_model_path(spec: TinyModelSpec = TinyModelSpec(), cache_dir: str | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"tiny-qwen2-{spec.key()}"


def ensure_tiny_model(spec: TinyModelSpec = TinyModelSpec(), cache_dir: str | None = None) -> Path:
    """Return the cached model folder for ``spec``, building it first if absent.

    The build writes into a temporary sibling folder and renames it into place, so an
    interrupted build never leaves a half-written model that a later run would trust.
    """
    path = cached_model_path(spec, cache_dir)
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        build(spec, tmp)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first: keep theirs
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- tokenizer


def sft_texts(spec: TinyModelSpec) -> list[tuple[str, str]]:
    """(prompt text with chat template, response text) pairs for pre-training."""
    from data.synthetic import generate, left_to_right_solution

    problems = generate(spec.sft_examples, "train", seed=spec.seed)
    rng = random.Random(f"{spec.seed}-left-to-right")
    careless = [p.task == "arith" and rng.random() < spec.sft_left_to_right for p in problems]
    return [(render_chat(p.prompt), left_to_right_solution(p.prompt[len("Compute "):-1])
             if bad else p.solution) for p, bad in zip(problems, careless)]


def render_chat(question: str) -> str:
    """The chat template of CHAT_TEMPLATE for one user turn, as plain text (no jinja needed)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out: Path, max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, what Qwen2Tokenizer is rebuilt from
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# ----------------------------------------------------------------------------- model


def model_config(spec: TinyModelSpec, tok):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        torch_dtype="float32",
    )


def _batches(pairs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, gen):
    """Endless shuffled batches: (input_ids (B, L), labels (B, L) with -100 off the response)."""
    import torch

    while True:
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for s in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [pairs[i] for i in order[s : s + batch_size]]
            length = max(len(p) + len(r) for p, r in chunk)
            ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
            labels = torch.full((batch_size, length), -100, dtype=torch.long)
            for b, (p, r) in enumerate(chunk):
                ids[b, : len(p) + len(r)] = torch.tensor(p + r)
                labels[b, len(p) : len(p) + len(r)] = torch.tensor(r)
            yield ids, labels


def pretrain(model, pairs, spec: TinyModelSpec, pad_id: int) -> list[float]:
    """Supervised pre-training on (prompt ids, response ids): loss on response tokens only."""
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        frac = (step - spec.warmup_steps) / max(1, spec.sft_steps - spec.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses, t0 = [], time.time()
    batches = _batches(pairs, spec.batch_size, pad_id, gen)
    for step in range(spec.sft_steps):
        ids, labels = next(batches)
        out = model(input_ids=ids, attention_mask=(ids != pad_id) | (labels != -100), labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % 100 == 0 or step == spec.sft_steps - 1:
            log.info("pretrain step %d/%d loss %.4f (%.0fs)", step, spec.sft_steps, losses[-1],
                     time.time() - t0)
    model.eval()
    return losses


def build(spec: TinyModelSpec, out: Path) -> Path:
    """Build tokenizer + model into ``out`` (an existing, empty folder)."""
    import torch
    from transformers import Qwen2ForCausalLM

    t0 = time.time()
    torch.manual_seed(spec.seed)
    texts = sft_texts(spec)
    eos = "<|im_end|>"
    tok = train_tokenizer([p + r + eos for p, r in texts], spec.vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, out, spec.max_position)
    eos_id = tok.token_to_id(eos)
    pairs = [(tok.encode(p).ids, tok.encode(r).ids + [eos_id]) for p, r in texts]
    config = model_config(spec, tok)
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d parameters, vocab %d", n_params, config.vocab_size)
    losses = pretrain(model, pairs, spec, config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    meta = {
        "spec": dataclasses.asdict(spec),
        "build_version": BUILD_VERSION,
        "parameters": n_params,
        "first_loss": losses[0] if losses else None,  # None: sft_steps=0, random weights
        "final_loss": sum(losses[-50:]) / len(losses[-50:]) if losses else None,
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / "tempo_build.json").write_text(json.dumps(meta, indent=2))
    log.info("built %s in %.0fs (final loss %.3f)", out, meta["build_seconds"], meta["final_loss"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder to build into (default: the shared cache)")
    parser.add_argument("overrides", nargs="*", help="TinyModelSpec fields as key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fields = {f.name: f.type for f in dataclasses.fields(TinyModelSpec)}
    kwargs = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown field {key!r}; TinyModelSpec has {sorted(fields)}")
        kwargs[key] = float(value) if fields[key] in (float, "float") else int(value)
    spec = TinyModelSpec(**kwargs)
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"--out {out} is not empty; choose a new folder or delete it")
        print(build(spec, out))
    else:
        print(ensure_tiny_model(spec))


if __name__ == "__main__":
    main()
