"""Bad input on the command line, in the environment and around the standard
streams: each its own line and status, never a traceback (no network: the
session is replaced by a stub that fails the test if reached unasked)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from punchcat import cli, session

#: Runs punchcat's main() with the session replaced: a command line that
#: passes every check ends with status 0 here and never touches the network.
STUBBED = """
import sys
import punchcat.session
def no_network(opts, reporter):
    print("reached the session", *map(str, opts.relays), file=sys.stderr)
punchcat.session.run = no_network
from punchcat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(*args, env=None, close=(), stdout=subprocess.PIPE, cwd=None):
    """Run the stubbed punchcat; *close* lists standard descriptors closed in it."""
    def closing():
        for fd in close:
            os.close(fd)
    full_env = {**os.environ, **(env or {})}
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name)
    return subprocess.run([sys.executable, "-c", STUBBED, *args], stdout=stdout,
                          stderr=subprocess.PIPE, preexec_fn=closing, env=full_env,
                          timeout=60, cwd=cwd)


def one_line(done, status: int, needle: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == status, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("punchcat: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["-L", "²", "192.0.2.1"], "port must be"),
    (["-c", "127.0.0.1:²", "192.0.2.1"], "port must be"),
    (["-L", "9" * 5000, "192.0.2.1"], "port must be"),
    (["fe80::1%nope"], "no network interface 'nope'"),
    (["--keepalive", "1e10", "192.0.2.1"], "--keepalive"),
    (["--keepalive", "inf", "192.0.2.1"], "--keepalive"),
    (["--keepalive", "nan", "192.0.2.1"], "--keepalive"),
    (["--timeout", "nan", "192.0.2.1"], "--timeout"),
    (["--run-window", "inf", "--plan"], "--run-window"),
    (["--max-sessions", "0", "-c", "22", "192.0.2.1"], "--max-sessions"),
    (["--max-sessions", "100000", "-c", "22", "192.0.2.1"], "--max-sessions"),
    (["--half-close-timeout", "0", "-c", "22", "192.0.2.1"], "--half-close-timeout"),
    (["--half-close-timeout", "inf", "-c", "22", "192.0.2.1"], "--half-close-timeout"),
    (["--insecure-secret-file", "192.0.2.1"], "goes with --secret-file"),
    (["--gen-code", "--gen-secret"], "cannot be used together"),
])
def test_bad_values_are_usage_errors(args, needle):
    one_line(run(*args), 2, needle)


def test_an_empty_secret_from_the_environment_is_an_error():
    one_line(run("192.0.2.1", env={"PUNCHCAT_SECRET": ""}), 2, "PUNCHCAT_SECRET is set but empty")


@pytest.mark.parametrize("secret, bits", [("1234", 13), ("hunter2", 36), ("1111-1111-1111", 40)])
def test_a_weak_secret_is_refused_with_one_line_that_suggests_a_code(secret, bits):
    line = one_line(run("192.0.2.1", env={"PUNCHCAT_SECRET": secret}), 2, "too weak")
    assert f"about {bits} bits" in line and "--gen-code" in line and secret not in line


def test_a_weak_secret_is_used_when_the_user_insists():
    done = run("--allow-weak-secret", "192.0.2.1", env={"PUNCHCAT_SECRET": "1234"})
    assert done.returncode == 0 and b"reached the session" in done.stderr


@pytest.mark.parametrize("make", ["--gen-code", "--gen-secret"])
def test_generated_codes_and_secrets_always_pass_the_floor(make):
    for _ in range(8):
        made = subprocess.run([sys.executable, "-m", "punchcat", make], capture_output=True,
                              text=True, check=True).stdout.strip()
        done = run("192.0.2.1", env={"PUNCHCAT_SECRET": made})
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["x" * 65, "a\nb", "\x1b[2J"])
def test_a_session_name_is_a_few_printable_words(name):
    one_line(run("--session", name, "192.0.2.1"), 2, "--session")


@pytest.mark.parametrize("fd, needle", [(0, "standard input is closed"),
                                        (1, "standard output is closed")])
def test_a_closed_standard_stream_in_pipe_mode(fd, needle):
    one_line(run("192.0.2.1", close=(fd,)), 2, needle)


def test_closed_standard_streams_do_not_matter_to_c_mode():
    done = run("-c", "22", "192.0.2.1", close=(0, 1))
    assert done.returncode == 0 and b"reached the session" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["--plan"], ["--gen-secret"],
                                  ["--gen-code"]])
def test_output_that_cannot_be_written_is_one_line_and_status_1(args):
    with open("/dev/full", "wb") as full:
        one_line(run(*args, stdout=full), 1, "cannot write output: No space left on device")
    one_line(run(*args, close=(1,)), 1, "cannot write output: standard output is closed")


@pytest.mark.parametrize("option, pattern", [("--gen-secret", r"[A-Za-z0-9_-]{32}"),
                                             ("--gen-code", r"\d{5}-\d{5}-\d{5}")])
def test_generated_secrets_go_to_a_new_private_file(tmp_path, option, pattern):
    path = tmp_path / "secret"
    old = os.umask(0)                     # even so: 0600
    try:
        done = run(option, "--secret-file", str(path))
    finally:
        os.umask(old)
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    import re
    assert re.fullmatch(pattern + "\n", path.read_text())
    one_line(run(option, "--secret-file", str(path)), 2, "exists")
    done = run("--secret-file", str(path), "-c", "22", "192.0.2.1")   # and it is usable
    assert done.returncode == 0, done.stderr


def test_a_secret_file_others_can_read_or_write_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("a secret\n")
    for mode in (0o644, 0o620, 0o604):
        path.chmod(mode)
        one_line(run("--secret-file", str(path), "192.0.2.1"), 2,
                 f"can be read or changed by other users (mode {mode:04o})")
    done = run("--secret-file", str(path), "--insecure-secret-file", "-c", "22", "192.0.2.1")
    assert done.returncode == 0, done.stderr
    path.chmod(0o600)
    assert run("--secret-file", str(path), "-c", "22", "192.0.2.1").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_secret_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("a secret\n")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    one_line(run("--secret-file", str(path), "192.0.2.1"), 2, "belongs to another user")


def test_a_secret_file_first_line_is_bounded(tmp_path):
    one_line(run("--secret-file", "/dev/zero", "192.0.2.1"), 2, "longer than 4096 bytes")


def test_an_internal_error_is_one_line_and_its_traceback_only_with_vv(monkeypatch, capfd):
    def broken(opts, reporter):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(session, "run", broken)
    monkeypatch.delenv("PUNCHCAT_DEBUG", raising=False)
    monkeypatch.setattr("punchcat.entry._debug", False)
    assert cli.main(["-v", "-c", "22", "192.0.2.1"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("punchcat: internal error: ZeroDivisionError: a bug")
    assert cli.main(["-vv", "-c", "22", "192.0.2.1"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("punchcat: internal error: ZeroDivisionError")



def test_a_bug_in_a_background_thread_is_one_line_too(monkeypatch, capfd):
    def broken(opts, reporter):
        thread = threading.Thread(target=lambda: 1 / 0, name="punchcat-tidy")
        thread.start()
        thread.join()
    monkeypatch.setattr(session, "run", broken)
    monkeypatch.delenv("PUNCHCAT_DEBUG", raising=False)
    monkeypatch.setattr("punchcat.entry._debug", False)
    hook = threading.excepthook
    assert cli.main(["-c", "22", "192.0.2.1"]) == 0
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("punchcat: internal error in punchcat-tidy: ZeroDivisionError")
    assert threading.excepthook is hook                  # put back on the way out

# -- any value of any option ---------------------------------------------------------------

def _number_text():
    return st.one_of(
        st.sampled_from(["0", "-0", "1", "-1", "nan", "inf", "-inf", "1e308", "1e-308",
                         "99999999999999999999", "0x10", "1_000", "²", "٣", "1e10", " 5",
                         "", "\x00", "65535", "65536", "8022", "127.0.0.1:8022", "[::1]:22",
                         "fe80::1%nope", "::1", "a:b:c", "[::1", "%", "-"]),
        st.integers(-10 ** 30, 10 ** 30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12))


OPTIONS = ["-w", "--clock-error", "--run-window", "--ports", "-L", "-c", "--keepalive",
           "--max-sessions", "--half-close-timeout", "-s"]
FLAGS = ["-k", "-4", "-6", "-v", "-vv", "-q", "--stats", "--plan", "--version", "--help",
         "--gen-secret", "--gen-code", "--insecure-secret-file", "--no-such-option"]
PEERS = ["192.0.2.1", "2001:db8::1", "fe80::1%lo", "300.1.2.3", "no-such-host.invalid", "",
         "-", "::", "0.0.0.0", "1.2.3", "[::1]", "\udcff", "x" * 300]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.tuples(st.sampled_from(OPTIONS), _number_text()),
                          st.sampled_from(FLAGS).map(lambda f: (f,))), max_size=5),
       st.one_of(st.none(), st.sampled_from(PEERS), st.text(max_size=20)))
def test_any_option_values_give_a_status_and_at_most_one_line(monkeypatch, capfd, tmp_path,
                                                               options, peer):
    """Whatever the values: status 0, 1 or 2, and at most one line on
    stderr (exactly one unless 0), never a traceback; nothing goes to the
    network (the session is a stub, names do not resolve)."""
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(session, "run", lambda opts, reporter: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUNCHCAT_SECRET", raising=False)
    argv = [part for option in options for part in option]
    if peer is not None:
        argv.append(peer)
    capfd.readouterr()
    status = cli.main(argv)
    err = capfd.readouterr().err
    assert status in (0, 1, 2), (argv, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    lines = err.splitlines()
    assert len(lines) <= 1, (argv, err)
    if status != 0:
        assert len(lines) == 1 and lines[0].startswith("punchcat: "), (argv, err)


def test_a_relay_without_a_secret_is_a_usage_error_that_suggests_a_code():
    line = one_line(run("--relay", "192.0.2.1:4001", "198.51.100.10",
                        env={"PUNCHCAT_SECRET": None}), 2, "--relay needs a secret")
    assert "--gen-code" in line


@pytest.mark.parametrize("spec, needle", [
    ("[2001:db8::1", "--relay"), (":4001", "--relay"), ("relay.invalid:99999", "port must be"),
    ("no-such-host.invalid", "cannot resolve --relay host")])
def test_a_bad_relay_is_a_usage_error(spec, needle):
    one_line(run("--relay", spec, "198.51.100.10",
                 env={"PUNCHCAT_SECRET": "a secret long enough here"}), 2, needle)


def test_relays_come_from_the_environment_too():
    done = run("198.51.100.10", env={"PUNCHCAT_SECRET": "a secret long enough here",
                                     "PUNCHCAT_RELAY": "192.0.2.1:4001 [2001:db8::1]"})
    assert done.returncode == 0
    assert b"reached the session 192.0.2.1:4001 [2001:db8::1]:4001" in done.stderr
