"""`gpt2` for the docs' shell examples: hands argv, cwd, environment and stdio to tests/docs/zygote.py.

    GPT2_DOCS_ZYGOTE=SOCKET python -S tests/docs/client.py model info gpt2    # what the `gpt2` shim runs

Standard library only (it starts with -S, in milliseconds); exits with the command's own status. The
zygote first sends the pid of the child running the command; SIGTERM, SIGINT and SIGHUP sent to this
client go on to that child, so an example that starts `gpt2 serve ... &` and later `kill`s it stops the
server, as it would stop the real command.
"""

import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["GPT2_DOCS_ZYGOTE"])
    request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reply = b""
    while chunk := conn.recv(64):
        reply += chunk
        if b"\n" in reply:
            break
    head, _, reply = reply.partition(b"\n")
    child = int(head or b"0")
    if child:
        for sig in FORWARDED:
            signal.signal(sig, lambda s, _frame: os.kill(child, s))
    while chunk := conn.recv(64):
        reply += chunk
    code = int(reply or b"1")
    if code < 0:  # the command died of a signal: die of it too, so the shell sees what it would have seen
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
