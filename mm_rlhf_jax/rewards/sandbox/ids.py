"""An unprivileged uid/gid for one sandbox run, unique on this machine.

Only used when the host runs as root. A run leases one of `SLOTS` ids
starting at `BASE` (far above login users, subuid ranges and systemd's
dynamic users) by holding an exclusive flock on `<tmp>/mm_rlhf_sandbox_uids/
<slot>` for the whole run, so concurrent runs, in this process or in others,
never share a uid: the uid-based sweep of one run can never hit another run,
and RLIMIT_NPROC counts only that run's processes. Leftovers of a crashed
earlier holder of the slot are killed before the lease is handed out.
"""

import contextlib
import fcntl
import grp
import os
import pwd
import secrets
import stat
import tempfile

from mm_rlhf_jax.rewards.sandbox import host as sandbox_host

BASE = 1_600_000_000
SLOTS = 4096


def _id_range_mapped(path):
    try:
        with open(path) as f:
            rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return False
    return any(inside <= BASE and inside + count >= BASE + SLOTS for inside, _, count in rows)


def _lock_dir():
    path = os.path.join(tempfile.gettempdir(), "mm_rlhf_sandbox_uids")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"sandbox uid lock directory {path!r} must be a root-owned 0700 "
                           "directory; remove it and retry")
    return path


def _unused(uid):
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return False
        except KeyError:
            pass
    return True


@contextlib.contextmanager
def lease_uid():
    """Yields a fresh uid (== gid) for this run, or None when not root or
    when this user namespace does not map the id range."""
    if os.geteuid() != 0 or not (_id_range_mapped("/proc/self/uid_map")
                                 and _id_range_mapped("/proc/self/gid_map")):
        yield None
        return
    directory = _lock_dir()
    start = secrets.randbelow(SLOTS)
    for k in range(SLOTS):
        slot = (start + k) % SLOTS
        uid = BASE + slot
        fd = os.open(os.path.join(directory, str(slot)),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if not _unused(uid):
                continue
            sandbox_host.kill_sandbox(session_id=-1, uid=uid, netns=None)
            yield uid
            return
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    raise RuntimeError(f"all {SLOTS} sandbox uids are in use")
