"""rsync's remote shell (-e) in a Cutover upload: hands rsync's pipes to the Cutover process that
started rsync, which runs the remote command on a channel of its own SSH connection (tasks/bridge.py).

    rsh.py SOCKET HOST COMMAND...   (HOST is the placeholder of rsync's destination, never used)

Standard library only, started with `python3 -I -S`: it must start in milliseconds.
"""

import json
import os
import socket
import sys


def main(argv):
    path, command = argv[0], argv[2:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socket.send_fds(s, [json.dumps(command).encode()], [0, 1, 2])
    # the Cutover process holds the pipes now: rsync must see them close when it closes them
    os.close(0)
    os.close(1)
    status = s.recv(1)
    return status[0] if status else 255


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
