"""Keep a notebook's kernel from reading or changing the project's ``.env`` (Linux Landlock).

The notebook worker calls :func:`hide_files` before it starts the kernel. It uses
Landlock (Linux 5.13 and later, no privileges needed): a ruleset that handles *reading
files*, *writing files* and (Linux 6.2 and later, Landlock ABI 3) *truncating files*, and
grants them everywhere except on the hidden files, by granting every entry of each
folder on the way to them but the one that leads there. So a notebook can neither read
``.env`` (SMTP_PASSWORD) nor append to it (say, an SMTP_HOST of its own, to harvest the
password at the next start). Listing folders, creating, renaming and removing files and
running programs are not restricted. The worker and the kernel it starts (and
everything the kernel starts) inherit the restriction; the daemon does not.

Limits, also in the README: Landlock grants are per folder hierarchy, so denying a
right *directly in* the project folder denies it there for every file. Hence renaming
another file over ``.env`` or removing it stays possible (Landlock checks those on the
folder: denying them would forbid creating or removing any file in the project root,
``/tmp`` or ``$HOME``, whichever lie on the way); the runner reads ``.env`` afresh only
at its next start. Files created after the kernel started directly in a folder on the
way to ``.env`` (the project root, its parents) can be neither read nor written by the
notebook; hard links to a hidden file made elsewhere are not covered; setuid programs
(sudo) do not gain privileges inside a notebook (Landlock needs ``no_new_privs``). Where
Landlock is missing (older kernels, other systems) nothing is hidden and
:func:`hide_files` says so: notebook code is then trusted with the project's files.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # syscall numbers (all arches)
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_ACCESS_FS_WRITE_FILE = 1 << 1
_ACCESS_FS_READ_FILE = 1 << 2
_ACCESS_FS_TRUNCATE = 1 << 14  # Landlock ABI 3 (Linux 6.2)
_PR_SET_NO_NEW_PRIVS = 38


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel (0 when it has none)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(
            _CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION
        )
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def handled_access(abi: int) -> int:
    """The file rights the ruleset takes away from the hidden files on this ABI."""
    rights = _ACCESS_FS_READ_FILE | _ACCESS_FS_WRITE_FILE
    return rights | _ACCESS_FS_TRUNCATE if abi >= 3 else rights


def _grants(hidden: set[Path]) -> list[Path]:
    """Every path to grant: the siblings of each folder and file on the way to a hidden one."""
    on_the_way: set[Path] = set()
    for path in hidden:
        on_the_way.update(path.parents)
        on_the_way.add(path)
    grants: list[Path] = []
    for folder in sorted(on_the_way):
        if folder in hidden or not folder.is_dir():
            continue
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        # a symlink is checked where it leads; granting it would grant its target (which
        # may be a folder on the way, like pytest's "...current" links)
        grants += [e for e in entries if e not in on_the_way and not e.is_symlink()]
    return grants


def folders_state(hidden: Iterable[str | os.PathLike[str]], within: Path) -> dict[str, int]:
    """The modification time of each folder on the way to a hidden file, inside ``within``.

    A file created in (or renamed into) such a folder after the sandbox was made cannot be
    read by the sandboxed process (see the limits above). A worker sandboxed ahead of its
    run (a warm start) compares this before and at the run: any change and the run starts
    cold, so it sees the files a cold run would.
    """
    state: dict[str, int] = {}
    within = Path(within)
    for path in hidden:
        for folder in Path(path).parents:
            if folder != within and not folder.is_relative_to(within):
                continue
            try:
                state[str(folder)] = os.stat(folder).st_mtime_ns
            except OSError:
                state[str(folder)] = -1
    return state


def hide_files(paths: Iterable[str | os.PathLike[str]]) -> str | None:
    """Make ``paths`` unreadable and unwritable for this process and its future children.

    Returns None when done, else why nothing was hidden (to be logged once).
    """
    hidden = {Path(p).resolve() for p in paths}
    hidden = {p for p in hidden if p.exists()}
    if not hidden:
        return None
    abi = landlock_abi()
    if abi < 1:
        return "Landlock is not available on this system: notebooks can read the project's .env"
    libc = _libc()
    access = handled_access(abi)
    attr = struct.pack("=Q", access)
    ruleset = libc.syscall(_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        return f"Landlock refused a ruleset ({os.strerror(ctypes.get_errno())})"
    try:
        for path in _grants(hidden):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # vanished or unreadable: nothing to grant
            try:
                rule = struct.pack("=Qi", access, fd)
                if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0) < 0:
                    return f"Landlock refused a rule for {path} ({os.strerror(ctypes.get_errno())})"
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"cannot set no_new_privs ({os.strerror(ctypes.get_errno())})"
        if libc.syscall(_RESTRICT_SELF, ruleset, 0) < 0:
            return f"Landlock restriction failed ({os.strerror(ctypes.get_errno())})"
    finally:
        os.close(ruleset)
    return None
