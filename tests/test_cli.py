"""The command line: usage errors, --plan, --help and the man page agree."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from punchcat.cli import app, main

ROOT = Path(__file__).resolve().parent.parent
PUNCHCAT = [sys.executable, "-m", "punchcat"]


def run(*args, stdin=b"", timeout=30):
    return subprocess.run([*PUNCHCAT, *args], input=stdin, capture_output=True, timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    ([], "missing PEER"),
    (["--ports", "0", "192.0.2.1"], "--ports"),
    (["--ports", "101", "192.0.2.1"], "--ports"),
    (["--ports", "many", "192.0.2.1"], "--ports"),
    (["-w", "0", "192.0.2.1"], "--timeout"),
    (["-w", "-5", "192.0.2.1"], "--timeout"),
    (["--clock-error", "-1", "192.0.2.1"], "--clock-error"),
    (["--clock-error", "100000", "192.0.2.1"], "--clock-error"),
    (["--run-window", "-1", "192.0.2.1"], "--run-window"),
    (["-v", "-q", "192.0.2.1"], "-v and -q"),
    (["--no-such-option", "192.0.2.1"], "no-such-option"),
    ([f"192.0.2.{i}" for i in range(1, 10)], "at most 8 PEER addresses"),
    (["192.0.2.1", "300.1.1.1"], "300.1.1.1 is not a valid IP address"),
    (["no-such-host.invalid"], "cannot resolve"),
    (["300.1.2.3"], "not a valid IP address"),
    (["1.2.3"], "not a valid IP address"),
    (["2001:db8::zz"], "not a valid IP address"),
    (["-6", "192.0.2.1"], "-6 was given"),
    (["-4", "2001:db8::1"], "-4 was given"),
    (["-4", "-6", "192.0.2.1"], "-4 and -6"),
    (["--keepalive", "0", "192.0.2.1"], "--keepalive"),
    (["-L", "0", "192.0.2.1"], "port must be"),
    (["-L", "70000", "192.0.2.1"], "port must be"),
    (["-L", "abc", "192.0.2.1"], "port must be"),
    (["-L", "1.2.3.4:", "192.0.2.1"], "port must be"),
    (["-L", "::1:8000", "192.0.2.1"], "expected [HOST:]PORT"),
    (["-c", "host:0", "192.0.2.1"], "port must be"),
    (["-c", "no-such-host.invalid:22", "192.0.2.1"], "cannot resolve -c host"),
    (["-L", "8000", "-c", "22", "192.0.2.1"], "-L and -c"),
    (["-k", "192.0.2.1"], "-k needs"),
    (["-s", "x", "--secret-file", "/etc/hostname", "192.0.2.1"], "give the secret once"),
    (["--secret-file", "/nonexistent/secret", "192.0.2.1"], "cannot read the secret file"),
    (["-s", "", "192.0.2.1"], "secret is empty"),
    (["127.0.0.1"], "is an address of this host: name the other host's address (to try "
                    "punchcat on one machine, run punchcat-lab)"),
    (["127.0.0.2"], "is an address of this host"),
])
def test_usage_errors_are_one_line_and_exit_2(args, needle):
    done = run(*args, stdin=b"secret data")
    assert done.returncode == 2, done.stderr
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("punchcat: "), lines
    assert needle in lines[0]
    assert "Traceback" not in done.stderr.decode()


def test_plan_is_one_json_object_on_stdout():
    done = run("--plan", "--ports", "5", "--clock-error", "7")
    assert done.returncode == 0 and done.stderr == b""
    plan = json.loads(done.stdout)
    assert len(plan["ports"]) == 5 and len(set(plan["ports"])) == 5
    assert plan["clock_error"] == 7 and plan["window"] == 16
    assert plan["rendezvous"] == (plan["bucket"] + 1) * 16 + 7


def test_plan_follows_the_clock_offset():
    plain = json.loads(run("--plan").stdout)
    shifted = subprocess.run([*PUNCHCAT, "--plan"], capture_output=True,
                             env={"PUNCHCAT_CLOCK_OFFSET": "4200", "PATH": "/usr/bin:/bin"})
    assert json.loads(shifted.stdout)["bucket"] - plain["bucket"] in (99, 100, 101)


def test_bad_clock_offset_is_a_usage_error():
    done = subprocess.run([*PUNCHCAT, "--plan"], capture_output=True,
                          env={"PUNCHCAT_CLOCK_OFFSET": "soon", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and b"PUNCHCAT_CLOCK_OFFSET" in done.stderr


def test_version_and_help():
    assert run("--version").stdout.decode().startswith("punchcat ")
    helped = run("--help")
    assert helped.returncode == 0 and b"PEER" in helped.stdout


def test_main_returns_status_without_exiting(capsys):
    assert main(["--ports", "0", "192.0.2.1"]) == 2
    assert capsys.readouterr().err.startswith("punchcat: --ports")


def cli_options() -> set[str]:
    command = typer.main.get_command(app)
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
            if opt.startswith("-")} | {"-h", "--help"}


def man_options() -> set[str]:
    text = (ROOT / "man" / "punchcat.1").read_text()
    options = text.split(".Sh DESCRIPTION", 1)[1].split(".Sh ", 1)[0]
    found = set()
    for line in options.splitlines():
        if line.startswith(".It Fl"):
            found |= {"-" + flag for flag in re.findall(r"Fl (-?[\w-]+)", line)}
    return found


def test_man_page_lists_exactly_the_cli_options():
    assert man_options() == cli_options()


def test_readme_mentions_every_long_option():
    readme = (ROOT / "README.md").read_text()
    missing = [o for o in cli_options() if o.startswith("--") and o not in readme]
    assert not missing, f"README does not mention {missing}"
