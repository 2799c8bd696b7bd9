"""Real Flower processes on one machine: a SuperLink with TLS and node authentication, one
SuperNode per client shard, and runs submitted with `flwr run` (the tests and the benchmark use it;
docs/flower.md gives the same commands by hand, and for several machines).

    fed = LocalFederation(workdir, federation="fed", nodes=2)
    fed.start()                      # certificates, SuperLink, registered keys, SuperNodes
    fed.submit(out="runs/x")         # `flwr run pfedhn_jax/flower/app <connection> --run-config ...`
    fed.wait(out, "finished")
    fed.stop()

Every process is started in its own session, so stopping one stops its children (the
SuperExec and the flwr-serverapp / flwr-clientapp processes it starts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] != "Z":
                    parent[int(p.name)] = int(fields[1])
            except (OSError, ValueError):
                pass
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class LocalFederation:
    """A SuperLink and `nodes` SuperNodes on localhost, each SuperNode serving one client shard of
    `federation` (the folder `prepare` wrote); logs, certificates and Flower's home under `workdir`."""

    def __init__(self, workdir: str | os.PathLike, federation: str | os.PathLike, nodes: int,
                 env: dict | None = None, tls: bool = True, auth: bool = True):
        self.dir = Path(workdir).resolve()
        self.fed = Path(federation).resolve()
        self.n, self.tls, self.auth = nodes, tls, auth
        self.port = free_port()
        self.node_ports = [free_port() for _ in range(nodes)]
        self.certs = self.dir / "certs"
        env = dict(env or os.environ)
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp, flwr-clientapp by name
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # ...and they import the pfedhn_jax that this process imported (a checkout, not another install)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.env = {**env, "FLWR_HOME": str(self.dir / "flwr-home")}
        self.node_superlink = self.address   # where SuperNodes connect (e.g. a proxy in front of the SuperLink)
        self.last_run: int | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.dir / f"{name}.log"
        self.logs[name] = log
        f = open(log, "ab")
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
                             start_new_session=True)
        f.close()
        self.procs[name] = p
        return p

    def cli(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run([_bin("flwr"), *args], env=self.env, cwd=self.dir, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        return r.stdout

    def start(self, nodes: list[int] | None = None, timeout: float = 60) -> None:
        from pfedhn_jax.flower.certs import make_certificates
        self.dir.mkdir(parents=True, exist_ok=True)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        conn = [f'address = "{self.address}"']
        conn.append(f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls else "insecure = true")
        (home / "config.toml").write_text('[superlink]\ndefault = "local-fed"\n\n[superlink.local-fed]\n'
                                          + "\n".join(conn) + "\n")
        make_certificates(self.certs, ["localhost", "127.0.0.1"], self.n + 1)  # the last key: a stranger
        args = [_bin("flower-superlink"), "--port", str(self.port), "--disable-runtime-dependency-installation"]
        args += ([f"--ssl-ca-certfile={self.certs / 'ca.crt'}", f"--ssl-certfile={self.certs / 'server.pem'}",
                  f"--ssl-keyfile={self.certs / 'server.key'}"] if self.tls else ["--insecure"])
        if self.auth:
            args.append("--enable-supernode-auth")
        self._start("superlink", args)
        self.wait_log("superlink", "Uvicorn running", timeout)
        if self.auth:
            for i in range(self.n):
                self.cli("supernode", "register", str(self.certs / f"node-{i}.pub"), "local-fed")
        for i in (range(self.n) if nodes is None else nodes):
            self.start_node(i)

    def node_args(self, i: int, key: int | None = None, shard: int | None = None) -> list[str]:
        key = i if key is None else key
        shard = i if shard is None else shard
        args = [_bin("flower-supernode"), "--superlink", self.node_superlink, "--port", str(self.node_ports[i]),
                "--node-config", f'shard="{self.fed / f"client-{shard}.npz"}" state-dir="{self.dir / f"state-{i}"}"']
        args += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if self.auth:
            args += ["--auth-supernode-private-key", str(self.certs / f"node-{key}")]
        return args

    def start_node(self, i: int) -> subprocess.Popen:
        return self._start(f"node-{i}", self.node_args(i))

    def start_stranger(self, shard: int = 0) -> subprocess.Popen:
        """A SuperNode whose key was never registered (the spare key pair made by `start`)."""
        port = free_port()
        args = self.node_args(0, key=self.n, shard=shard)
        args[args.index("--port") + 1] = str(port)
        args += ["--max-retries", "1"]
        return self._start("stranger", args)

    def submit(self, out: str | os.PathLike, round_timeout: float = 60, node_wait: float = 60,
               eval_wait: float | None = None) -> None:
        rc = (f'federation="{self.fed}" out="{Path(out).resolve()}" round-timeout={float(round_timeout)} '
              f'node-wait={float(node_wait)} eval-wait={float(node_wait if eval_wait is None else eval_wait)} '
              'progress=false')
        text = self.cli("run", str(APP), "local-fed", "--run-config", rc)
        m = re.search(r"Successfully started run (\d+)", text)
        if m is None:
            raise RuntimeError(f"flwr run did not start a run: {text[-2000:]}")
        self.last_run = int(m.group(1))

    def run_status(self, run_id: int) -> str:
        """Flower's status of a run, e.g. 'running', 'finished:completed', 'finished:failed'."""
        for r in json.loads(self.cli("list", "local-fed", "--format", "json")).get("runs", []):
            if int(r.get("run-id", -1)) == run_id:
                return str(r.get("status"))
        return "unknown"

    def run_log(self, run_id: int) -> str:
        r = subprocess.run([_bin("flwr"), "log", str(run_id), "local-fed", "--show"], env=self.env, cwd=self.dir,
                           capture_output=True, text=True, timeout=120)
        return r.stdout + r.stderr

    def wait_log(self, name: str, pattern: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if re.search(pattern, self.logs[name].read_text(errors="replace")):
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited ({self.procs[name].returncode}): "
                                   f"{self.logs[name].read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{name}: no {pattern!r} within {timeout} s: {self.logs[name].read_text()[-3000:]}")

    @staticmethod
    def results(out: str | os.PathLike) -> dict | None:
        try:
            return json.loads((Path(out) / "results.json").read_text())
        except (OSError, ValueError):
            return None

    def wait(self, out: str | os.PathLike, status: str | tuple, timeout: float, until=None) -> dict:
        """Poll <out>/results.json until its status is `status` (or `until(results)` holds)."""
        statuses = (status,) if isinstance(status, str) else status
        reached = (lambda r: r.get("status") in statuses) if until is None else until
        end = time.monotonic() + timeout
        run, checked = self.last_run, time.monotonic()
        while time.monotonic() < end:
            r = self.results(out)
            if r is not None and reached(r):
                return r
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"the SuperLink exited: {self.logs['superlink'].read_text()[-3000:]}")
            if run is not None and time.monotonic() - checked > 10:   # a ServerApp that failed writes nothing
                checked = time.monotonic()
                st = self.run_status(run)
                if st.startswith("finished"):
                    time.sleep(1)
                    r = self.results(out)
                    if r is not None and reached(r):
                        return r
                    raise RuntimeError(f"run {run} ended ({st}) with {out} at status "
                                       f"{(r or {}).get('status')}: {self.run_log(run)[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{out}: status {statuses} not reached within {timeout} s (now "
                           f"{(self.results(out) or {}).get('status')}); SuperLink log: "
                           f"{self.logs['superlink'].read_text(errors='replace')[-3000:]}")

    def server_pid(self, out: str | os.PathLike) -> int | None:
        try:
            pid = int((Path(out) / "serverapp.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if "flwr-serverapp" in _cmdline(pid) else None

    def clientapps(self, i: int) -> list[int]:
        """flwr-clientapp processes node i is running now (it is inside a round)."""
        p = self.procs.get(f"node-{i}")
        return [] if p is None else [c for c in _children(p.pid) if "flwr-clientapp" in _cmdline(c)]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        kids = _children(p.pid)  # SuperExec starts its apps in sessions of their own
        for pid in [p.pid] + kids:
            try:
                os.killpg(pid, sig) if pid == p.pid else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "superlink"] + ["superlink"]:
            self.kill(name, signal.SIGTERM)
