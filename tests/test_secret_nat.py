"""A shared secret across the NAT lab: round trip, wrong secret, no plaintext
on the wire, a flipped byte in transit."""

import os
import subprocess
import threading

import pytest

from punchcat.lab import Side, run_pair

from conftest import need, sha, wait_for

pytestmark = pytest.mark.lab

SECRET = {"PUNCHCAT_SECRET": "an example secret, long enough"}
MARKER = b"PLAINTEXT-MARKER-4b2f"


def with_secret(a=SECRET, b=SECRET):
    return {"a": dict(a), "b": dict(b)}


def test_right_secret_round_trip(make_lab, payload):
    lab = make_lab(Side(answer="reject"), Side())
    sent = {"a": payload(2_000_000), "b": payload(1_500_000)}
    runs = run_pair(lab, ["-v", "-w", "30"], stdin=sent, env=with_secret(), delay_b=0.5)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha(runs[side].stdout) == sha(sent[other])
        assert "encrypted" in runs[side].stderr


def test_secret_from_a_file_on_one_side(make_lab, tmp_path):
    lab = make_lab()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET["PUNCHCAT_SECRET"] + "\n")
    secret_file.chmod(0o600)                 # one that others can read is refused
    runs = run_pair(lab, {"a": ["-w", "30", "--secret-file", str(secret_file)],
                          "b": ["-w", "30"]},
                    stdin={"a": b"ping", "b": b"pong"}, env={"b": SECRET})
    assert runs["a"].stdout == b"pong" and runs["b"].stdout == b"ping"


def test_wrong_secret_both_fail_and_deliver_nothing(make_lab, payload):
    lab = make_lab()
    sent = {"a": payload(100_000), "b": payload(100_000)}
    runs = run_pair(lab, ["-w", "30"], stdin=sent,
                    env=with_secret(b={"PUNCHCAT_SECRET": "a different secret"}))
    for run in runs.values():
        assert run.returncode == 1
        assert run.stdout == b""
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and "authentication failed" in lines[0], run.stderr


def test_secret_on_one_side_only_is_a_clear_error(make_lab):
    lab = make_lab()
    runs = run_pair(lab, ["-w", "30"], stdin={"a": b"x", "b": b"y"}, env={"a": SECRET})
    for run in runs.values():
        assert run.returncode == 1 and run.stdout == b""
        assert "secret" in run.stderr


def capture(lab, tmp_path, env):
    """Send MARKER-laden data a -> b while tcpdump records core 1's link."""
    pcap = tmp_path / "core.pcap"
    dump = lab.popen("c1", ["tcpdump", "-i", "east", "--immediate-mode", "-U", "-s", "0",
                                  "-w", str(pcap), "tcp"],
                     stderr=subprocess.PIPE)
    said = []
    threading.Thread(target=lambda: said.extend(dump.stderr), daemon=True).start()
    wait_for(lambda: any(b"listening" in line for line in said), what="tcpdump")
    data = (MARKER + os.urandom(50)) * 2000
    runs = run_pair(lab, ["-w", "30"], stdin={"a": data, "b": b""}, env=env)
    assert runs["b"].returncode == 0 and runs["b"].stdout == data
    dump.terminate()
    dump.wait(timeout=10)
    return pcap.read_bytes()


def test_no_plaintext_on_the_wire_with_a_secret(make_lab, tmp_path):
    need("tcpdump")
    lab = make_lab()
    assert MARKER in capture(lab, tmp_path, {})                  # the capture does see payload
    encrypted = capture(lab, tmp_path, with_secret())
    assert len(encrypted) > 140_000                              # it saw the whole transfer
    assert MARKER not in encrypted


CORRUPT = """
table ip mangle {
    chain corrupt {
        type filter hook forward priority mangle; policy accept;
        ip saddr 198.51.100.10 meta length > 1000 ct bytes > 400000 @ih,800,8 set 0x5a
    }
}
"""


def test_a_byte_changed_in_transit_is_detected(make_lab, payload, tmp_path):
    # Core router 1 overwrites a byte in every large packet from a once the
    # connection has carried 400 kB: a man in the middle changing the stream.
    lab = make_lab()
    lab.sh("c1", "echo 1 > /proc/sys/net/netfilter/nf_conntrack_acct")
    subprocess.run(lab.command("c1", ["nft", "-f", "-"]), input=CORRUPT, text=True, check=True)
    # More than the socket buffers on the way hold, so that a is still
    # sending when b gives up (with 3 MB, a could finish first and exit 0).
    data = payload(30_000_000)
    runs = run_pair(lab, ["-w", "30"], stdin={"a": data, "b": b""}, env=with_secret())
    b = runs["b"]
    assert b.returncode == 1
    assert "integrity" in b.stderr
    assert len(b.stdout) < len(data) and data.startswith(b.stdout)   # no corrupted byte out
    # A changed record is no broken path: neither side resumes.  a hears
    # TLS's alert, unless it was done before b found the flipped byte (its
    # kernel took all it sent and b's empty end arrived).
    a = runs["a"]
    assert (a.returncode == 1 and "changed on the way" in a.stderr and "integrity" in a.stderr) or a.returncode == 0


def test_the_same_corruption_goes_unnoticed_without_a_secret(make_lab, payload):
    """The control for the test above: plain TCP delivers the changed bytes."""
    lab = make_lab()
    lab.sh("c1", "echo 1 > /proc/sys/net/netfilter/nf_conntrack_acct")
    subprocess.run(lab.command("c1", ["nft", "-f", "-"]), input=CORRUPT, text=True, check=True)
    data = payload(3_000_000)
    runs = run_pair(lab, ["-w", "30"], stdin={"a": data, "b": b""})
    assert runs["b"].returncode == 0
    assert len(runs["b"].stdout) == len(data) and runs["b"].stdout != data
