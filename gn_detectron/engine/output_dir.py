"""One run per ``OUTPUT_DIR``: an exclusive lock held for the life of the process that writes it.

Two runs writing the same folder would interleave their ``log.txt`` and ``metrics.json`` and
overwrite each other's checkpoints. The lock is an ``flock`` on ``OUTPUT_DIR/.lock``: the kernel
releases it when the process ends, however it ends (SIGKILL included), so a killed run never
leaves a stale lock behind. Only the main process of a run takes it.
"""
import os
import socket
import sys
import time

__all__ = ["OutputDirInUseError", "lock_output_dir"]

_held = {}  # realpath of the folder -> open lock file, for the life of the process


class OutputDirInUseError(RuntimeError):
    """Another running process holds the ``OUTPUT_DIR`` lock."""


def lock_output_dir(output_dir: str) -> bool:
    """Takes the exclusive lock of ``output_dir`` (created if needed) for this process, or raises
    :class:`OutputDirInUseError` naming the process that holds it. Taking it again in the same
    process is a no-op. Returns False where locks are not available (no ``fcntl``, or a file
    system that refuses them: the run goes on unlocked)."""
    try:
        import fcntl
    except ImportError:
        return False
    os.makedirs(output_dir, exist_ok=True)
    key = os.path.realpath(output_dir)
    if key in _held:
        return True
    path = os.path.join(output_dir, ".lock")
    try:
        f = open(path, "a+")
    except OSError:
        return False
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OutputDirInUseError(
            f"OUTPUT_DIR {output_dir} is in use by a run that is still going ({holder}). Two runs in "
            "one folder would mix their logs, metrics and checkpoints: wait for it to end, or set "
            "OUTPUT_DIR to another folder.") from None
    except OSError:  # e.g. a network file system without locks
        f.close()
        return False
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(sys.argv)[:300]}\n")
    f.flush()
    _held[key] = f
    return True
