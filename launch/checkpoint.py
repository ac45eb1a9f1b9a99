"""Run checkpoints on disk, both directions: the step folder's layout, its integrity, which one to
resume, and whether it fits this config.

A checkpoint is a folder ``<run>/checkpoints/step_NNNNNN`` (NNNNNN = steps completed)::

    model/             theta (and the head) once, as a Hugging Face folder (safetensors shards
                       written by the learner ranks in parallel, layer group by layer group, with
                       the run's config and tokenizer files: ``model.path`` can point at it)
    learner_rank{r}/   one per learner rank: its optimizer shard (under ZeRO-3 its fp32 master
                       weights), RNG states and schedule positions (``learner.checkpoint``; they
                       load with torch.load(weights_only=True))
    driver.pt          the meta actor's state, the prompt sampler's position, the step, the
                       driver's RNG, the wandb run id, the strategy's spec and the model folder
                       the run trained from: tensors and plain data only
    config.json        the run's settings when it was written (checked on resume)
    COMPLETE           {"step": N, "files": {path: {"bytes": n, "sha256": hex}}} for every other
                       file, written last

``stage`` gives a temporary folder (``.tmp_step_NNNNNN``), the learners (all ranks at once, each
hashing the files it writes) and ``write_driver`` fill it, and ``commit`` writes ``COMPLETE``
and renames it into place, so a folder named ``step_*`` with ``COMPLETE`` was whole when written
(a crash mid-write leaves only a ``.tmp_*`` folder behind, ignored). ``verify`` re-checks every
file against ``COMPLETE`` (hashing files in parallel): a truncated, missing or altered file is
named; ``trainer.resume=auto`` then falls back to the previous checkpoint that verifies, with a
warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from launch.config import ConfigError, RunConfig
from learner.checkpoint import MODEL, file_entry, read_weights, safe_load, sha256_of
from learner.checkpoint import rank_dir as rank_dir  # the step folder's rank folders

log = logging.getLogger(__name__)

# Settings a resumed run must share with the run that wrote the checkpoint: they define the model,
# the data stream and the optimisation. Everything else (total_steps, eval, logging, cluster
# size of the rollout pool, ...) may change between the two.
MUST_MATCH = ("seed", "model", "data", "learner", "meta", "reward", "rollout.group_size",
              "rollout.max_new_tokens", "rollout.max_prompt_tokens", "trainer.prompts_per_step")
DRIVER, CONFIG, MARKER = "driver.pt", "config.json", "COMPLETE"


class CheckpointError(ConfigError):
    """A checkpoint folder that does not match its COMPLETE manifest (or has none)."""


def model_dir(ckpt: Path) -> Path:
    """The checkpoint's theta (and head) as a Hugging Face folder."""
    return Path(ckpt) / MODEL


def stage(run_dir: Path, steps_done: int) -> Path:
    """A fresh temporary folder for the checkpoint after `steps_done` steps."""
    tmp = Path(run_dir) / "checkpoints" / f".tmp_step_{steps_done:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_driver(tmp: Path, state: dict, config: dict) -> None:
    """The driver's part: `state` (tensors and plain data) and the run's settings."""
    torch.save(state, Path(tmp) / DRIVER)
    (Path(tmp) / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))


def _parallel(fn, items: list) -> list:
    """``fn`` over ``items`` in threads (hashing is I/O and C code: it runs in parallel)."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, items))


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _steps_of(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[-1])


def _manifest(folder: Path, written: dict[str, dict]) -> dict[str, dict]:
    """Every file's entry: those the learners hashed as they wrote them (``written``: path ->
    entry), the rest (the driver's) hashed here."""
    known = {Path(p).resolve().relative_to(folder.resolve()).as_posix(): e
             for p, e in written.items()}
    rest = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER
                  and p.relative_to(folder).as_posix() not in known)
    known.update(zip((p.relative_to(folder).as_posix() for p in rest),
                     _parallel(file_entry, rest)))
    return dict(sorted(known.items()))


def commit(tmp: Path, keep_last: int, written: dict[str, dict] | None = None) -> Path:
    """Write COMPLETE (every file's size and checksum; ``written``: entries the learners
    computed as they wrote), rename `tmp` into place and keep the last `keep_last` checkpoints;
    returns the final folder."""
    tmp = Path(tmp)
    steps = int(tmp.name.removeprefix(".tmp_step_"))
    manifest = _manifest(tmp, written or {})
    (tmp / MARKER).write_text(json.dumps({"step": steps, "files": manifest}, indent=1))
    for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
        _sync_dir(d)
    final = tmp.with_name(f"step_{steps:06d}")
    if final.exists():  # left by a trajectory a resume abandoned: kept, never deleted
        set_aside(final)
    os.replace(tmp, final)
    _sync_dir(final.parent)  # the rename is on disk before any older checkpoint goes
    kept = sorted((p for p in final.parent.iterdir()
                   if p.name.startswith("step_") and _steps_of(p) <= steps), key=_steps_of)
    for old in kept[:-keep_last] if keep_last > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def set_aside(ckpt: Path) -> Path:
    """Rename a checkpoint out of the way (``.abandoned_step_N``, a number added if taken): it
    no longer counts as a checkpoint of the run, and nothing in it is deleted."""
    ckpt = Path(ckpt)
    dst = ckpt.with_name(f".abandoned_{ckpt.name}")
    n = 1
    while dst.exists():
        n += 1
        dst = ckpt.with_name(f".abandoned_{ckpt.name}.{n}")
    os.replace(ckpt, dst)
    log.warning("%s belongs to a trajectory this run left (it resumed from an earlier "
                "checkpoint); moved to %s", ckpt, dst)
    return dst


def set_aside_newer(run_dir: Path, ckpt: Path) -> list[Path]:
    """Set aside the run's checkpoints newer than `ckpt` (the one it resumes from), so that
    neither keep_last nor a later resume=auto takes them for this run's; returns where they
    went."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    newer = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith("step_")
             and _steps_of(p) > _steps_of(Path(ckpt))]
    return [set_aside(p) for p in newer]


def verify(ckpt: Path) -> None:
    """CheckpointError naming the first file that is missing, truncated or altered (the files
    are hashed in parallel)."""
    ckpt = Path(ckpt)
    for old, what in (("learner_rank0/learner_rank0.pt", "format-1 (pickled learner_rank0.pt)"),
                      ("learner_rank0/theta.safetensors", "format-2 (every rank's full theta)")):
        if (ckpt / old).exists():
            raise CheckpointError(f"{ckpt} is a {what} checkpoint, written by an older version; "
                                  f"resume it with that version")
    try:
        files = json.loads((ckpt / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / MARKER} is missing or not a manifest ({e})") from e
    for rel, want in files.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {want['bytes']} when written "
                                  f"(truncated or replaced)")
    names = list(files)
    for rel, digest in zip(names, _parallel(lambda r: sha256_of(ckpt / r), names)):
        if digest != files[rel]["sha256"]:
            raise CheckpointError(f"{ckpt / rel} differs from the file written (checksum)")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run folder that have their COMPLETE marker, oldest first (not yet
    verified: see `verify`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and (p / MARKER).exists())


def _newest_valid(found: list[Path]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of `found` that verifies, and why each newer one did not."""
    failures = []
    for ckpt in reversed(found):
        try:
            verify(ckpt)
            return ckpt, failures
        except CheckpointError as e:
            failures.append(str(e))
    return None, failures


def find_checkpoint(run_dir: Path, resume: str | None, setting: str = "trainer.resume"
                    ) -> Path | None:
    """The checkpoint folder to resume from (None = start fresh).

    auto: the newest complete checkpoint that verifies; a newer one that does not is named in a
    warning and skipped. A path: that checkpoint (or the newest of that run folder), which must
    verify; ConfigError naming the bad file and the checkpoint to use instead otherwise.
    ``setting`` is the key the path came from, named in the errors (eval.checkpoint for
    launch.evaluate)."""
    if resume is None:
        return None
    if resume == "auto":
        ckpt, failures = _newest_valid(complete_checkpoints(run_dir))
        if failures and ckpt is None:
            raise CheckpointError(f"trainer.resume=auto: no checkpoint of {run_dir} verifies "
                                  f"({failures[0]}); start fresh in a new run folder "
                                  f"(another hydra.run.dir, trainer.resume=null)")
        for why in failures:
            log.warning("trainer.resume=auto skips a damaged checkpoint: %s; falling back to %s",
                        why, ckpt)
        return ckpt
    path = Path(resume).expanduser()
    if (path / MARKER).exists():
        try:
            verify(path)
        except CheckpointError as e:
            older = [c for c in complete_checkpoints(path.parent.parent) if c.name < path.name]
            ok, _ = _newest_valid(older)
            fix = (f"use {ok} instead ({setting}={ok})" if ok
                   else "no earlier checkpoint verifies: start fresh in a new run folder "
                        "(another hydra.run.dir, trainer.resume=null)")
            raise CheckpointError(f"{setting} ({resume}): {e}; {fix}") from e
        return path
    found = complete_checkpoints(path)
    if found:
        return find_checkpoint(path, "auto")
    fix = ("point it at one, use trainer.resume=auto, or null to start fresh"
           if setting == "trainer.resume" else
           ("point it at one (a run writes one every trainer.save_every steps and at its "
            "last step; trainer.save_every=0 writes none)"))
    raise ConfigError(f"{setting} ({resume}) is neither a complete checkpoint folder "
                      f"(step_NNNNNN with {MARKER}) nor a run folder with one; {fix}")


def load_driver_state(ckpt: Path) -> dict:
    """The driver's state with the settings it was written under (key "config")."""
    state = safe_load(Path(ckpt) / DRIVER)
    state["config"] = json.loads((Path(ckpt) / CONFIG).read_text())
    return state


def checkpoint_weights(ckpt: Path) -> tuple[dict, dict | None]:
    """(theta and phi weights as the engines load them, the meta actor's state) of a checkpoint."""
    return read_weights(model_dir(ckpt)), load_driver_state(ckpt).get("meta")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_compatible(saved_config: dict, run: RunConfig, ckpt: Path) -> None:
    """ConfigError naming the first differing settings when this run cannot continue `ckpt`."""
    now = _flat(json.loads(json.dumps(asdict(run))))  # as config.json holds it (tuples: lists)
    then = _flat(saved_config)
    keys = sorted((k for k in set(now) | set(then)
                   if any(k == m or k.startswith(m + ".") for m in MUST_MATCH)),
                  key=lambda k: (not k.endswith(".name"), k))  # a strategy change first
    diff = [k for k in keys if now.get(k) != then.get(k)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {then.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
        sharding = {"learner.num_ranks", "learner.zero_stage"} & set(diff)
        weights = (f", or start a new run from its weights (model.path={model_dir(ckpt)}; the "
                   f"optimizer state starts afresh): its optimizer state is sharded over "
                   f"{then.get('learner.num_ranks')} ranks at ZeRO stage "
                   f"{then.get('learner.zero_stage')}") if sharding else ""
        raise ConfigError(f"trainer.resume ({ckpt}) was written by a run with other settings "
                          f"({shown}{'; ...' if len(diff) > 4 else ''}); resume with the settings "
                          f"it was written with, or start a new run folder (trainer.resume=null)"
                          f"{weights}")


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the lines of a metrics JSONL logged after `last_step` (steps the crashed run did past
    its checkpoint, which the resumed run repeats); atomic. Returns the number dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a line cut short by the crash
            dropped += 1
            continue
        if step <= last_step:
            keep.append(line)
        else:
            dropped += 1
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)
    return dropped


def logged_base_eval(path: Path) -> dict[str, float]:
    """The base-model evaluation (eval_base/*) a run logged at step 0, for a resumed run's
    summary."""
    out: dict[str, float] = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.get("step") == 0:
                out.update({k: v for k, v in row.items() if k.startswith("eval_base")})
    return out
