"""Python commands for the tests -- ``python -m ckptfix ...``, ``python script.py ...``, ``python -c CODE`` -- each
a process of its own, forked from a warm interpreter.

TensorFlow's import takes 5-7 s here, more than most commands the tests run. A server process (this file,
``serve``) imports TensorFlow and ckptfix's CLI module once, in the environment a command would have at that
import (for ``-m ckptfix``, the CLI's defaults applied); each command is then a child forked from it, which sets
its own working folder, environment, ``sys.argv``, ``sys.path`` (``PYTHONPATH``), limits, umask and file
descriptors 0-2, and runs the module, script or code as the interpreter would (``runpy`` / ``exec``): its own
process, exit code, stdout and stderr, signals and files, as a fresh interpreter's, ~0.1 s after the request.
Requests are numbered (a pid is reused once its process is reaped); the server runs one thread (a lock another
thread held at a fork would stay locked in the child).

What a fork cannot reproduce runs in a fresh interpreter instead, automatically: ckptfix's ``-v`` (its
TensorFlow logs start at import); an environment whose import-time variables (TensorFlow's log level, kernels,
allocator, Keras flavour, visible devices) differ from a server's -- a server is kept per set of those; and a
``PYTHONPATH`` that shadows a module the server imported (the child execs the interpreter in its place). Tests
about a process's start itself (TensorFlow's import noise, the variables the CLI sets before it, a TF1-style
process, the console script) use ``subprocess`` directly. ``CKPTFIX_TEST_FRESH=1`` runs every command in a fresh
interpreter.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: read when TensorFlow (or Keras) is imported: a child forked after that import cannot change them
IMPORT_TIME = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC",
               "TF_USE_LEGACY_KERAS", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
               "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "PYTHONHASHSEED", "PYTHONWARNINGS")
#: set by ckptfix's ``main()`` when unset, before TensorFlow's import (``ckptfix/cli/app.py``)
CLI_DEFAULTS = {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _import_key(env: dict, cli: bool) -> tuple:
    """The import-time variables a command's process would have when TensorFlow is imported (for ckptfix's CLI,
    its defaults applied); ``PYTHONPATH`` is not among them (the child sets ``sys.path``)."""
    values = {**(CLI_DEFAULTS if cli else {}), **{name: env[name] for name in IMPORT_TIME if name in env}}
    return tuple(sorted(values.items()))


class Forked:
    """A command's process, like :class:`subprocess.Popen` with ``text=True`` and both outputs captured."""

    def __init__(self, args: list[str], pid: int, server: _Server | None, files: list[Path],
                 popen: subprocess.Popen | None = None, request: int | None = None) -> None:
        self.args, self.pid, self._server, self._files, self._popen = args, pid, server, files, popen
        self._request = request
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._popen.poll() if self._popen else self._server.code(self._request)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._popen:
            self.returncode = self._popen.wait(timeout)
        else:
            code = self._server.code(self._request, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = code
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def peek(self) -> tuple[str, str]:
        """Both outputs as written so far (the process may still run)."""
        return tuple(path.read_text(errors="backslashreplace") for path in self._files[1:])

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait (``subprocess.TimeoutExpired`` after ``timeout``, the process left running, as Popen does), then
        both outputs."""
        self.wait(timeout)
        out, err = self.peek()
        for path in self._files:
            path.unlink(missing_ok=True)
        return out, err


def start(command, *, env: dict | None = None, cwd=None, input: str | None = None, limits: dict | None = None,
          umask: int | None = None) -> Forked:
    """``subprocess.Popen(command, ...)`` for ``command = [sys.executable, "-m", MODULE | "-c", CODE | SCRIPT, *args]``,
    forked from a warm server or in a fresh interpreter (module docstring); ``limits`` maps ``resource.RLIMIT_*``
    to the (soft, hard) pair the process starts with (its SIGXFSZ ignored, so writes past a size limit fail),
    ``umask`` is the process's (else this one's)."""
    command = [str(part) for part in command]
    if command[0] != sys.executable:
        raise ValueError(f"a forked command runs this interpreter ({sys.executable}), not {command[0]}")
    env = dict(os.environ if env is None else env)
    cwd = str(cwd or os.getcwd())
    handle, stdin = tempfile.mkstemp(prefix="forked-in-")
    os.write(handle, (input or "").encode())
    os.close(handle)
    files = [Path(stdin)] + [Path(tempfile.mkstemp(prefix=f"forked-{name}-")[1]) for name in ("out", "err")]
    verbose = command[1:3] == ["-m", "ckptfix"] and {"-v", "--verbose"} & set(command[3:])
    if verbose or os.environ.get("CKPTFIX_TEST_FRESH") == "1":
        streams = [open(path, "r" if k == 0 else "w") for k, path in enumerate(files)]
        with streams[0], streams[1], streams[2]:
            popen = subprocess.Popen(command, env=env, cwd=cwd, stdin=streams[0], stdout=streams[1],
                                     stderr=streams[2], preexec_fn=lambda: _limit(limits or {}, umask))
        return Forked(command, popen.pid, None, files, popen)
    server = _Server.for_env(env, cli=command[1:3] == ["-m", "ckptfix"])
    request, pid = server.fork(dict(argv=command[1:], cwd=cwd, env=env, files=[str(path) for path in files],
                                    limits={str(k): v for k, v in (limits or {}).items()},
                                    umask=os.umask(os.umask(0)) if umask is None else umask))
    return Forked(command, pid, server, files, request=request)


def run(command, *, env: dict | None = None, cwd=None, input: str | None = None, limits: dict | None = None,
        umask: int | None = None, timeout: float | None = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, ...)`` (see :func:`start`): killed and
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    process = start(command, env=env, cwd=cwd, input=input, limits=limits, umask=umask)
    try:
        out, err = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _limit(limits: dict, umask: int | None) -> None:
    import resource

    if limits:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for name, pair in limits.items():
        resource.setrlimit(int(name), tuple(pair))
    if umask is not None:
        os.umask(umask)


class _Server:
    """The client's end of one server (one per set of import-time variables)."""

    _running: dict[tuple, _Server] = {}
    _starting = threading.Lock()

    @classmethod
    def for_env(cls, env: dict, cli: bool) -> _Server:
        key = _import_key(env, cli)
        with cls._starting:
            if key not in cls._running or cls._running[key].process.poll() is not None:
                cls._running[key] = cls({**env, **dict(key)})
            return cls._running[key]

    def __init__(self, env: dict) -> None:
        # the server's own stderr (TensorFlow's import-time lines) is kept out of the test run's output
        self._log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, __file__, "serve"], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._lock = threading.Condition()
        self._requests = 0
        self._pids: dict[int, int] = {}  # by request number (a pid is reused once its process is reaped)
        self._codes: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()
        atexit.register(self.close)

    def _read(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self._lock:
                if "code" in reply:
                    self._codes[reply["id"]] = reply["code"]
                else:
                    self._pids[reply["id"]] = reply["pid"]
                self._lock.notify_all()
        with self._lock:  # the server is gone: its children's codes will never come
            self._lock.notify_all()

    def fork(self, request: dict) -> tuple[int, int]:
        """The request's number and its process's pid, once forked."""
        with self._lock:
            self._requests += 1
            number = self._requests
            self.process.stdin.write(json.dumps({**request, "id": number}) + "\n")
            self.process.stdin.flush()
            if not self._lock.wait_for(lambda: number in self._pids or self.process.poll() is not None, 300):
                raise RuntimeError("the forked-process server did not answer within 300 s")
            if number not in self._pids:
                raise RuntimeError(f"the forked-process server exited ({self.process.returncode}): {self._tail()}")
            return number, self._pids[number]

    def code(self, number: int, timeout: float | None = 0) -> int | None:
        """Request ``number``'s exit code (a negative signal number), None while it runs after ``timeout``."""
        with self._lock:
            self._lock.wait_for(lambda: number in self._codes or self.process.poll() is not None, timeout)
            if number not in self._codes and self.process.poll() is not None:
                raise RuntimeError(f"the forked-process server exited ({self.process.returncode}) before request "
                                   f"{number} ended: {self._tail()}")
            return self._codes.get(number)

    def _tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---- the server -----------------------------------------------------------------------------------------------


def _serve() -> None:
    """Import what ``python -m ckptfix`` imports, then fork a child per request line (JSON) on stdin; reply on
    stdout with ``{"id", "pid"}`` when forked and ``{"id", "code"}`` when it has exited (``id``: the request's).

    One thread only: a lock another thread held at a fork would stay locked in the child for ever.
    """
    sys.path[0] = os.getcwd()  # as under ``python -m`` (not this file's folder, which holds tests/keras)
    import tensorflow  # noqa: F401  (the import every command would pay)

    import ckptfix.cli.app  # noqa: F401

    # Ctrl-C raises KeyboardInterrupt, as in a process started from a terminal, even when the suite itself runs
    # with SIGINT ignored (started in the background: nohup, &)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def reply(**message) -> None:
        os.write(1, (json.dumps(message) + "\n").encode())

    pending, running, open_ = b"", {}, True  # running: pid -> request number
    while open_ or running:
        ready, _, _ = select.select([0] if open_ else [], [], [], 0.01 if running else None)
        if ready:
            chunk = os.read(0, 1 << 16)
            open_ = bool(chunk)
            pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)  # does not return
            running[pid] = request["id"]
            reply(id=request["id"], pid=pid)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            reply(id=running.pop(pid), code=os.waitstatus_to_exitcode(status))


def _shadowed(entries: list[str]) -> set[str]:
    """Top-level modules already imported that a folder in ``entries`` also holds (first on the path there)."""
    names = set()
    for entry in entries:
        if os.path.isdir(entry):
            names |= {name.removesuffix(".py") for name in os.listdir(entry)}
    return names & {module.partition(".")[0] for module in sys.modules}


def _child(request: dict) -> None:
    """Become ``python *argv`` in the request's folder, environment, files and limits; exits the process."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    if argv[:2] == ["-m", "ckptfix"]:
        for name, value in CLI_DEFAULTS.items():
            os.environ.setdefault(name, value)
    _limit(request["limits"], request["umask"])
    stdin, stdout, stderr = request["files"]
    for fd, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_TRUNC),
                            (2, stderr, os.O_WRONLY | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin.close()
    sys.stdin = open(0, "r", closefd=False)
    # sys.path[0] as the interpreter sets it: the working folder (-m), "" (-c), the script's folder; then PYTHONPATH
    first = {"-m": request["cwd"], "-c": ""}.get(argv[0], os.path.dirname(os.path.abspath(argv[0])))
    entries = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    added = [entry for entry in entries if entry not in sys.path]
    if _shadowed(added):  # a module the server imported would be another one here: become a fresh interpreter
        os.execv(sys.executable, [sys.executable, *argv])
    sys.path[0] = first
    sys.path[1:1] = added
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    except BaseException as uncaught:  # what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
        if isinstance(uncaught, KeyboardInterrupt):  # Python ends such a process by SIGINT itself
            code = None
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if code is None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
