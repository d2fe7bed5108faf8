"""The Triton Inference Server that the ``nvidia-pytriton`` wheel bundles, run as a child process.

PyTriton's own ``Triton`` class serves Python functions with dynamic batching but has no sequence batching
(FACTS.md section 7), so lstminfer runs the bundled ``tritonserver`` binary itself on a model repository it
writes (``repository.py``): the same repository a stock Triton deployment loads.

Three things the wheel leaves to its user, done here:
- the Python-backend stub for this interpreter's version is copied next to ``libtriton_python.so`` (here: a
  backend directory of symlinks in a scratch folder);
- ``LD_LIBRARY_PATH`` gets this interpreter's ``LIBDIR`` first: the stub links ``libpython3.X.so.1.0`` and
  would otherwise load the system's, whose ``_thread.RLock`` differs from a pyenv build's (models then fail
  to load with ``'_thread.RLock' object has no attribute '_recursion_count'``), then the wheel's own libraries;
- ``PATH`` starts with this interpreter's ``bin``: the stub resolves ``python3`` there, so a virtual
  environment's ``site-packages`` (numpy, torch, lstminfer) is what the served model imports.

The server listens on loopback by default, is its own process group (its stubs with it), receives SIGTERM
if this process dies (``PR_SET_PDEATHSIG``), and ``stop()`` ends the whole group: no orphan is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lstminfer.errors import UserError

INSTALL_HINT = "install the serve extra: pip install 'lstminfer[serve]' (it needs numpy<2)"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server's pieces lie."""

    binary: Path  # tritonserver
    python_backend: Path  # folder holding libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this interpreter's minor version
    caches: Path
    libs: Path  # the wheel's vendored shared libraries
    version: str  # the nvidia-pytriton version


def find_tritonserver() -> TritonInstall:
    """The tritonserver inside the installed nvidia-pytriton wheel; UserError (one line) when absent."""
    spec = importlib.util.find_spec("pytriton")  # located, not imported: pytriton's import is heavy
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"Triton Inference Server is not installed: {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    python_backend = dist / "backends" / "python"
    if not binary.is_file() or not (python_backend / "libtriton_python.so").is_file():
        raise UserError(f"nvidia-pytriton at {root} has no tritonserver binary with the Python backend: {INSTALL_HINT}")
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / minor / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist / "python_backend_stubs").glob("3.*"))
        raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {minor} (it ships "
                        f"{', '.join(shipped) or 'none'}): run lstminfer under one of those")
    libs = root.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = dist / "external_libs"
    try:
        from importlib.metadata import version

        pytriton_version = version("nvidia-pytriton")
    except Exception:  # metadata missing in odd installs: the version is informative only
        pytriton_version = "unknown"
    return TritonInstall(binary, python_backend, stub, dist / "caches", libs, pytriton_version)


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: LD_LIBRARY_PATH and PATH as the module docstring says."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ld = [d for d in (libdir, str(install.libs)) if d and Path(d).is_dir()]
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerConfig:
    repository: Path
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 5  # in-flight requests get this long on shutdown
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)

    def resolve_ports(self) -> None:
        """Port 0 means: any free one."""
        for name in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, name) == 0:
                setattr(self, name, free_port(self.host if self.host != "0.0.0.0" else LOOPBACK))

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the parent dies, so a killed lstminfer leaves no server."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: stop() and the process group still end the server
        pass


class TritonServer:
    """``with TritonServer(config) as server:`` starts the bundled server, waits until it is ready, stops it.

    ``start()`` raises UserError with one line when the extra is missing, a port is taken, or the server
    exits during start-up (the first error line of its log, and where the full log is).
    """

    def __init__(self, config: ServerConfig, log_path: Path | None = None, install: TritonInstall | None = None):
        self.config = config
        self.install = install
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._log_file = None

    # ---- start ------------------------------------------------------------------------------------------
    def command(self, backend_dir: Path) -> list[str]:
        c = self.config
        return [str(self.install.binary),
                f"--model-repository={c.repository}",
                f"--backend-directory={backend_dir}",
                f"--cache-directory={self.install.caches}",
                f"--http-address={c.host}", f"--http-port={c.http_port}",
                f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
                f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false",
                f"--exit-timeout-secs={c.exit_timeout_s}",
                "--strict-readiness=true", "--disable-auto-complete-config",
                f"--log-verbose={c.log_verbose}",
                *c.extra_args]

    def start(self, ready_timeout_s: float = 120.0) -> TritonServer:
        if self.install is None:
            self.install = find_tritonserver()
        c = self.config
        if not Path(c.repository).is_dir():
            raise UserError(f"model repository {c.repository} does not exist")
        c.resolve_ports()
        for flag, port in (("--http-port", c.http_port), ("--grpc-port", c.grpc_port),
                           ("--metrics-port", c.metrics_port)):
            if not port_is_free(c.host, port):
                raise UserError(f"cannot start the server: port {port} on {c.host} is taken; pass another "
                                f"{flag} (0 picks a free one) or stop what listens there")
        self._scratch = tempfile.TemporaryDirectory(prefix="lstminfer-triton-")
        scratch = Path(self._scratch.name)
        backend_dir = scratch / "backends"
        python_dir = backend_dir / "python"
        python_dir.mkdir(parents=True)
        for item in self.install.python_backend.iterdir():
            if item.is_file():
                (python_dir / item.name).symlink_to(item)
        (python_dir / "triton_python_backend_stub").symlink_to(self.install.stub)
        if self.log_path is None:  # outside the scratch folder: it must outlive a failed start
            self.log_path = Path(tempfile.gettempdir()) / f"lstminfer-tritonserver-{os.getpid()}-{c.http_port}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            self.command(backend_dir), env=server_env(self.install), stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_set_parent_death_signal)
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200, the server exits, or `timeout_s` passes."""
        url = f"http://{self.config.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"tritonserver exited during start-up (code {self.process.returncode}): "
                                f"{self.first_error()}; full log: {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise UserError(f"tritonserver was not ready after {timeout_s:.0f} s: {self.first_error()}; "
                        f"full log: {self.log_path}")

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def first_error(self) -> str:
        """The most telling line of the server's log: a model's load failure, else its first error line."""
        text = self.log_text()
        failed = re.search(r"failed to load '([^']+)' version \d+: (.*?)(?:\\n|\"$|$)", text, re.M)
        if failed:
            return f"model {failed.group(1)} failed to load: {failed.group(2).strip()}"
        for line in text.splitlines():
            # E-lines about CUDA/NVML are harmless on a machine without a GPU.
            if re.match(r"^E\d{4} ", line) and not re.search(r"CUDA|Cuda|NVML|cuda", line):
                return line.split("] ", 1)[-1].strip().strip('"')
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        return "no error in its log"

    # ---- run and stop -----------------------------------------------------------------------------------
    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL to the whole group; returns the exit code."""
        process = self.process
        if process is None:
            return None
        timeout_s = self.config.exit_timeout_s + 10 if timeout_s is None else timeout_s
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Its stubs share its process group: end any that outlived it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.process = None
        return process.returncode

    def close(self) -> None:
        self.stop()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_until_signal(self, poll_s: float = 0.5) -> int:
        """Serve until SIGINT or SIGTERM (or the server exits by itself); then stop. Returns the server's code."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.is_set() and self.poll() is None:
                stop.wait(poll_s)
            died = self.poll()
        finally:
            code = self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if died is not None:
            raise UserError(f"tritonserver exited by itself (code {died}): {self.first_error()}; full log: "
                            f"{self.log_path}")
        return code or 0
