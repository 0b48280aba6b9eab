"""A run directory: where it may be, who writes in it (a lock), and which data it was made from (hashes).

- :func:`check_out_dir` before anything is written: ``out`` must not be an existing file, must be creatable
  and writable, and must not be where an input lives (``out: .`` beside a config named ``config.yaml``
  would have the resolved config overwrite the user's own).
- :class:`RunLock`: one writer per directory.  ``OUT/run.lock`` holds the writer's pid, host and start
  time, and an exclusive ``flock`` on it, which the kernel drops when the process dies however it dies; so a
  second training in the same directory is refused while the first lives, and a lock left by a killed
  process is taken over (and said so).
- :func:`file_hashes`: SHA-256 of every data file, recorded in ``run.json``; a resumed run whose data
  changed at the same path is refused (the model would be trained on the old frames and scored on the new),
  unless the user asks to restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path

from .errors import ConfigError, UqpotError
from .provenance import pid_alive, remove_stale_temps

LOCK_NAME = "run.lock"
#: every file ``uqpot train`` writes into ``out`` (removed by a restart; nothing else in ``out`` is touched)
RUN_FILES = ("config.yaml", "split.json", "run.json", "model.pt", "checkpoint.pt", "history.csv",
             "history_members.csv", "train.log", "summary.json", "val_per_structure.csv", "test_per_structure.csv",
             "val_predictions.npz", "test_predictions.npz")


class RunLockedError(UqpotError):
    """Another live process writes in this run directory."""


def check_out_dir(out, key: str = "out", inputs: dict | None = None, writes=RUN_FILES) -> Path:
    """Refuses an output directory that cannot hold a run, before anything is written (``ConfigError``
    naming ``key``).  ``inputs`` maps a name (config key or option) to an input file; none of them may be a
    file this run writes (``writes``, names inside ``out``)."""
    out = Path(out)
    if str(out).strip() == "":
        raise ConfigError(None, f"{key}: an output directory is needed")
    if out.exists() and not out.is_dir():
        raise ConfigError(None, f"{key}: {out} is an existing file, not a directory; choose another {key}")
    parent = out
    while not parent.exists() and parent != parent.parent:  # the first existing ancestor must be writable
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(None, f"{key}: cannot create {out}: {parent} is a file, not a directory")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(None, f"{key}: cannot write in {parent} (permission denied); choose another {key}")
    for name, path in (inputs or {}).items():
        if path is None or not Path(path).exists():
            continue
        for w in writes:
            target = out / w
            if target.exists() and os.path.samefile(path, target):
                raise ConfigError(None, f"{key}: {target} is your {name} ({path}), and this command writes its "
                                        f"own {w} there; choose another {key}")
    return out


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(files: dict) -> dict:
    """``{key: {"path", "sha256", "bytes"}}`` for every file in ``files`` (key -> path; None skipped)."""
    return {k: {"path": str(p), "sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
            for k, p in files.items() if p is not None}


def changed_files(recorded: dict, current: dict) -> list[tuple[str, str]]:
    """(path, description) of every file whose content differs between two :func:`file_hashes` records."""
    found = []
    for key, now in current.items():
        then = recorded.get(key)
        if then is None:
            continue
        if then.get("sha256") != now["sha256"]:
            found.append((now["path"], f"{key}: the file's content changed since this run started (sha256 "
                                       f"{then.get('sha256', '?')[:12]}… then, {now['sha256'][:12]}… now)"))
    return found


def refuse_changed_files(recorded: dict, current: dict, consequence: str) -> None:
    """``ConfigError`` naming the first file whose content differs between two :func:`file_hashes` records
    (and how many more), with ``consequence`` (what resuming would do, and the ways out) after it."""
    changed = changed_files(recorded, current)
    if changed:
        path, what = changed[0]
        more = f" (and {len(changed) - 1} more file(s))" if len(changed) > 1 else ""
        raise ConfigError(path, f"{what}{more}; {consequence}")


def place(out) -> dict:
    """Where a run's relative paths are resolved: the working directory and the run folder, absolute
    (recorded in ``run.json``, so that a later run can tell the same file spelled differently, and a moved
    run folder, from a different file)."""
    return {"cwd": os.getcwd(), "out": os.path.abspath(out)}


def _absolute(path, cwd) -> str:
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(str(path))))


def same_file(then, now, place_then: dict, place_now: dict) -> bool:
    """Whether the path ``then`` (as a run stored it, relative to ``place_then``) and ``now`` (as given now)
    name the same file: the same absolute path, or the same path relative to the run folder (the run folder
    was moved with its files), or the same existing file."""
    if then is None or now is None:
        return then is None and now is None
    a, b = _absolute(then, place_then["cwd"]), _absolute(now, place_now["cwd"])
    if a == b or os.path.relpath(a, place_then["out"]) == os.path.relpath(b, place_now["out"]):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def setting_differences(then: dict, now: dict, path_keys=(), place_then: dict | None = None,
                        place_now: dict | None = None, skip=("out",)) -> list[str]:
    """``key (old then, new now)`` for every setting that differs between two flat configs (``{"a.b": v}``).
    ``skip`` (the run folder itself: where a run is does not change what it is) is not compared; the values of
    ``path_keys`` (a path, or a list of paths) are compared as files (:func:`same_file`), not as strings."""
    place_now = place_now or place(".")
    place_then = place_then or place_now
    out = []
    for k in sorted(set(then) | set(now)):
        a, b = then.get(k), now.get(k)
        if k in skip or a == b:
            continue
        if k in path_keys:
            pa, pb = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
            if len(pa) == len(pb) and all(same_file(x, y, place_then, place_now) for x, y in zip(pa, pb)):
                continue
        out.append(f"{k} ({a!r} then, {b!r} now)")
    return out


def recorded_place(run_json: dict, stored_out, place_now: dict) -> dict:
    """The place (:func:`place`) of a stored run from its ``run.json``; runs recorded before places were
    kept are taken to have been started from the current working directory."""
    cwd = run_json.get("cwd") or place_now["cwd"]
    out = run_json.get("out") or (_absolute(stored_out, cwd) if stored_out else place_now["out"])
    return {"cwd": cwd, "out": out}


def clear_run(out) -> list[str]:
    """Removes the files of a uqpot run from ``out`` (only :data:`RUN_FILES`); returns their names."""
    removed = []
    for name in RUN_FILES:
        p = Path(out) / name
        if p.is_file():
            p.unlink()
            removed.append(name)
    return removed


class RunLock:
    """``with RunLock(out):`` — the one process that writes in ``out`` (see the module docstring).

    Creates ``out`` if needed; if it created it and leaves it empty (an error before anything was written),
    it removes it again, so a failed start leaves no trace."""

    def __init__(self, out, what: str = "uqpot"):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.what = what
        self.fh = None
        self.created = False
        self.took_over: dict | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(None, f"out: cannot create the run directory {self.out}: {exc.strerror}; choose a "
                                    "folder you can write to") from None
        for _ in range(20):  # the file may be replaced between open and flock: retry on a fresh one
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fh)
                fh.close()
                raise RunLockedError(self._refusal(holder)) from None
            if not self.path.exists() or os.stat(self.path).st_ino != os.fstat(fh.fileno()).st_ino:
                fh.close()  # unlinked by its previous holder meanwhile
                continue
            previous = _read_holder(fh)
            if previous and previous.get("pid") != os.getpid():
                self.took_over = previous
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            fh.flush()
            self.fh = fh
            break
        else:
            raise RunLockedError(f"{self.path}: the lock file keeps changing; is another process restarting here?")
        remove_stale_temps(self.out, recursive=True)  # a loop's runs lie in subfolders
        return self

    def _refusal(self, holder: dict) -> str:
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('command', 'uqpot')} since "
               f"{holder.get('since')}") if holder else "another process"
        return (f"{self.path}: this run directory is locked by a running uqpot process ({who}); two runs in one "
                "directory would mix their files: wait for it to finish, stop it, or choose another 'out'")

    def stale_note(self) -> str | None:
        h = self.took_over
        if not h:
            return None
        alive = pid_alive(int(h.get("pid", -1))) if h.get("host") == socket.gethostname() else None
        state = "no longer running" if alive is False else "which no longer holds it"
        return f"took over the stale lock {self.path} of pid {h.get('pid')} ({state})"

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fh is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiting process then retries on a fresh file
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()
        self.fh = None
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only if still empty: an error before anything was written


def _read_holder(fh) -> dict:
    try:
        fh.seek(0)
        text = fh.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
