"""rsync's remote command during a deploy: wait for the incoming release dir, then become rsync.

    python3 -I -S -c SOURCE INCOMING_DIR DEADLINE_S rsync --server ...

The upload starts together with the lock step, so rsync's own SSH connection and login shell
cost nothing on top of it; this waits until the lock step has created (and prelinked) the
incoming dir, which it renames into place when done. It gives up when the SSH session goes
away (the local deploy stopped, e.g. because the lock is held) or after DEADLINE_S seconds.
Standard library only.
"""

import os
import select
import sys
import time


def main(argv):
    incoming, deadline, command = argv[1], time.monotonic() + float(argv[2]), argv[3:]
    if not command or command[0] != "rsync":
        sys.stderr.write("cutover: when_ready runs rsync only\n")
        return 2
    poll = select.poll()
    poll.register(0, 0)  # no events asked for: poll reports only a hang-up or an error
    while not os.path.isdir(incoming):
        if poll.poll(2):
            return 1  # the client end closed: the deploy stopped before its lock step was done
        if time.monotonic() > deadline:
            sys.stderr.write("cutover: %s did not appear within %s s\n" % (incoming, argv[2]))
            return 1
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
