"""The job server: local jobs fork from one process that has already imported the libraries.

A rule's job on the world or tiny models is mostly start-up: importing torch, diffusers and transformers
takes ~5 s here (diffusers imports ``torch._dynamo`` unconditionally, ~1.2 s of it; see
docs/benchmarks.md), against ~2 s of sampling. So for a local run the Snakefile's ``onstart`` starts one
server per workflow run (``start``); it imports those libraries once and then forks a child per job. A
job's script (``s2s.steps.run``) hands the server its step, its job as JSON (``job_record``), its working
folder, environment and standard streams (the file descriptors themselves, passed over a Unix socket);
the child runs the step exactly as the job would, and the job exits with the child's exit status.

Jobs run in their own process as before (the fallback is silent and always correct) when:
- the config says ``job_server: false``, or Snakemake does not execute locally (a cluster or Slurm
  executor: a job runs where its resources were granted, never in the submitting host's server), or
  ``--use-conda`` gives jobs another Python;
- the job runs inside a Slurm allocation (``SLURM_JOB_ID``), or with another Python executable or another
  copy of the package than the server's, or its job object does not go into JSON.

A job whose process is killed (Snakemake stopping it, SIGKILL included) closes its end of the socket, and
its child exits at once: the child watches that socket in a thread. Nothing is unpickled: the job goes
over as JSON. The server exits when the Snakemake process that started it is gone, or at ``stop``. A
server killed with SIGKILL leaves its socket folder behind; the next server's ``start`` removes it
(``remove_stale_folders``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ENV = "S2S_JOB_SERVER"  # the socket's path, set for the jobs by ``start``
# ``start`` makes each server a folder of its own under the system's temporary folder, named with this
# prefix, with the socket and the server's pid in it: a later ``start`` finds a server's folder that was
# left behind (the server was killed with SIGKILL, so its own clean-up never ran) by that pid.
FOLDER_PREFIX = "s2s-jobs-"
SOCKET_FILE = "socket"
PID_FILE = "server.pid"
REPO = Path(__file__).resolve().parents[1]
# Imported by the server once, before any job: what the steps' modules import at their top or first call.
PRELOAD = (
    "torch",
    "numpy",
    "PIL.Image",
    "safetensors.torch",
    "diffusers",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "transformers",
    "transformers.models.clip.modeling_clip",
    "transformers.models.vit.modeling_vit",
    "peft",
    "accelerate",
    "scipy.stats",
    "pandas",
    "matplotlib.pyplot",
)
_HEADER = struct.Struct("!Q")
_started: dict = {}


# -- the job's side ---------------------------------------------------------------------------------------


def _named(items) -> dict:
    """A Snakemake Namedlist as JSON: its items in order and its names."""
    names = dict(items.items()) if hasattr(items, "items") else {}
    return {"items": list(items), "names": names}


def job_record(smk) -> dict:
    """What a step reads of Snakemake's job object, as JSON-ready data (``JobView`` reads it back)."""
    return {
        "rule": smk.rule,
        "input": _named(smk.input),
        "output": _named(smk.output),
        "log": _named(smk.log),
        "params": _named(smk.params),
        "wildcards": _named(smk.wildcards),
        "threads": smk.threads,
        "resources": {k: v for k, v in smk.resources.items() if not k.startswith("_")},
        "config": smk.config,
        "scriptdir": smk.scriptdir,
    }


def _send_message(sock: socket.socket, message: dict | bytes, fds: list[int] | None = None) -> None:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [_HEADER.pack(len(body))], fds)
    else:
        sock.sendall(_HEADER.pack(len(body)))
    sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_message(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    if with_fds:
        header, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, with_fds)
        header += _recv_exact(sock, _HEADER.size - len(header))
    else:
        header, fds = _recv_exact(sock, _HEADER.size), []
    (size,) = _HEADER.unpack(header)
    return json.loads(_recv_exact(sock, size)), list(fds)


def submit(smk, step: str, process_start: float | None) -> tuple[int, dict | None] | None:
    """Run ``step`` of this job in the server's child and return its exit status and timing record, or
    None where this job must run in its own process (no server, or not one that runs jobs like this
    process would)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get("SLURM_JOB_ID") or not os.path.exists(path):
        return None
    try:
        request = json.dumps(
            {
                "step": step,
                "job": job_record(smk),
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "python": os.path.realpath(sys.executable),
                "repo": str(Path(smk.scriptdir).resolve().parent),
                "process_start": process_start,
            }
        )
    except (TypeError, ValueError):  # a param that is not JSON: run here
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _send_message(sock, request.encode(), fds=[0, 1, 2])
        reply, _ = _recv_message(sock)
    except OSError:
        sock.close()
        return None
    if reply.get("fallback"):
        sock.close()
        return None
    # The step runs now; the connection stays open while it does (its end tells the child to stop).
    try:
        final, _ = _recv_message(sock)
    except (OSError, ConnectionError):
        return 1, None  # the child died without a status: its traceback, if any, is in the job's log
    return int(final["exit"]), final["record"]


# -- the server's side ------------------------------------------------------------------------------------


class NamedItems(list):
    """Snakemake's Namedlist as a step reads it: items by position and by name."""

    def __init__(self, record: dict) -> None:
        super().__init__(record["items"])
        self._names = dict(record["names"])

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return self._names[key] if isinstance(key, str) else super().__getitem__(key)

    def get(self, name: str, default=None):
        return self._names.get(name, default)

    def keys(self):
        return self._names.keys()

    def items(self):
        return self._names.items()


class JobView:
    """The job object a step gets in the server's child, read from ``job_record``'s JSON."""

    def __init__(self, record: dict) -> None:
        self.rule = record["rule"]
        for key in ("input", "output", "log", "params", "wildcards"):
            setattr(self, key, NamedItems(record[key]))
        self.threads = record["threads"]
        self.resources = dict(record["resources"])
        self.config = record["config"]
        self.scriptdir = record["scriptdir"]


def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the job (folder, environment, streams), run its step, report."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def watch() -> None:  # the job's process ended (killed): so does its child
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os._exit(143)

    threading.Thread(target=watch, daemon=True).start()
    _send_message(conn, {"fallback": False})
    from s2s.steps import run_here

    status, record = run_here(JobView(request["job"]), request["step"], request["process_start"], "server")
    _send_message(conn, {"exit": status, "record": record})
    os._exit(0)


def _handle(conn: socket.socket) -> None:
    request, fds = _recv_message(conn, with_fds=3)
    try:
        compatible = (
            request["python"] == os.path.realpath(sys.executable) and Path(request["repo"]).resolve() == REPO
        )
        if not compatible:
            _send_message(conn, {"fallback": True})
            return
        if os.fork() == 0:
            try:
                _child(conn, request, fds)
            except BaseException:  # the job's own errors are handled in run_here; this is the server's
                traceback.print_exc()
                os._exit(1)
    finally:
        for fd in fds:  # the child has its own copies (made its standard streams)
            os.close(fd)


def serve(path: str, parent: int) -> None:
    """Listen on ``path`` (first, so that early jobs queue rather than miss it), import ``PRELOAD``, then
    fork a child per job until process ``parent`` is gone."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    from s2s.progress import quiet_libraries

    quiet_libraries()
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    started = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    seconds = time.perf_counter() - started
    print(f"s2s job server: {len(PRELOAD)} modules imported in {seconds:.1f} s", flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.settimeout(1.0)
    try:
        while _alive(parent):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            try:
                _handle(conn)
            except (OSError, ConnectionError, ValueError, KeyError) as exc:
                print(f"s2s job server: a request failed: {exc!r}", flush=True)
            finally:
                conn.close()
    finally:
        server.close()
        Path(path).unlink(missing_ok=True)
        (Path(path).parent / PID_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            Path(path).parent.rmdir()  # the folder ``start`` made for it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the workflow's side (Snakefile onstart / onsuccess / onerror) -----------------------------------------


def start(config: dict, local: bool, conda: bool, log_file: str) -> None:
    """Start the server for this run where it applies (see the module's docstring) and tell the jobs:
    ``local``, Snakemake executes jobs on this host; ``conda``, they run in conda environments."""
    os.environ.pop(ENV, None)  # a server of an enclosing run (a workflow run by a job) is not this run's
    if not config.get("job_server", True) or not local or conda:
        return
    remove_stale_folders()
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)
    path = os.path.join(folder, SOCKET_FILE)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    paths = [str(REPO), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    with open(log_file, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "s2s.jobserver", path, str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    Path(folder, PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if not os.path.exists(path):
        return  # it did not come up: every job runs in its own process
    os.environ[ENV] = path
    _started.update(process=process, folder=folder)


def remove_stale_folders(root: str | Path | None = None) -> list[Path]:
    """Remove the folders ``start`` made (under ``root``, by default the system's temporary folder) for
    servers that are gone, and return them. A folder goes only if it is named ``FOLDER_PREFIX*``, is a
    directory (not a link) of this user, its ``PID_FILE`` names a process that is not alive, and it holds
    nothing but the socket and that file; any other folder (another user's, one whose server runs or is
    starting and has no pid file yet, one with other files) is left as it is."""
    removed = []
    for folder in sorted(Path(root or tempfile.gettempdir()).glob(FOLDER_PREFIX + "*")):
        try:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            pid = int((folder / PID_FILE).read_text())
            if pid <= 0 or _alive(pid) or {p.name for p in folder.iterdir()} - {SOCKET_FILE, PID_FILE}:
                continue
            (folder / SOCKET_FILE).unlink(missing_ok=True)
            (folder / PID_FILE).unlink()
            folder.rmdir()
        except (OSError, ValueError):
            continue
        removed.append(folder)
    return removed


def stop() -> None:
    """Stop the server this process started, if any."""
    process = _started.pop("process", None)
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    folder = _started.pop("folder", None)
    if folder and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
    os.environ.pop(ENV, None)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
