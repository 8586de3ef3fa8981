"""One command session per SSH host: a small server on the host runs every command.

sshd runs each exec request through the login user's shell, and a shell started by
sshd reads ~/.bashrc (about 125 ms with pyenv on this machine's root). So an SshHost
opens ONE session, whose shell at once becomes this server (`exec python3 -c ...`),
and sends it each command as a JSON line: argv, input, timeout. The server runs
it without a shell (in a session of its own, killed as a group on timeout) and
answers with its exit code and output; requests run concurrently and answers
carry the request's id. Lines that are not answers (a noisy rc file) are ignored.
"""

from __future__ import annotations

import base64
import itertools
import json
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import paramiko

SERVER = r"""
import base64, json, os, signal, subprocess, sys, threading
out = sys.stdout.buffer
lock = threading.Lock()
def reply(m):
    b = b"\n\x1etb " + json.dumps(m).encode() + b"\n"
    with lock:
        out.write(b)
        out.flush()
def b64(b):
    return base64.b64encode(b).decode()
def serve(r):
    ans = {"id": r["id"], "timeout": False}
    data = base64.b64decode(r["input"]) if r.get("input") is not None else b""
    try:
        p = subprocess.Popen(r["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd="/", start_new_session=True)
    except OSError as e:
        ans.update(rc=127, out="", err=b64(f"{r['argv'][0]}: {e.strerror}: not found\n".encode()))
        return reply(ans)
    try:
        o, e = p.communicate(data, timeout=r.get("timeout"))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        o, e = p.communicate()
        ans["timeout"] = True
    ans.update(rc=p.returncode, out=b64(o), err=b64(e))
    reply(ans)
reply({"id": 0, "rc": 0, "out": "", "err": "", "timeout": False})
for line in sys.stdin.buffer:
    if line.strip():
        threading.Thread(target=serve, args=(json.loads(line),), daemon=True).start()
"""

MARK = b"\x1etb "


class SessionLost(Exception):
    """The command session ended (connection lost, or the server could not start)."""


class CommandTimeout(Exception):
    """The command ran past its timeout (the server killed it)."""


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict | None = None


class ExecSession:
    """The client half: one channel, many concurrent commands."""

    def __init__(self, transport: paramiko.Transport, python: str, timeout: float) -> None:
        self._chan = transport.open_session(timeout=timeout)
        self._chan.exec_command(f"exec {shlex.quote(python)} -u -c {shlex.quote(SERVER)}")
        self._pending: dict[int, _Pending] = {0: _Pending()}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send = threading.Lock()
        self._dead: str | None = None
        self._err = bytearray()
        threading.Thread(target=self._read, daemon=True, name="ssh-exec").start()
        if not self._pending[0].done.wait(timeout) or self._dead:
            self.close()
            why = self._dead or f"no answer in {timeout:g} s"
            raise SessionLost(f"the command server did not start ({python}): {why}")

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._chan.closed

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self._chan.recv(65536)
                while self._chan.recv_stderr_ready():
                    self._err = (self._err + self._chan.recv_stderr(65536))[-2000:]
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.startswith(MARK):
                        self._answer(json.loads(line[len(MARK) :]))
        except (OSError, ValueError, paramiko.SSHException) as e:
            self._dead = f"{type(e).__name__}: {e}"
        if self._dead is None:
            tail = self._err.decode(errors="replace").strip().splitlines()[-1:]
            self._dead = "the session closed" + (f" ({tail[0]})" if tail else "")
        with self._lock:
            for p in self._pending.values():
                p.done.set()

    def _answer(self, msg: dict) -> None:
        with self._lock:
            p = self._pending.get(int(msg["id"]))
        if p is not None:
            p.answer = msg
            p.done.set()

    def call(
        self, argv: Sequence[str], data: bytes | None, timeout: float | None
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` there; (exit code, stdout, stderr). CommandTimeout, SessionLost."""
        req: dict = {"argv": list(argv), "timeout": timeout}
        if data is not None:
            req["input"] = base64.b64encode(data).decode()
        p = _Pending()
        with self._lock:
            if self._dead:
                raise SessionLost(self._dead)
            req["id"] = next(self._ids)
            self._pending[req["id"]] = p
        try:
            line = json.dumps(req).encode() + b"\n"
            with self._send:
                self._chan.sendall(line)
            # the server enforces the timeout; this bound is for a host that stopped answering
            p.done.wait(None if timeout is None else timeout + 30)
        except (OSError, paramiko.SSHException) as e:
            raise SessionLost(f"{type(e).__name__}: {e}") from None
        finally:
            with self._lock:
                self._pending.pop(req["id"], None)
        if p.answer is None:
            raise SessionLost(self._dead or "no answer")
        if p.answer["timeout"]:
            raise CommandTimeout
        out, err = (base64.b64decode(p.answer[k]) for k in ("out", "err"))
        return int(p.answer["rc"]), out, err

    def close(self) -> None:
        self._chan.close()
