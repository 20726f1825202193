"""Starting, watching and stopping Flower's processes, and calling the ``flwr`` CLI.

What Flower 1.39 needs here (``docs/deploy-notes-1.39.md``):

- every long-lived process gets its own session (``start_new_session``), so that a
  SuperNode, its SuperExec and its ClientApps can be signalled together, as a group;
- output goes to a log file, never to a pipe: a SuperNode's children inherit the pipe
  and outlive it, and ``communicate()`` then blocks;
- SIGTERM first (the SuperLink then stops its SuperExec, a SuperNode says goodbye),
  SIGKILL only after a grace period; every wait is bounded.

Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DeployError(RuntimeError):
    """A deployment step failed; the message says which and why."""


def _flwr_scripts_dir() -> Path | None:
    """Where pip put flwr's console scripts (from its RECORD), if it says."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("flwr")
    except PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "flower-supernode":
            return Path(str(dist.locate_file(f))).resolve().parent
    return None


def flower_executable(name: str) -> str:
    """Path of a Flower console script: next to this Python, where flwr's scripts were
    installed, then on PATH."""
    for directory in (Path(sys.executable).parent, _flwr_scripts_dir()):
        if directory is not None:
            cand = directory / name
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH (pip install flwr==1.39.*)")
    return found


def bin_dir() -> str:
    """PATH entries for Flower's processes: this Python's ``bin`` and flwr's scripts.

    Flower starts ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by
    name, so these must come first in PATH (:func:`fedsim.deploy.commands.venv_env`).
    """
    dirs = [str(Path(sys.executable).parent)]
    scripts = _flwr_scripts_dir()
    if scripts is not None and str(scripts) not in dirs:
        dirs.append(str(scripts))
    return os.pathsep.join(dirs)


@dataclass
class Proc:
    """A started process, its log file and its process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


def start(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: str | None = None) -> Proc:
    """Start ``argv`` in a new session with stdout and stderr written to ``log`` (truncated)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
    return Proc(name, popen, log)


def wait_for_text(proc: Proc, text: str, timeout: float, poll: float = 0.2) -> None:
    """Wait until ``text`` appears in the log; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if text in proc.text():
            return
        if not proc.alive():
            raise DeployError(f"{proc.name} exited with code {proc.popen.returncode} before "
                              f"{text!r}; last lines of {proc.log}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise DeployError(f"{proc.name}: no {text!r} within {timeout:.0f} s; "
                              f"last lines of {proc.log}:\n{proc.tail()}")
        time.sleep(poll)


def signal_group(proc: Proc, sig: int) -> None:
    """Send ``sig`` to the process group of ``proc`` (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: Proc, grace: float = 10.0, group: bool = True) -> int | None:
    """SIGTERM (the group, or the process alone), wait up to ``grace``, then SIGKILL.

    Returns the exit code (None if it could not be reaped).
    """
    if proc.alive():
        if group:
            signal_group(proc, signal.SIGTERM)
        else:
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return None
    if group:  # children that outlived the leader (a SuperNode's ClientApp)
        signal_group(proc, signal.SIGKILL)
    return proc.popen.returncode


def stop_all(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """SIGTERM every process group at once, wait up to ``grace`` in all, SIGKILL the rest."""
    for proc in procs:
        if proc.alive():
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        signal_group(proc, signal.SIGKILL)  # leaders that did not stop, and their children
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def lock_directory(directory: Path) -> Any:
    """Hold an exclusive lock on ``directory/.lock`` for this process's lifetime.

    Returns the open lock file (keep a reference). Raises :class:`DeployError` if
    another process holds it (two deployments sharing logs and ports would collide).
    """
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    f = (directory / ".lock").open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise DeployError(f"another `fedsim deploy server` is using {directory}; "
                          "give --workdir another directory") from None
    f.write(str(os.getpid()))
    f.flush()
    return f


def run_json(argv: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Run a ``flwr ... --format json`` command, bounded; return the JSON it printed.

    Output goes through a temporary file (no pipe a child could hold open).
    """
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"`{' '.join(argv[:3])} ...` did not answer within {timeout:.0f} s") from None
        out.seek(0)
        text = out.read().decode(errors="replace")
    start_at = text.find("{")
    try:
        data = json.JSONDecoder().raw_decode(text, start_at)[0] if start_at >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise DeployError(f"`{' '.join(argv[:3])} ...` exited {proc.returncode} without JSON output:\n{text[-2000:]}")
    return data
