"""The guardian: stops a parent's children when the parent dies, even by SIGKILL.

A parent (`mlcanary up`, the controller) starts each child in its own process group, so that
a stop reaches the child's own children too; but a group in its own session outlives a
SIGKILLed parent, holding its ports. So each parent starts one guardian and keeps the only
write end of a pipe to the guardian's standard input. The parent announces each group it
starts (`+ PID STARTTIME`) and each it has stopped (`- PID`). When the pipe ends, because the
parent exited in whatever way, the guardian stops every group still announced: SIGTERM, then
SIGKILL after a grace period, each only after checking that the group is still the one
announced (`common.supervision.ProcessIdentity`), so a reused pid is never hit.

A parent whose children may be taken over by its successor (the controller: its model servers
keep serving while `up`, systemd or Kubernetes starts it again) asks for a handover: the
guardian then waits that long before stopping anything. A successor that takes the groups over
SIGKILLs the guardian first (it ignores SIGTERM), so nothing it adopted is stopped; with no
successor, the groups are stopped once the handover is over.

Run as `python -m common.guardian GRACE_SECONDS [HANDOVER_SECONDS]`; it imports nothing heavy
(it starts once per parent, beside every `up` and controller).
"""

from __future__ import annotations

import signal
import sys
import time

from common.supervision import ProcessIdentity, stop_groups


def main() -> None:
    """Read announcements until the pipe ends, then stop what is left."""
    # The parent's Ctrl-C must not take the guardian with it: the guardian ends by the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    handover = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    announced: dict[int, ProcessIdentity] = {}
    for line in sys.stdin:
        sign, *fields = line.split()
        if sign == "+" and len(fields) == 2:
            pid, started = int(fields[0]), int(fields[1])
            announced[pid] = ProcessIdentity(pid, started)
        elif sign == "-" and fields:
            announced.pop(int(fields[0]), None)
    if announced and handover > 0:
        time.sleep(handover)
    stop_groups(list(announced.values()), grace)


if __name__ == "__main__":
    main()
