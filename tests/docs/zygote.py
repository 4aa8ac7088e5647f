"""A pre-warmed `gpt2` for the docs' shell examples: one process that has imported torch and gpt2 forks a
child per `gpt2 ...` command, so seventy commands do not pay seventy torch imports (~3 s each on 2 cores).

    python tests/docs/zygote.py SOCKET    # serve; tests/docs/test_doc_examples.py starts and stops it

The shell examples still run in bash, as written: the `gpt2` they find first on PATH is `client.py`, which
hands this server its argv, working directory, environment and its stdin/stdout/stderr file descriptors
(SCM_RIGHTS); the forked child makes them its own and runs `gpt2.cli.main(argv)`, what the console script
runs, then exits with its status. The server never runs a torch op itself, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the command and run it; never returns."""
    code = 1
    try:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["gpt2", *request["argv"]]
        from gpt2.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as e:  # argparse's --help and usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def serve(path: str) -> None:
    import importlib

    import torch  # noqa: F401  (what every command imports: paid once, here)

    # What the verbs import lazily, paid once here too (matplotlib draws loss.png, TensorBoard logs
    # every run); each child then starts in milliseconds.
    for name in ("gpt2.cli", "gpt2.load", "gpt2.train", "gpt2.train.loop", "gpt2.finetune.commands",
                 "gpt2.eval.commands", "gpt2.generate.commands", "gpt2.model.lora", "gpt2.tokenizer",
                 "gpt2.data.prepare", "matplotlib.pyplot", "torch.utils.tensorboard", "safetensors.torch"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # child pid → the client connection that waits for its status
    while True:
        ready, _, _ = select.select([server], [], [], 0.05)
        if ready:
            conn, _ = server.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(msg)
            if request.get("stop"):
                return
            pid = os.fork()
            if pid == 0:
                server.close()
                _child(conn, fds, request)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())  # the client forwards signals to it (`kill $server` in an example)
            waiting[pid] = conn
        while waiting:  # reap every finished child and tell its client the exit status
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
