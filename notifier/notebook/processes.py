"""Stopping a process and everything it started (the kernel and its children)."""

from __future__ import annotations

import signal
import sys

import psutil


def kill_tree(pid: int, *, grace: float = 3.0) -> list[int]:
    """SIGTERM then SIGKILL ``pid`` and all its descendants; return the pids that were killed.

    Descendants are listed before anything is signalled, so children re-parented to
    init when their parent dies are still found.
    """
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    tree = [root]
    try:
        tree += root.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for proc in tree:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [proc.pid for proc in tree]


def kill_descendants(pid: int) -> list[int]:
    """SIGKILL every descendant of ``pid`` (not ``pid`` itself), repeatedly until none is left.

    Used by the notebook worker when it is told to stop: as a subreaper it has adopted the
    kernel's orphans, so its process tree holds everything the notebook started.
    """
    killed: list[int] = []
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return killed
    for _ in range(5):  # a dying child may have forked once more
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            break
        if not children:
            break
        for proc in children:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
        try:
            psutil.wait_procs(children, timeout=2)
        except psutil.Error:
            pass
    return killed


def hide_environment_from_children() -> bool:
    """Linux: make /proc/<this pid>/environ unreadable to other processes of the same user.

    The runner holds SMTP credentials; notebook kernels run as the same user and could
    otherwise read them from their ancestor's /proc entry. (Root can still read it.)
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(4, 0) == 0  # PR_SET_DUMPABLE = 0
    except (OSError, AttributeError):
        return False
