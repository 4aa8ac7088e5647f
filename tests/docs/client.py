"""`gpt2` for the docs' shell examples: hands argv, cwd, environment and stdio to tests/docs/zygote.py.

    GPT2_DOCS_ZYGOTE=SOCKET python -S tests/docs/client.py model info gpt2    # what the `gpt2` shim runs

Standard library only (it starts with -S, in milliseconds); exits with the command's own status.
"""

import json
import os
import socket
import sys


def main() -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["GPT2_DOCS_ZYGOTE"])
    request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reply = b""
    while chunk := conn.recv(64):
        reply += chunk
    return int(reply or b"1")


if __name__ == "__main__":
    sys.exit(main())
