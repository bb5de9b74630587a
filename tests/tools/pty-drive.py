#!/usr/bin/env python3
"""Drives a command on a fresh pseudo-terminal as a person at a terminal would, for the
tests of `hk run -t`: it waits for text, types, resizes the window, and prints everything
the command wrote. Exits with the command's status (128 + N for a signal).

    pty-drive.py ROWS COLS STEP... -- CMD [ARGS...]

Steps, in order: expect:TEXT (wait up to 120 s for TEXT in the output so far), send:TEXT
(\\n and \\x03 escapes allowed), resize:ROWS:COLS (TIOCSWINSZ on the terminal, which sends
SIGWINCH to its foreground process group), sleep:SECONDS.
"""
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main():
    args = sys.argv[1:]
    split = args.index("--")
    (rows, cols), steps, cmd = args[:2], args[2:split], args[split + 1:]
    pid, master = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    set_size(master, int(rows), int(cols))
    seen = b""

    def pump(timeout):
        nonlocal seen
        ready, _, _ = select.select([master], [], [], timeout)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                return False
            if not data:
                return False
            seen += data
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return True

    for step in steps:
        kind, _, arg = step.partition(":")
        if kind == "expect":
            deadline = time.time() + 120
            while arg.encode() not in seen:
                if time.time() > deadline or not pump(1):
                    print(f"\npty-drive: never saw {arg!r}", file=sys.stderr)
                    os.kill(pid, 9)
                    sys.exit(99)
        elif kind == "send":
            os.write(master, arg.encode().decode("unicode_escape").encode("latin-1"))
        elif kind == "resize":
            r, c = arg.split(":")
            set_size(master, int(r), int(c))
        elif kind == "sleep":
            end = time.time() + float(arg)
            while time.time() < end:
                pump(0.05)
    while pump(1):
        pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
    sys.exit(os.WEXITSTATUS(status))


main()
