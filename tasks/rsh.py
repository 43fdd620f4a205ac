"""rsync's remote shell (-e) in a Cutover upload: hands rsync's pipes to the Cutover process that
started rsync, which runs the remote command on a channel of its own SSH connection (tasks/bridge.py).

    rsh.py SOCKET [-l USER] HOST COMMAND...

Standard library only, started with `python3 -I -S`: it must start in milliseconds.
"""

import json
import os
import socket
import sys


def main(argv):
    path, words = argv[0], argv[1:]
    if words[:1] == ["-l"]:
        words = words[2:]  # the user is the connection's own
    command = words[1:]  # after the host name rsync adds
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
