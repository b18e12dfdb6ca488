"""An unprivileged uid/gid for one sandbox run, unique on this machine.

Only used when the host runs as root. A run leases one of `SLOTS` ids
starting at `BASE` (far above login users, subuid ranges and systemd's
dynamic users) by holding an exclusive flock on `<tmp>/mm_rlhf_sandbox_uids/
<slot>` for the whole run, so concurrent runs, in this process or in others,
never share a uid: the uid-based sweep of one run can never hit another run,
and RLIMIT_NPROC counts only that run's processes. Leftovers of a crashed
earlier holder of the slot are killed before the lease is handed out: the
lock file says "busy" while a run holds it and "clean" only after a run that
proved all its processes gone (the bwrap backend's empty pid namespace), and
every other state (a crash, the supervisor backend) makes the next holder
sweep /proc for the uid first.
"""

import contextlib
import fcntl
import grp
import os
import pwd
import stat
import tempfile

from mm_rlhf_jax.rewards.sandbox import sweep

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


_UNUSED = set()  # ids seen unassigned (nobody adds users at 1.6e9 mid-run)


def _unused(uid):
    if uid in _UNUSED:
        return True
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return False
        except KeyError:
            pass
    _UNUSED.add(uid)
    return True


class Lease:
    """A leased uid (None when not root); set `clean` once the run's
    processes are known to be gone, so the next holder may skip the sweep."""

    def __init__(self, uid):
        self.uid = uid
        self.clean = False


_CLEAN, _BUSY = b"clean", b"busy."  # equal lengths: pwrite alone replaces either


@contextlib.contextmanager
def lease():
    """Yields a `Lease` of a fresh uid (== gid) for this run; its uid is None
    when not root or when this user namespace does not map the id range."""
    if os.geteuid() != 0 or not (_id_range_mapped("/proc/self/uid_map")
                                 and _id_range_mapped("/proc/self/gid_map")):
        yield Lease(None)
        return
    directory = _lock_dir()
    # Lowest free slot first: it is usually the one a clean run just left,
    # so its /proc sweep can be skipped.
    for slot in range(SLOTS):
        uid = BASE + slot
        fd = os.open(os.path.join(directory, str(slot)),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held = Lease(uid)
        try:
            if not _unused(uid):
                continue
            if os.pread(fd, len(_CLEAN), 0) != _CLEAN:
                sweep.kill_sandbox(session_id=-1, uid=uid, netns=None)
            _mark(fd, _BUSY)
            yield held
            return
        finally:
            if held.clean:
                _mark(fd, _CLEAN)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    raise RuntimeError(f"all {SLOTS} sandbox uids are in use")


def _mark(fd, state):
    os.pwrite(fd, state, 0)


@contextlib.contextmanager
def lease_uid():
    """The uid of a `lease()` (for callers that never prove a run clean)."""
    with lease() as held:
        yield held.uid
