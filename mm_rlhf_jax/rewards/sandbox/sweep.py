"""Find and kill a sandbox's processes by scanning /proc.

A sandbox process is any live process (other than the excluded supervisor,
which must survive to reap) that is in the sandbox's session, is a child of
the supervisor, runs as the sandbox's unique uid, or lives in the sandbox's
network namespace. Killing goes through pidfds, so a recycled pid is never
signalled. The supervisor backend relies on this sweep; the bubblewrap
backend kills its pid namespace instead and needs it only where that is not
known (see host.py), and ids.py sweeps a leased uid a crashed run may have
left behind.
"""

import errno
import os
import signal
import time


def _proc_info(pid):
    """(state, parent pid, session, real uid) of a process, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read().decode("ascii", "replace")
        with open("/proc/%d/status" % pid, "rb") as f:
            status = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    uid = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return fields[0], int(fields[1]), int(fields[3]), uid


def _belongs(pid, session_id, uid, netns):
    """Is `pid` a live (non-zombie) process of the sandbox?

    The session id is the supervisor's pid; a child of the supervisor is an
    orphan it adopted as subreaper (e.g. one that escaped with setsid())."""
    info = _proc_info(pid)
    if info is None or info[0] in ("Z", "X"):
        return False
    _, parent, session, proc_uid = info
    if session == session_id or parent == session_id:
        return True
    if uid is not None and proc_uid == uid:
        return True
    if netns is None:
        return False
    try:
        return os.readlink("/proc/%d/ns/net" % pid) == netns
    except OSError:
        return False


def sandbox_pids(session_id, uid, netns, exclude=()):
    """Live processes that belong to the sandbox (see the module docstring).

    `netns` is only used when it differs from the host's own namespace, so a
    failed unshare can never turn this into "every process on the host"."""
    if netns is not None and netns == os.readlink("/proc/self/ns/net"):
        netns = None
    exclude = set(exclude) | {os.getpid()}
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) not in exclude
            and _belongs(int(name), session_id, uid, netns)]


def kill_sandbox(session_id, uid, netns, exclude=(), max_passes=200):
    """SIGKILL every sandbox process until a full pass finds none."""
    if netns is not None and netns == os.readlink("/proc/self/ns/net"):
        netns = None
    for _ in range(max_passes):
        pids = sandbox_pids(session_id, uid, netns, exclude)
        if not pids:
            return True
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                if e.errno == errno.ENOSYS and _belongs(pid, session_id, uid, netns):
                    _kill_quietly(pid)  # kernels before 5.3: small pid-reuse window
                continue
            try:
                # The pidfd pins the process, so this re-check cannot be
                # fooled by a recycled pid between the scan and the kill.
                if _belongs(pid, session_id, uid, netns):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        time.sleep(0.002)
    return False


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
