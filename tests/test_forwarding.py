"""Carrying SSH across the NAT lab: -L/-c port forwarding and ProxyCommand.

A real OpenSSH server runs on a loopback port inside host b's namespace,
with keys made by the test; a real ssh client runs on host a.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from punchcat.lab import PUNCHCAT, Lab

from conftest import need, wait_for

pytestmark = pytest.mark.lab

SSHD_PORT = 2222


@pytest.fixture
def ssh_lab(make_lab, tmp_path):
    """A lab with sshd on host b (127.0.0.1:2222) and a key for host a's ssh."""
    need("sshd", "ssh", "scp", "ssh-keygen")
    lab: Lab = make_lab()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
                       check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
    config = tmp_path / "sshd_config"
    config.write_text(f"""Port {SSHD_PORT}
ListenAddress 127.0.0.1
HostKey {tmp_path / 'host'}
PidFile {tmp_path / 'sshd.pid'}
AuthorizedKeysFile {tmp_path / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
LogLevel ERROR
Subsystem sftp internal-sftp
""")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = lab.popen("b", [shutil.which("sshd"), "-D", "-e", "-f", str(config)],
                     stderr=subprocess.PIPE)
    wait_for(lambda: "127.0.0.1:2222" in lab.sh("b", "ss -ltn"), what="sshd to listen")
    lab.ssh_options = ["-i", str(tmp_path / "client"), "-o", "StrictHostKeyChecking=no",
                       "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                       "-o", "LogLevel=ERROR"]
    yield lab
    sshd.kill()


def start(lab, side, args, log):
    return lab.popen(side, [*PUNCHCAT, "-v", *args, lab.peer_of(side)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def ssh(lab, *args, **kwargs):
    return subprocess.run(lab.command("a", ["ssh", *lab.ssh_options, "-p", "8022",
                                            "root@127.0.0.1", *args]),
                          capture_output=True, timeout=120, **kwargs)


def test_ssh_sessions_and_scp_through_a_forwarded_port(ssh_lab, tmp_path):
    lab = ssh_lab
    server = start(lab, "b", ["-c", str(SSHD_PORT), "-k"], tmp_path / "server.log")
    client = start(lab, "a", ["-L", "8022"], tmp_path / "client.log")
    wait_for(lambda: "connected to" in (tmp_path / "client.log").read_text(), what="the punch")

    # A long-lived interactive session: cat echoes each line back.
    chat = subprocess.Popen(lab.command("a", ["ssh", *lab.ssh_options, "-p", "8022",
                                              "root@127.0.0.1", "cat"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    chat.stdin.write(b"ping 1\n")
    chat.stdin.flush()
    assert chat.stdout.readline() == b"ping 1\n"

    # Meanwhile: a command, and a 20 MB scp checked by sha256 on the far side.
    assert ssh(lab, "echo", "hello from b").stdout == b"hello from b\n"
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(20 * 1024 * 1024))
    remote = tmp_path / "blob.copy"
    done = subprocess.run(lab.command("a", ["scp", *lab.ssh_options, "-P", "8022", str(blob),
                                            f"root@127.0.0.1:{remote}"]),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    remote_sum = ssh(lab, "sha256sum", str(remote)).stdout.split()[0].decode()
    assert remote_sum == hashlib.sha256(blob.read_bytes()).hexdigest()

    # The other sessions have closed; the long-lived one is still there.
    chat.stdin.write(b"ping 2\n")
    chat.stdin.flush()
    assert chat.stdout.readline() == b"ping 2\n"
    chat.stdin.close()
    assert chat.wait(timeout=30) == 0

    # A new session after all the others closed, over the same link.
    assert ssh(lab, "echo", "again").stdout == b"again\n"
    log = (tmp_path / "client.log").read_text()
    assert log.count("winner:") == 1                      # one punch for every session
    assert log.count("session ") >= 5
    client.terminate()
    server.terminate()
    assert client.wait(timeout=10) == 143


def test_ssh_proxycommand_twice_against_a_keep_open_server(ssh_lab, tmp_path):
    lab = ssh_lab
    server = start(lab, "b", ["-c", str(SSHD_PORT), "-k"], tmp_path / "server.log")
    proxy = " ".join([*PUNCHCAT, "-q", lab.peer_of("a")])
    for attempt in ("first", "second"):
        done = subprocess.run(
            lab.command("a", ["ssh", *lab.ssh_options, "-o", f"ProxyCommand={proxy}",
                              "root@203.0.113.20", "echo", attempt]),
            capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == attempt.encode() + b"\n"
    assert (tmp_path / "server.log").read_text().count("winner:") == 2
    server.terminate()
    assert server.wait(timeout=10) == 143


def test_two_l_sides_say_both_modes_at_the_hello_and_fail_at_the_deadline(make_lab, tmp_path):
    lab = make_lab()
    a = start(lab, "a", ["-L", "8022", "-w", "8"], tmp_path / "a.log")
    b = start(lab, "b", ["-L", "8022", "-w", "8"], tmp_path / "b.log")
    assert a.wait(timeout=60) == 1 and b.wait(timeout=60) == 1
    for log in ("a.log", "b.log"):
        lines = (tmp_path / log).read_text().splitlines()
        assert any("still waiting" in line and line.count("-L mode") == 2 for line in lines)
        assert lines[-1].count("-L mode") == 2, lines[-1]      # and again in the last line


def test_l_against_a_plain_pipe_fails_naming_both_modes(make_lab, tmp_path):
    lab = make_lab()
    a = start(lab, "a", ["-L", "8022", "-w", "8"], tmp_path / "a.log")
    b = start(lab, "b", ["-w", "8"], tmp_path / "b.log")
    assert a.wait(timeout=60) == 1 and b.wait(timeout=60) == 1
    last = (tmp_path / "b.log").read_text().splitlines()[-1]
    assert "pipe mode" in last and "-L mode" in last


ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
def handle(c):
    while data := c.recv(65536):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

ECHO_CLIENTS = r"""
import hashlib, os, socket, sys, threading
def session(size, out):
    s = socket.create_connection(("127.0.0.1", 8022))
    data = os.urandom(size)
    threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR))).start()
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
    out.append(bytes(got) == data)
out = []
threads = [threading.Thread(target=session, args=(n, out)) for n in (7, 3_000_000, 9_000_000)]
[t.start() for t in threads]; [t.join() for t in threads]
print(all(out) and len(out) == 3)
"""


def test_forwarding_with_a_secret(make_lab, tmp_path):
    """-L/-c over the encrypted link: concurrent sessions echo intact."""
    lab = make_lab()
    env = dict(os.environ, PUNCHCAT_SECRET="forwarding secret")
    echo = lab.popen("b", [sys.executable, "-c", ECHO_SERVER, "7000"], stdout=subprocess.PIPE,
                     text=True)
    assert echo.stdout.readline() == "ready\n"
    server = lab.popen("b", [*PUNCHCAT, "-v", "-c", "7000", lab.peer_of("b")], env=env,
                       stderr=open(tmp_path / "server.log", "w"))
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8022", lab.peer_of("a")], env=env,
                       stderr=open(tmp_path / "client.log", "w"))
    wait_for(lambda: "encrypted" in (tmp_path / "client.log").read_text(), what="the punch")
    done = subprocess.run(lab.command("a", [sys.executable, "-c", ECHO_CLIENTS]),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr
    client.terminate()
    assert client.wait(timeout=10) == 143
    assert server.wait(timeout=20) == 0              # the link ended cleanly, not cut
    echo.kill()


def test_ssh_proxycommand_with_a_secret(ssh_lab, tmp_path):
    lab = ssh_lab
    env = dict(os.environ, PUNCHCAT_SECRET="proxy secret")
    server = lab.popen("b", [*PUNCHCAT, "-v", "-c", str(SSHD_PORT), "-k", lab.peer_of("b")],
                       env=env, stdin=subprocess.DEVNULL, stderr=open(tmp_path / "s.log", "w"))
    proxy = " ".join([*PUNCHCAT, "-q", lab.peer_of("a")])
    done = subprocess.run(
        lab.command("a", ["ssh", *lab.ssh_options, "-o", f"ProxyCommand={proxy}",
                          "root@203.0.113.20", "echo", "encrypted"]),
        capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"encrypted\n"
    assert "encrypted" in (tmp_path / "s.log").read_text()
    server.terminate()
