"""What ``nebula up`` reads: the cluster.yaml subset, and the token on ``nebula start``'s stdin."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from nebula.cluster_config import cluster_config_from, load_cluster_config, parse_yaml_subset
from nebula.ssh_launcher import _nebula_command, ssh_argv

EXAMPLE = """\
# demo cluster
cluster_name: demo
ssh_user: root
ssh_port: 2222          # optional
ssh_key: ~/.ssh/id_ed25519
python: "/opt/venv/bin/python"
head: 10.0.0.1
nodes: [10.0.0.2, 10.0.0.3]
port: 6380
num_cpus: 2
tmpdir: /scratch/nebula-{host}
ssh_options:
  - StrictHostKeyChecking=accept-new
  - 'ProxyJump=bastion #1'
"""


def test_the_documented_example_parses(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(EXAMPLE)
    config = load_cluster_config(str(path))
    assert (config.cluster_name, config.head, config.nodes) == ("demo", "10.0.0.1", ("10.0.0.2", "10.0.0.3"))
    assert (config.port, config.ssh_port, config.num_cpus, config.python) == (6380, 2222, 2, "/opt/venv/bin/python")
    assert config.ssh_options == ("StrictHostKeyChecking=accept-new", "ProxyJump=bastion #1")
    assert config.tmpdir_for("10.0.0.2") == "/scratch/nebula-10.0.0.2"
    argv = ssh_argv(config, "10.0.0.2")
    assert argv[-1] == "root@10.0.0.2" and ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2]
    command = _nebula_command(config, "10.0.0.2", ["stop"])
    assert command == "exec env NEBULA_TMPDIR=/scratch/nebula-10.0.0.2 /opt/venv/bin/python -m nebula.cli stop"


def test_defaults():
    config = cluster_config_from(parse_yaml_subset("cluster_name: c\nhead: h\n"), "c.yaml")
    assert (config.nodes, config.port, config.python, config.tmpdir, config.ssh_user) == ((), 6380, "python3",
                                                                                          None, None)
    assert ssh_argv(config, "h")[-1] == "h"


@pytest.mark.parametrize("text, message", [
    ("cluster_name: c\nhead: h\nextra:\n  inner: 1\n", "line 4: unexpected indentation"),
    ("- a\n", "line 1: a `- item` line must follow"),
    ("cluster_name: c\ncluster_name: d\n", "line 2: `cluster_name` is given twice"),
    ("cluster_name: c\nhead: h\nnodes: [a, b\n", "line 3: a `[` list must close"),
    ("cluster_name: c\nhead: h\nmode: {a: 1}\n", "line 3: '{a: 1}': only plain or quoted"),
    ("cluster_name: c\n", "`head:` is required"),
    ("cluster_name: c\nhead: h\nworkers: [a]\n", "unknown key(s) workers"),
    ("cluster_name: a b\nhead: h\n", "cluster_name 'a b' may only use"),
    ("cluster_name: c\nhead: h\nnodes: [h]\n", "host(s) h listed more than once"),
    ("cluster_name: c\nhead: root@h\n", "'root@h' is not a host name"),
    ("cluster_name: c\nhead: h\nport: 99999\n", "`port` must be a TCP port number"),
    ("cluster_name: c\nhead: h\nnum_cpus: -1\n", "`num_cpus` must be a positive number"),
])
def test_mistakes_are_named_with_their_line(text, message):
    with pytest.raises(ValueError) as info:
        cluster_config_from(parse_yaml_subset(text, "c.yaml"), "c.yaml")
    assert message in str(info.value)


@pytest.fixture
def short_tmp():
    path = tempfile.mkdtemp(prefix="nb-")  # Unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_start_reads_the_token_from_stdin(short_tmp):
    env = {**os.environ, "NEBULA_TMPDIR": short_tmp}
    env.pop("NEBULA_TOKEN", None)
    token = "stdin-token-0123456789abcdef0123456789"
    nebula = [sys.executable, "-m", "nebula.cli"]
    started = subprocess.run([*nebula, "start", "--head", "--port", "0", "--num-cpus", "1", "--token-stdin"],
                             input=token + "\n", env=env, capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert token not in started.stdout + started.stderr
        [token_file] = glob.glob(os.path.join(short_tmp, "nebula-*", "s-*", "token"))
        assert open(token_file).read() == token and os.stat(token_file).st_mode & 0o777 == 0o600
    finally:
        subprocess.run([*nebula, "stop"], env=env, capture_output=True, timeout=60)


def test_start_refuses_an_empty_stdin(short_tmp):
    env = {**os.environ, "NEBULA_TMPDIR": short_tmp}
    done = subprocess.run([sys.executable, "-m", "nebula.cli", "start", "--head", "--port", "0", "--token-stdin"],
                          input="", env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--token-stdin found no token" in done.stderr
