"""The seccomp filter, run on a small classic-BPF interpreter for both
architectures it knows (aarch64 cannot be tried live here), and its syscall
numbers checked against the kernel headers where they are installed."""

import pathlib
import re
import struct

import pytest

from mm_rlhf_jax.rewards.sandbox import seccomp

KILL, ALLOW = 0x80000000, 0x7FFF0000
ERRNO = lambda e: 0x00050000 | e  # noqa: E731
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Ordinary syscalls a program needs (read, write, openat, mmap, futex, wait4,
# execve, kill, exit_group), per architecture.
ORDINARY = {"x86_64": (0, 1, 257, 9, 202, 61, 59, 62, 231),
            "aarch64": (63, 64, 56, 222, 98, 260, 221, 129, 94)}


def run_filter(prog, nr, arch, args=(0,) * 6):
    """The filter's return value for one syscall (struct seccomp_data)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in args])
    ins = [struct.unpack_from("=HBBI", prog, 8 * i) for i in range(len(prog) // 8)]
    pc, acc = 0, 0
    for _ in range(len(ins) + 1):  # forward jumps only: bounded
        code, jt, jf, k = ins[pc]
        if code == 0x20:    # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x06:  # ret k
            return k
        elif code in (0x15, 0x35, 0x45):  # jeq / jge / jset k
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")
    raise AssertionError("filter did not return")


@pytest.fixture(params=sorted(ARCH))
def machine(request):
    return request.param


def test_program_shape(machine):
    prog = seccomp.program(machine)
    assert len(prog) % 8 == 0 and 0 < len(prog) // 8 < 4096
    assert seccomp.program("sparc64") is None


def test_foreign_abi_kills(machine):
    prog, nrs = seccomp.program(machine), seccomp.syscall_numbers(machine)
    other = ARCH["aarch64" if machine == "x86_64" else "x86_64"]
    assert run_filter(prog, 0, other) == KILL
    assert run_filter(prog, 0, 0x40000003) == KILL  # i386
    if machine == "x86_64":  # x32: the same numbers with bit 30 set
        assert run_filter(prog, nrs["ptrace"] | 0x40000000, ARCH[machine]) == KILL
        assert run_filter(prog, 1 | 0x40000000, ARCH[machine]) == KILL


def test_ordinary_syscalls_allowed(machine):
    prog = seccomp.program(machine)
    for nr in ORDINARY[machine]:
        assert run_filter(prog, nr, ARCH[machine]) == ALLOW, nr


def test_denied_syscalls(machine):
    prog, nrs = seccomp.program(machine), seccomp.syscall_numbers(machine)
    denied = [name for name in seccomp._DENIED if name in nrs]
    assert {"ptrace", "unshare", "setns", "mount", "bpf", "process_vm_readv"} <= set(denied)
    for name in denied:
        assert run_filter(prog, nrs[name], ARCH[machine]) == ERRNO(EPERM), name
    assert run_filter(prog, nrs["clone3"], ARCH[machine]) == ERRNO(ENOSYS)


def test_argument_checks(machine):
    prog, nrs, arch = seccomp.program(machine), seccomp.syscall_numbers(machine), ARCH[machine]
    socket = lambda family: run_filter(prog, nrs["socket"], arch, (family, 1, 0, 0, 0, 0))  # noqa: E731
    assert socket(1) == ALLOW  # AF_UNIX
    for family in (2, 10, 16, 17):  # AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
        assert socket(family) == ERRNO(EAFNOSUPPORT), family
    clone = lambda flags: run_filter(prog, nrs["clone"], arch, (flags, 0, 0, 0, 0, 0))  # noqa: E731
    assert clone(0x01200011) == ALLOW  # what fork() passes: CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
    assert clone(0x003D0F00) == ALLOW  # what pthread_create passes
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                 0x40000000):  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
        assert clone(0x11 | flag) == ERRNO(EPERM), hex(flag)
    ioctl = lambda request: run_filter(prog, nrs["ioctl"], arch, (0, request, 0, 0, 0, 0))  # noqa: E731
    assert ioctl(0x5412) == ERRNO(EPERM) and ioctl(0x541C) == ERRNO(EPERM)  # TIOCSTI, TIOCLINUX
    assert ioctl(0x541B) == ALLOW  # FIONREAD


HEADERS = {"x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
                      r"#define __NR_(\w+)\s+(\d+)"),
           "aarch64": ("/usr/include/asm-generic/unistd.h",
                       r"#define __NR(?:3264)?_(\w+)\s+(\d+)")}


def test_numbers_match_kernel_headers(machine):
    path, pattern = HEADERS[machine]
    if not pathlib.Path(path).exists():
        pytest.skip(f"{path} not installed")
    table = {m.group(1): int(m.group(2))
             for m in map(re.compile(pattern).match, pathlib.Path(path).read_text().splitlines())
             if m}
    numbers = seccomp.syscall_numbers(machine)
    assert {k: v for k, v in numbers.items() if table.get(k) != v} == {}
