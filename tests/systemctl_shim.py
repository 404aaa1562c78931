"""docker-systemctl-replacement's systemctl3, minus one wait real systemd does not have.

    python tests/systemctl_shim.py --root=DIR start cqt.target

After READY=1 on the notify socket, systemctl3 keeps waiting (at least 3 s, restarted by
every STATUS= change) for a MAINPID= message, which a service only needs to send when the
manager did not fork the main process itself. Ours is the forked process (bin/* are sh
scripts that exec python: NotifyAccess=main, same PID), so READY=1 is the whole answer,
as it is for systemd. Without this, starting cqt.target under systemctl3 takes ~15 s per
unit instead of ~3 s. Everything else is systemctl3 unchanged.
"""
from __future__ import annotations

import sys

from systemctl2 import systemctl3

_wait = systemctl3.Systemctl.wait_notify_socket


def _wait_ready_only(self, notify, timeout, pid=None, pid_file=None):
    # systemctl3 skips its MAINPID= wait when the unit has a PID file; the forked PID is known.
    return _wait(self, notify, timeout, pid, pid_file or "forked-main-pid")


systemctl3.Systemctl.wait_notify_socket = _wait_ready_only

if __name__ == "__main__":
    sys.argv[0] = "systemctl3.py"
    sys.exit(systemctl3.main())
