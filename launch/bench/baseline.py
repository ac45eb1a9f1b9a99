"""Today's path beside the new one, in one benchmark run: another commit's tree, checked out as a
temporary git worktree, runs a self-contained benchmark file of this tree in a subprocess
(``--baseline REF`` of ``launch.bench rollout``).

The file is run with the other tree first on ``sys.path`` (its working directory, and
``PYTHONPATH`` for the processes it spawns), so every ``import rollout`` / ``meta`` / ``learner``
inside it is that commit's code; the virtual environment (torch, vLLM, ...) is this one. The
file must only use interfaces both trees have.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def worktree(ref: str):
    """A detached checkout of ``ref`` in a temporary folder (removed afterwards); yields its
    path and the commit it resolved to. A folder that exists is taken as the tree itself (a
    checkout made by hand)."""
    if Path(ref).is_dir():
        yield Path(ref).resolve(), f"tree {Path(ref).resolve()}"
        return
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT,
                            capture_output=True, text=True)
    if commit.returncode:
        raise SystemExit(f"--baseline {ref!r} is not a commit of {ROOT} ({commit.stderr.strip()}); "
                         f"give a commit, branch or tag, e.g. --baseline HEAD~1")
    sha = commit.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="tempo-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), sha],
                       cwd=ROOT, check=True)
        try:
            yield tree, sha
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)


def child_command(tree: Path, file: Path, *args: str) -> tuple[list[str], dict]:
    """(argv, environment) that run ``file`` of this tree as ``__main__`` over ``tree``'s
    packages."""
    code = ("import runpy, sys; sys.argv = [sys.argv[1]] + sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-c", code, str(file), *args], env


def run_in_tree(tree: Path, file: Path, *args: str, timeout: float = 1800) -> object:
    """Run ``file`` over ``tree``'s packages; its last stdout line, parsed as JSON."""
    argv, env = child_command(tree, file, *args)
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{file.name} over {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
