"""The seccomp filter of the bubblewrap backend, as classic BPF bytes.

`program()` returns the filter in the format `bwrap --seccomp FD` reads (an
array of `struct sock_filter`, 8 bytes each), built here with the standard
library only. bwrap loads it right before it executes the runner, so it
binds the runner and every process the program starts, and can never be
removed.

Policy (a deny list: ordinary computation, threads, fork and local IPC keep
working):
  * a syscall of another ABI (i386 `int 0x80`, x32) kills the process: the
    numbers below are only meaningful for the native one;
  * kernel attack surface and escapes fail with EPERM: ptrace and the
    process_vm_* calls (reading or steering other processes), new namespaces
    (unshare, setns, clone with CLONE_NEW* flags: an unprivileged user
    namespace would hand the program root-like capabilities over its own
    mounts and network), every mount call (old and new API), chroot and
    pivot_root, kernel modules and kexec, bpf, perf_event_open, userfaultfd,
    io_uring, the kernel keyring, fanotify, kcmp, pidfd_getfd,
    process_madvise, open_by_handle_at (reads files by handle, past the
    mounts), clocks, hostname, reboot, swap, accounting, quotas, personality,
    NUMA page moves, and ioctl TIOCSTI/TIOCLINUX (typing into a terminal);
  * sockets other than AF_UNIX fail with EAFNOSUPPORT (the network namespace
    has no route out anyway; this also keeps netlink and packet sockets, a
    frequent source of kernel bugs, out of reach);
  * clone3 fails with ENOSYS, so the C library falls back to clone, whose
    flags the filter can inspect (clone3 passes them in memory).
Unknown architectures get no filter (`program()` returns None) and the
result then lacks the "seccomp" layer.
"""

import functools
import os
import struct

# struct seccomp_data: nr (u32), arch (u32), instruction_pointer (u64), args[6] (u64)
_NR, _ARCH = 0, 4
_ARG_LO = lambda i: 16 + 8 * i  # noqa: E731 - low 32 bits (little endian)

_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL_PROCESS, _ALLOW, _ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS, _EAFNOSUPPORT = 1, 38, 97
_AF_UNIX = 1
_X32_BIT = 0x40000000
_CLONE_NEW_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at", "settimeofday", "clock_settime",
    "adjtimex", "clock_adjtime", "sethostname", "setdomainname", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "personality", "lookup_dcookie",
    "vhangup", "move_pages", "migrate_pages", "mbind",
    # x86 only: port I/O, segment descriptors, a.out libraries
    "iopl", "ioperm", "modify_ldt", "uselib",
)

# (audit arch, x32 bit applies, syscall numbers); checked against the
# kernel's unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64).
_ARCHES = {
    "x86_64": (0xC000003E, True, {
        "ioctl": 16, "socket": 41, "clone": 56, "ptrace": 101, "syslog": 103,
        "uselib": 134, "personality": 135, "vhangup": 153, "modify_ldt": 154,
        "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163,
        "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
        "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
        "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "lookup_dcookie": 212, "clock_settime": 227, "mbind": 237, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "migrate_pages": 256,
        "unshare": 272, "move_pages": 279, "perf_event_open": 298, "fanotify_init": 300,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305,
        "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
        "process_madvise": 440, "mount_setattr": 442,
    }),
    "aarch64": (0xC00000B7, False, {
        "lookup_dcookie": 18, "ioctl": 29, "umount2": 39, "mount": 40, "pivot_root": 41,
        "chroot": 51, "vhangup": 58, "quotactl": 60, "acct": 89, "personality": 92,
        "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "clock_settime": 112, "syslog": 116, "ptrace": 117, "reboot": 142,
        "sethostname": 161, "setdomainname": 162, "settimeofday": 170, "adjtimex": 171,
        "socket": 198, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220,
        "swapon": 224, "swapoff": 225, "mbind": 235, "migrate_pages": 238,
        "move_pages": 239, "perf_event_open": 241, "fanotify_init": 262,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "clock_adjtime": 266,
        "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
        "process_madvise": 440, "mount_setattr": 442,
    }),
}


def _ins(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def _build(arch, x32, nrs):
    errno = lambda e: _ins(_RET, _ERRNO | e)  # noqa: E731
    head = [_ins(_LD_ABS, _ARCH), _ins(_JEQ, arch, 1, 0), _ins(_RET, _KILL_PROCESS),
            _ins(_LD_ABS, _NR)]
    if x32:
        head += [_ins(_JGE, _X32_BIT, 0, 1), _ins(_RET, _KILL_PROCESS)]
    # Syscalls judged by an argument: each block either returns or, when the
    # number does not match, jumps over itself with the number still loaded.
    blocks = [
        [_ins(_JEQ, nrs["socket"], 0, 4), _ins(_LD_ABS, _ARG_LO(0)),
         _ins(_JEQ, _AF_UNIX, 0, 1), _ins(_RET, _ALLOW), errno(_EAFNOSUPPORT)],
        [_ins(_JEQ, nrs["clone"], 0, 4), _ins(_LD_ABS, _ARG_LO(0)),
         _ins(_JSET, _CLONE_NEW_FLAGS, 0, 1), errno(_EPERM), _ins(_RET, _ALLOW)],
        [_ins(_JEQ, nrs["ioctl"], 0, 5), _ins(_LD_ABS, _ARG_LO(1)),
         _ins(_JEQ, _TIOCSTI, 2, 0), _ins(_JEQ, _TIOCLINUX, 1, 0), _ins(_RET, _ALLOW),
         errno(_EPERM)],
        [_ins(_JEQ, nrs["clone3"], 0, 1), errno(_ENOSYS)],
    ]
    denied = sorted({nrs[name] for name in _DENIED if name in nrs})
    # Each denied number jumps forward to the shared EPERM return at the end.
    tail = [_ins(_JEQ, nr, len(denied) - i, 0) for i, nr in enumerate(denied)]
    tail += [_ins(_RET, _ALLOW), errno(_EPERM)]
    prog = head + [ins for block in blocks for ins in block] + tail
    assert len(denied) < 255 and len(prog) < 4096
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


@functools.lru_cache(maxsize=None)
def program(machine=None):
    """The filter for `machine` (default: this one), or None when unknown."""
    spec = _ARCHES.get(machine or os.uname().machine)
    return None if spec is None else _build(*spec)


def syscall_numbers(machine=None):
    """{name: number} of the syscalls the filter refers to (for tests)."""
    spec = _ARCHES.get(machine or os.uname().machine)
    return {} if spec is None else dict(spec[2])
