"""What a user reads on the console of ``python -m launch.run``: the known CPU start-up noise is
filtered (``launch.quiet``), each step's line has elapsed time and ETA, the dashboard line says
how to sign in, and Ctrl-C / SIGTERM end with one line naming the step, the last checkpoint and
the resume command, with no traceback (``launch.signals``)."""

from __future__ import annotations

import logging
import logging.config
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from launch import quiet
from launch.logger import MetricsLogger, duration
from launch.signals import Interrupted, keep_handlers, resume_command, stop_line, stop_on_signals

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fast: the pieces


@pytest.fixture(autouse=True)
def _restore_logging_and_warnings():
    """The filters these tests install, and the capture handlers, leave with the test: later
    tests in the same session see vLLM's and Ray's loggers as they were."""
    names = [*quiet.CPU_NOISE, *quiet.RAY_NOISE]
    saved = {n: (list(logging.getLogger(n).filters), list(logging.getLogger(n).handlers),
                 logging.getLogger(n).propagate) for n in names}
    with warnings.catch_warnings():  # restores the warnings filters on exit
        yield
    for n, (filters, handlers, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.filters[:], logger.handlers[:], logger.propagate = filters, handlers, propagate


def _capture(name: str) -> tuple[logging.Logger, list[str]]:
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    return logger, seen


def test_known_noise_is_dropped_and_errors_and_other_lines_are_kept():
    quiet.quiet_known_noise(cpu=True)
    logger, seen = _capture("vllm.v1.worker.cpu_worker")
    logger.warning("%s is not found in LD_PRELOAD. For best performance ...", "libtcmalloc")
    logger.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread "
                   "binding, skip it.")
    logger.error("libtcmalloc is not found in LD_PRELOAD (as an error)")
    logger.warning("Speculative decoding on CPU without Intel OpenMP ...")
    assert seen == ["libtcmalloc is not found in LD_PRELOAD (as an error)",
                    "Speculative decoding on CPU without Intel OpenMP ..."]
    quiet.quiet_known_noise(cpu=True)  # idempotent: one filter per logger
    assert sum(isinstance(f, quiet.KnownNoise) for f in logger.filters) == 1


def test_the_filters_outlive_a_later_logging_configuration():
    """vLLM and Ray apply dictConfig to their top loggers ("vllm", "ray") after import; the
    filters sit on the loggers below, which dictConfig resets (handlers, level) but does not strip
    of filters. Shown on a logger tree of the test's own, so vLLM's stays untouched."""
    quiet._install({"tempo_console_test.child": ("Enforce eager set",)})
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "loggers": {
        "tempo_console_test": {"level": "INFO", "propagate": False}}})
    logger, seen = _capture("tempo_console_test.child")
    logger.warning("Enforce eager set, disabling torch.compile ...")
    logger.warning("a line that says something")
    assert seen == ["a line that says something"]


def test_the_cpu_list_only_on_cpu_and_the_reduce_op_warning(monkeypatch):
    logger = logging.getLogger("vllm.engine.arg_utils")
    monkeypatch.setattr(logger, "filters", [])
    quiet.quiet_known_noise(cpu=False)
    assert not logger.filters  # a GPU run keeps vLLM's lines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.quiet_known_noise(cpu=True)
        warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ...", FutureWarning,
                      stacklevel=1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]


def test_tempo_quiet_0_filters_nothing(monkeypatch):
    monkeypatch.setenv("TEMPO_QUIET", "0")
    logger = logging.getLogger("vllm.v1.engine.input_processor")
    monkeypatch.setattr(logger, "filters", [])
    quiet.quiet_known_noise(cpu=True)
    assert not logger.filters


def test_dashboard_line_says_how_to_sign_in(monkeypatch):
    monkeypatch.setattr(quiet, "ray_token_file", lambda: "~/.ray/auth_token")
    line = quiet.dashboard_line("http://127.0.0.1:8265")
    assert line.startswith("Ray dashboard: http://127.0.0.1:8265 (sign in with the token in "
                           "~/.ray/auth_token; `")
    assert line.endswith(" get-auth-token` prints it)")
    monkeypatch.setattr(quiet, "ray_token_file", lambda: None)
    assert quiet.dashboard_line("http://h:1") == "Ray dashboard: http://h:1"


def test_console_line_has_elapsed_and_eta(tmp_path):
    log = MetricsLogger(str(tmp_path), {}, mode="disabled")
    line = log.console_line(9, 120, {"phase": "theta", "critic/score/mean": 0.5}, 25.0, 10)
    assert line == "step 10/120 | theta | score 0.500 | 25s elapsed, ETA 4m35s"
    assert log.console_line(0, 2, {}) == "step 1/2"  # no timing given: none shown
    assert [duration(s) for s in (0.4, 59, 60, 187, 3600, 3900)] == [
        "0s", "59s", "1m00s", "3m07s", "1h00m", "1h05m"]


def test_resume_command_replaces_resume_and_run_dir(tmp_path):
    cmd = resume_command(tmp_path / "run", ["+experiment=introllm", "meta=tampo",
                                            "trainer.resume=null", "hydra.run.dir=elsewhere",
                                            "data.instruction=say it twice"])
    args = shlex.split(cmd)
    assert args[1:] == ["-m", "launch.run", "+experiment=introllm", "meta=tampo",
                        "data.instruction=say it twice", "trainer.resume=auto",
                        f"hydra.run.dir={tmp_path / 'run'}"]
    assert os.path.samefile(args[0], sys.executable)


def test_stop_line_names_step_checkpoint_and_command(tmp_path):
    for n in (1, 2):
        (tmp_path / "checkpoints" / f"step_00000{n}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_00000{n}" / "COMPLETE").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp_step_000003").mkdir()  # cut short: not a checkpoint
    stop = Interrupted(signal.SIGINT)
    stop.step, stop.total = 3, 50
    line = stop_line(stop, tmp_path, ["+experiment=smoke"])
    assert line == (f"stopped by SIGINT during step 3/50; last checkpoint "
                    f"{tmp_path}/checkpoints/step_000002 (step 2); resume with: "
                    f"{resume_command(tmp_path, ['+experiment=smoke'])}")
    assert "\n" not in line and stop.exit_code == 130
    fresh = stop_line(Interrupted(signal.SIGTERM), tmp_path / "new", [])
    assert fresh.startswith("stopped by SIGTERM before the first step; no checkpoint written yet")
    assert "; start again with: " in fresh


def test_sigint_and_sigterm_raise_interrupted_and_handlers_survive_ray_init():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            stop_on_signals()
            with keep_handlers():  # as around ray.init, which installs its own
                signal.signal(sig, signal.SIG_DFL)
            with pytest.raises(Interrupted) as info:
                os.kill(os.getpid(), sig)
                time.sleep(1)  # the handler runs at the next bytecode
            assert info.value.signum == sig and not isinstance(info.value, Exception)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ slow: the real entry point


NOISE = [p for prefixes in {**quiet.CPU_NOISE, **quiet.RAY_NOISE}.values() for p in prefixes]


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_with_one_line_and_no_traceback(tmp_path, tiny_model_dir, sig):
    """A smoke run of 50 steps stopped after its second step: SIGINT to its process group, as a
    terminal's Ctrl-C (vLLM engine, dashboard on: the start-up is also checked for noise and the
    dashboard line), SIGTERM to its process id (transformers engine: a faster start)."""
    engine = ["cluster.dashboard=true"] if sig == "SIGINT" else ["rollout=hf",
                                                                 "cluster.dashboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "launch.run", "+experiment=smoke", f"model.path={tiny_model_dir}",
           "trainer.total_steps=50", "trainer.save_every=1", "eval.samples=1",
           "data.eval_size=4", f"hydra.run.dir={tmp_path}", *engine]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 2/50"):
                if sig == "SIGINT":
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    os.kill(proc.pid, signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 128 + getattr(signal, sig), out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    stops = [x for x in out.splitlines() if x.startswith("stopped by")]
    assert len(stops) == 1, out[-3000:]
    m = re.fullmatch(rf"stopped by {sig} during step (\d+)/50; last checkpoint (\S+) "
                     rf"\(step (\d+)\); resume with: (.+)", stops[0])
    assert m, stops[0]
    step, ckpt, saved = int(m[1]), Path(m[2]), int(m[3])
    assert step >= 3 and saved in (step - 1, step)
    assert ckpt == tmp_path / "checkpoints" / f"step_{saved:06d}" and (ckpt / "COMPLETE").exists()
    args = shlex.split(m[4])
    assert args[1:3] == ["-m", "launch.run"] and os.path.samefile(args[0], sys.executable)
    assert args[3:] == [a for a in cmd[3:] if not a.startswith("hydra.run.dir=")] + [
        "trainer.resume=auto", f"hydra.run.dir={tmp_path}"]
    steps = [x for x in out.splitlines() if x.startswith("step ")]
    assert steps and all(re.search(r"\| \S+ elapsed, ETA \S+$", x) for x in steps), steps
    if sig == "SIGINT":  # the vLLM start-up on CPU: none of the known lines
        shown = [p for p in NOISE if p in out] + (["FutureWarning"] if "FutureWarning" in out
                                                   else [])
        assert not shown, out[:6000]
        board = [x for x in out.splitlines() if x.startswith("Ray dashboard: http")]
        assert len(board) == 1, out[:3000]
        if os.environ.get("RAY_AUTH_MODE", "token") != "disabled":
            assert "(sign in with the token in " in board[0], board[0]
