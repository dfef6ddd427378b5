"""``nebula up`` / ``nebula down``: start and stop a cluster's node agents over SSH.

``up`` runs ``nebula start`` on the head, then on every node, through the system ``ssh``
client; the cluster token travels on the SSH session's standard input (``--token-stdin``),
never on a command line or in the environment of a command line. What was started is
recorded in ``<user root>/clusters/<name>.json`` so that ``down`` runs ``nebula stop`` on
exactly those hosts.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

from .cluster_config import ClusterConfig, load_cluster_config
from .session_files import read_token, user_root, write_token_file

SSH_TIMEOUT = 90.0
STDERR_TAIL = 1500


class SSHCommandError(RuntimeError):
    """A command run over SSH failed (or SSH itself could not reach the host)."""


def cluster_up(config_path: str, token_file: str | None = None) -> int:
    config = load_cluster_config(config_path)
    state_path = _state_file(config.cluster_name)
    if os.path.exists(state_path):
        raise RuntimeError(f"cluster {config.cluster_name!r} is already up (recorded in {state_path}); "
                           f"run `nebula down {config_path}` first")
    token, token_path, generated = _cluster_token(config.cluster_name, token_file)
    address = f"{config.head}:{config.port}"
    state = {"cluster_name": config.cluster_name, "address": address, "head": config.head, "started": [],
             "token_file": token_path, "token_generated": generated}
    _start_on(config, config.head, ["--head", "--port", str(config.port)], token)
    _record(state_path, state, [config.head])
    failed = _start_nodes(config, address, token, state_path, state)
    _print_up(config, config_path, state, failed)
    return 1 if failed else 0


def cluster_down(config_path: str) -> int:
    config = load_cluster_config(config_path)
    state_path = _state_file(config.cluster_name)
    state = _read_state(state_path)
    hosts = state["started"] if state else [config.head, *config.nodes]
    if not state:
        print(f"no record of cluster {config.cluster_name!r} being up ({state_path}); "
              f"running `nebula stop` on every host in {config_path}")
    failed = _stop_hosts(config, [h for h in hosts if h != config.head], hosts)
    _forget(state_path, state, failed)
    print(f"cluster {config.cluster_name!r}: stopped on {len(hosts) - len(failed)} of {len(hosts)} host(s)")
    return 1 if failed else 0


def _start_nodes(config: ClusterConfig, address: str, token: bytes, state_path: str, state: dict) -> list:
    role = ["--address", address]
    results = _on_each(config.nodes, lambda host: _start_on(config, host, role, token))
    _record(state_path, state, [host for host in config.nodes if results[host] is None])
    return [(host, error) for host, error in results.items() if error is not None]


def _stop_hosts(config: ClusterConfig, nodes: list, hosts: list) -> list:
    """Stop the nodes first (in parallel), then the head; returns the hosts that failed."""
    results = _on_each(nodes, lambda host: _stop_on(config, host))
    if len(nodes) < len(hosts):
        results.update(_on_each([config.head], lambda host: _stop_on(config, host)))
    for host, error in results.items():
        print(f"  {host}: {'stopped' if error is None else error}")
    return [host for host, error in results.items() if error is not None]


def _on_each(hosts, action) -> dict:
    """``{host: None or the SSHCommandError}`` after running ``action(host)`` on every host at once."""
    def attempt(host):
        try:
            action(host)
            return None
        except SSHCommandError as exc:
            return exc
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        return dict(zip(hosts, pool.map(attempt, hosts)))


def _start_on(config: ClusterConfig, host: str, role: list, token: bytes) -> None:
    args = ["start", *role, "--host", host, "--token-stdin"]
    if config.no_tls:
        args.append("--no-tls")
    if config.num_cpus is not None:
        args += ["--num-cpus", str(config.num_cpus)]
    run_over_ssh(config, host, _nebula_command(config, host, args), stdin=token + b"\n",
                 what="starting a Nebula node agent")


def _stop_on(config: ClusterConfig, host: str) -> None:
    run_over_ssh(config, host, _nebula_command(config, host, ["stop"]), what="`nebula stop`")


def _nebula_command(config: ClusterConfig, host: str, args: list) -> str:
    """The remote shell command: ``nebula`` run by the configured interpreter, with its tmpdir."""
    env = ["env", f"NEBULA_TMPDIR={config.tmpdir_for(host)}"] if config.tmpdir else []
    return "exec " + shlex.join([*env, config.python, "-m", "nebula.cli", *args])


def ssh_argv(config: ClusterConfig, host: str, batch: bool = True) -> list:
    """The ``ssh`` command line that reaches ``host`` (``batch``: never prompt, give up after 10 s)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"] if batch else ["ssh"]
    for option in config.ssh_options:
        argv += ["-o", option]
    if config.ssh_port:
        argv += ["-p", str(config.ssh_port)]
    if config.ssh_key:
        argv += ["-i", os.path.expanduser(config.ssh_key)]
    return argv + [f"{config.ssh_user}@{host}" if config.ssh_user else host]


def run_over_ssh(config: ClusterConfig, host: str, command: str, stdin: bytes = b"", what: str = "") -> str:
    """Run ``command`` on ``host``; its stdout, or SSHCommandError naming the host and what to check."""
    argv = ssh_argv(config, host)
    argv[-1:-1] = ["--"]  # the host and command are never read as options
    argv.append(command)
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=SSH_TIMEOUT)
    except FileNotFoundError:
        raise SSHCommandError("the `ssh` client is not installed here (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise SSHCommandError(f"{what or command} on {host} did not finish within {SSH_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise SSHCommandError(_failure_message(config, host, done, what or command))
    return done.stdout.decode(errors="replace")


def _failure_message(config: ClusterConfig, host: str, done: subprocess.CompletedProcess, what: str) -> str:
    tail = _tail(done.stderr) or _tail(done.stdout) or "(no output)"
    if done.returncode == 255:
        return (f"could not reach {host} over SSH ({shlex.join(ssh_argv(config, host))}):\n{tail}\n"
                f"check that {host} is up and sshd listens on port {config.ssh_port or 22}, and that "
                "ssh_user/ssh_key let you log in without a password (BatchMode: no prompts)")
    hint = (f"`{config.python}` was not found there: set `python:` to an interpreter with nebula installed"
            if done.returncode == 127 else
            f"check that `{config.python} -m nebula.cli` works on {host} and that {host} can reach the head "
            f"at {config.head}:{config.port} (a firewall?)")
    return f"{what} on {host} failed (exit {done.returncode}):\n{tail}\n{hint}"


def _tail(output: bytes) -> str:
    text = output.decode(errors="replace").strip()
    return ("..." + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else text


def _cluster_token(name: str, token_file: str | None) -> tuple[bytes, str, bool]:
    """The token (from ``token_file``, else this cluster's 0600 file, made if missing)."""
    if token_file:
        return read_token(token_file), os.path.abspath(token_file), False
    path = os.path.join(_clusters_dir(), f"{name}.token")
    if os.path.exists(path):
        return read_token(path), path, True
    return write_token_file(path), path, True


def _clusters_dir() -> str:
    path = os.path.join(user_root(), "clusters")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _state_file(name: str) -> str:
    return os.path.join(_clusters_dir(), f"{name}.json")


def _read_state(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _record(path: str, state: dict, hosts: list) -> None:
    state["started"] = state["started"] + [h for h in hosts if h not in state["started"]]
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def _forget(path: str, state: dict | None, failed: list) -> None:
    """Keep only the hosts that failed to stop on record (a second ``down`` retries them)."""
    if state and failed:
        state["started"] = []
        _record(path, state, failed)
        return
    if os.path.exists(path):
        os.unlink(path)
    if state and state.get("token_generated") and os.path.exists(state["token_file"]):
        os.unlink(state["token_file"])


def _print_up(config: ClusterConfig, config_path: str, state: dict, failed: list) -> None:
    started = len(state["started"]) - 1
    print(f"cluster {config.cluster_name!r} is up at {state['address']}: head {config.head} and "
          f"{started} of {len(config.nodes)} node(s)\n  token file: {state['token_file']}")
    for host, error in failed:
        print(f"  node {host} did not start: {error}")
    env = f"NEBULA_TMPDIR={shlex.quote(config.tmpdir_for(config.head))} " if config.tmpdir else ""
    login = shlex.join(ssh_argv(config, config.head, batch=False))
    print(f"connect a driver on the head:\n  {login}\n"
          f"  {env}{config.python} -c \"import nebula; nebula.init(address='auto'); print(nebula.nodes())\"\n"
          f"or make this machine a node first: nebula start --address {state['address']} "
          f"--token-file {state['token_file']}\n"
          f"stop it with: nebula down {config_path}")
    if failed:
        print(f"{len(failed)} node(s) failed; `nebula down {config_path}` stops the ones that started")
