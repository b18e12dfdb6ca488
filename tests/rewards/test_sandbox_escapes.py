"""Escape attempts through /proc, ptrace and the kernel's wider interfaces.

Run without the Python guard (which would report most of them "forbidden"
before the kernel is asked) so that each test shows the kernel layers hold
on their own; every program prints what each attempt got, and the test
checks that no attempt succeeded and that nothing leaked or was left behind.
"""

import functools
import os
import pathlib
import secrets

import pytest

from mm_rlhf_jax.rewards.sandbox import run_python as _run_python


@pytest.fixture
def run_unguarded(backend):
    return functools.partial(_run_python, backend=backend, python_guard=False)


def _attempts(result):
    """{attempt: outcome} from the 'name=outcome' lines a program printed."""
    assert result.status == "passed", result
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


TRY = """
import ctypes, errno, os
def attempt(name, fn):
    try:
        out = fn()
        print(f"{name}=ok {out!r}"[:200])
    except OSError as e:
        print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
"""

PROC_LISTING = TRY + """
pids = [p for p in os.listdir('/proc') if p.isdigit()]
print('count=%d' % len(pids))
for p in pids:
    attempt('cmdline' + p, lambda: open('/proc/%s/cmdline' % p, 'rb').read())
"""


def test_proc_shows_only_the_sandbox(run_unguarded, need_layer, assert_clean):
    need_layer("private_proc")
    result = run_unguarded(PROC_LISTING, "pass")
    got = _attempts(result)
    assert int(got["count"]) <= 4  # bwrap's pid 1, the runner, the program
    cmdlines = [v for k, v in got.items() if k.startswith("cmdline")]
    assert len(cmdlines) == int(got["count"]), got
    # only the sandbox's own processes (bwrap, the runner's interpreter); the
    # test process's own command line (pytest) is nowhere
    assert all(v.startswith("ok") and ("bwrap" in v or "python" in v) for v in cmdlines), got
    assert not any("pytest" in v for v in got.values()), got
    assert_clean(result)


def test_host_files_unreachable_through_proc_links(run_unguarded, need_layer, assert_clean):
    # A world-readable file on the host's /tmp, tried through every /proc
    # link that leads to some process's root or working directory.
    need_layer("private_tmp", "pidns")
    secret = pathlib.Path(f"/tmp/mm_rlhf_secret_{secrets.token_hex(6)}")
    secret.write_text("host secret " + secrets.token_hex(8))
    secret.chmod(0o644)
    try:
        code = TRY + f"""
secret = {str(secret)!r}
attempt('pid1_root', lambda: open('/proc/1/root' + secret).read())
attempt('self_root', lambda: open('/proc/self/root' + secret).read())
attempt('parent_root', lambda: open('/proc/%d/root' % os.getppid() + secret).read())
attempt('host_pid_root', lambda: open('/proc/{os.getpid()}/root' + secret).read())
attempt('cwd_up', lambda: open('/proc/self/cwd/../../..' + secret).read())
"""
        result = run_unguarded(code, "pass")
        got = _attempts(result)
        assert len(got) == 5 and not any(v.startswith("ok") for v in got.values()), got
        assert secret.read_text() not in result.stdout + result.stderr
        assert_clean(result)
    finally:
        secret.unlink()


KERNEL_SETTINGS = TRY + """
for path in ('/proc/sys/vm/overcommit_ratio', '/proc/sys/kernel/hostname'):
    def write_back(path=path):
        value = open(path).read()   # the same value: harmless even if it landed
        with open(path, 'w') as f:
            f.write(value)
    attempt(path, write_back)
"""


def test_kernel_settings_not_writable_through_proc(run_unguarded, need_layer, assert_clean):
    # the program runs unprivileged: a dropped uid, or a user namespace
    need_layer("nproc_enforced")
    result = run_unguarded(KERNEL_SETTINGS, "pass")
    got = _attempts(result)
    assert len(got) == 2, got
    assert all(v in ("EACCES", "EROFS", "EPERM") for v in got.values()), got
    assert_clean(result)


PTRACE = TRY + """
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    if fn(*args) == -1:
        raise OSError(ctypes.get_errno(), 'failed')
PTRACE_ATTACH = 16
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x400000, 8)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
attempt('attach_parent', lambda: call(libc.ptrace, PTRACE_ATTACH, os.getppid(), None, None))
attempt('attach_host', lambda: call(libc.ptrace, PTRACE_ATTACH, {host}, None, None))
attempt('vm_read_parent', lambda: call(libc.process_vm_readv, os.getppid(), ctypes.byref(local), 1,
                                       ctypes.byref(remote), 1, 0))
child = os.fork()
if child == 0:
    import time
    time.sleep(5)
    os._exit(0)
attempt('attach_own_child', lambda: call(libc.ptrace, PTRACE_ATTACH, child, None, None))
"""


def test_ptrace_cannot_reach_other_processes(run_unguarded, assert_clean):
    result = run_unguarded(PTRACE.replace("{host}", str(os.getpid())), "pass")
    got = _attempts(result)
    assert len(got) == 4, got
    outside = {k: v for k, v in got.items() if k != "attach_own_child"}
    assert not any(v.startswith("ok") for v in outside.values()), got
    if "seccomp" in result.layers:  # the filter refuses ptrace before any check
        assert set(got.values()) == {"EPERM"}, got
    assert_clean(result)


NAMESPACES = TRY + """
libc = ctypes.CDLL(None, use_errno=True)
def unshare(flag):
    if libc.unshare(flag) == -1:
        raise OSError(ctypes.get_errno(), 'unshare')
for name, flag in (('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000)):
    attempt(name, lambda flag=flag: unshare(flag))
import socket
for name, family in (('inet6', socket.AF_INET6), ('netlink', socket.AF_NETLINK),
                     ('packet', socket.AF_PACKET)):
    attempt(name, lambda family=family: socket.socket(family, socket.SOCK_RAW))
attempt('unix', lambda: socket.socketpair()[0].close())
"""


def test_seccomp_refuses_namespaces_and_foreign_sockets(run_unguarded, need_layer,
                                                        assert_clean):
    # Without the filter an unprivileged program may create a user namespace
    # and become root over its own mounts and network: attack surface.
    need_layer("seccomp")
    got = _attempts(run_unguarded(NAMESPACES, "pass"))
    assert {k: got[k] for k in ("user", "mount", "net")} == dict.fromkeys(
        ("user", "mount", "net"), "EPERM"), got
    assert {k: got[k] for k in ("inet6", "netlink", "packet")} == dict.fromkeys(
        ("inet6", "netlink", "packet"), "EAFNOSUPPORT"), got
    assert got["unix"].startswith("ok"), got


I386_GETPID = """
import ctypes, mmap
code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax, 20; int 0x80; ret
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(m))
print('pid', ctypes.CFUNCTYPE(ctypes.c_long)(address)())
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 system call ABI on x86_64")
def test_foreign_syscall_abi_kills_the_process(run_unguarded, need_layer, assert_clean):
    # The i386 ABI has other numbers: a filter that only knew x86_64 numbers
    # could be bypassed through it, so any such call kills the process.
    need_layer("seccomp")
    result = run_unguarded(I386_GETPID, "pass")
    assert result.status == "error" and result.returncode == -31, result  # SIGSYS
    assert "pid" not in result.stdout
    assert_clean(result)


def test_ctypes_itself_is_available_unguarded(run_unguarded):
    # The tests above need ctypes inside the sandbox; make a failure to load
    # it show up as itself, not as an escape that "failed".
    result = run_unguarded("import ctypes\nprint(ctypes.CDLL(None).getpid() > 0)", "pass")
    assert result.status == "passed" and result.stdout == "True\n", result
