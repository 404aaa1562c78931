"""Run a command under a seccomp filter equivalent to systemd's `MemoryDenyWriteExecute=yes`.

    python tests/mdwe_exec.py PROGRAM [ARGS...]

systemd implements MemoryDenyWriteExecute= as a seccomp filter (src/shared/seccomp-util.c,
seccomp_memory_deny_write_execute): mmap() with PROT_WRITE|PROT_EXEC, mprotect()/pkey_mprotect()
adding PROT_EXEC, and shmat() with SHM_EXEC fail with EPERM. This installs the same rules
(x86-64 only) and execs PROGRAM, so a test can prove that our dependencies work with it
without a real systemd. The filter survives execve and cannot be removed.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO_EPERM = 0x00050000 | 1
AUDIT_ARCH_X86_64 = 0xC000003E
NR_MMAP, NR_MPROTECT, NR_SHMAT, NR_PKEY_MPROTECT = 9, 10, 30, 329
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
# classic BPF opcodes
LD_W_ABS, JEQ_K, AND_K, RET_K = 0x20, 0x15, 0x54, 0x06
OFF_NR, OFF_ARCH, OFF_ARG2 = 0, 4, 32          # struct seccomp_data; args[2], low 32 bits (LE)


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> list[bytes]:
    deny = 21
    return [
        _ins(LD_W_ABS, 0, 0, OFF_ARCH),                           # 0
        _ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),                     # 1
        _ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),                     # 2  (other ABI: not ours to judge)
        _ins(LD_W_ABS, 0, 0, OFF_NR),                             # 3
        _ins(JEQ_K, 9 - 5, 0, NR_MMAP),                           # 4 -> 9
        _ins(JEQ_K, 13 - 6, 0, NR_MPROTECT),                      # 5 -> 13
        _ins(JEQ_K, 13 - 7, 0, NR_PKEY_MPROTECT),                 # 6 -> 13
        _ins(JEQ_K, 17 - 8, 0, NR_SHMAT),                         # 7 -> 17
        _ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),                     # 8
        _ins(LD_W_ABS, 0, 0, OFF_ARG2),                           # 9  mmap: prot
        _ins(AND_K, 0, 0, PROT_WRITE | PROT_EXEC),                # 10
        _ins(JEQ_K, deny - 12, 0, PROT_WRITE | PROT_EXEC),        # 11 -> deny
        _ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),                     # 12
        _ins(LD_W_ABS, 0, 0, OFF_ARG2),                           # 13 mprotect: prot
        _ins(AND_K, 0, 0, PROT_EXEC),                             # 14
        _ins(JEQ_K, deny - 16, 0, PROT_EXEC),                     # 15 -> deny
        _ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),                     # 16
        _ins(LD_W_ABS, 0, 0, OFF_ARG2),                           # 17 shmat: shmflg
        _ins(AND_K, 0, 0, SHM_EXEC),                              # 18
        _ins(JEQ_K, deny - 20, 0, SHM_EXEC),                      # 19 -> deny
        _ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),                     # 20
        _ins(RET_K, 0, 0, SECCOMP_RET_ERRNO_EPERM),               # 21 deny
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def install_filter() -> None:
    prog = program()
    buf = ctypes.create_string_buffer(b"".join(prog))
    fprog = _SockFprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if not supported():
        print("mdwe_exec: x86-64 Linux only", file=sys.stderr)
        sys.exit(3)
    install_filter()
    os.execvp(sys.argv[1], sys.argv[1:])
