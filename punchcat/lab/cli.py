"""``punchcat-lab``: a one-box demo of two NATed hosts punching through."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from ..entry import run_app
from ..errors import PunchcatError, check_interrupted
from ..secret import generate_code
from .net import ANSWERS, NAT_MODES, Lab, Side, missing_prerequisites
from .pairs import Run, run_pair

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _choice(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{what} must be one of {', '.join(allowed)}")
    return value


def _summary(run: Run) -> list[str]:
    lines = []
    for pattern in (r"path to [^\[]*[^\[ ]", r"winner: (.*)", r"connected (to|through) (.*)"):
        match = re.search(pattern, run.stderr)
        if match:
            lines.append(match.group(0))
    if run.returncode != 0:
        lines += [line for line in run.stderr.splitlines() if "punchcat: " in line][-1:]
    return lines


@app.command()
def punchcat_lab(
    nat_a: str = typer.Option("preserve", "--nat-a", metavar="MODE",
                              help="Host a's router: preserve, random or none (public host)."),
    nat_b: str = typer.Option("preserve", "--nat-b", metavar="MODE", help="Host b's router."),
    answer_a: str = typer.Option("drop", "--answer-a", metavar="ANSWER",
                                 help="What host a's router does with an unsolicited SYN: "
                                      "drop, reject (TCP reset) or open (no filter)."),
    answer_b: str = typer.Option("drop", "--answer-b", metavar="ANSWER", help="Host b's router."),
    inner_a: bool = typer.Option(False, "--inner-a",
                                 help="Put host a behind a second NAT inside its home, like a "
                                      "container on a Docker bridge (172.17.0.0/24)."),
    inner_b: bool = typer.Option(False, "--inner-b", help="The same for host b."),
    skew: float = typer.Option(0.0, "--skew", metavar="SECONDS",
                               help="How far host b's clock is ahead of host a's."),
    delay: float = typer.Option(1.0, "--delay", metavar="SECONDS",
                                help="Host b starts this long after host a."),
    message: str = typer.Option("hello through two NATs", "--message", metavar="TEXT",
                                help="What each host sends the other."),
    file: Optional[Path] = typer.Option(None, "--file", metavar="PATH",
                                        help="Send this file from host a to host b instead."),
    timeout: float = typer.Option(60.0, "-w", "--timeout", metavar="SECONDS",
                                  help="punchcat's --timeout on both hosts."),
    relay: bool = typer.Option(False, "--relay",
                               help="Run Debian's magic-wormhole transit relay on the lab's "
                                    "internet and give both hosts --relay and a secret; with "
                                    "--nat-a random --nat-b random it is the only path."),
) -> None:
    """Build two NATed hosts on this machine, punch between them, report, tear down.

    Needs root, ip (iproute2) and nft (nftables).  Nothing leaves the
    network namespaces it creates.
    """
    _choice(nat_a, NAT_MODES, "--nat-a")
    _choice(nat_b, NAT_MODES, "--nat-b")
    _choice(answer_a, ANSWERS, "--answer-a")
    _choice(answer_b, ANSWERS, "--answer-b")
    if delay < 0 or timeout <= 0:
        raise typer.BadParameter("--delay must not be negative and --timeout must be positive")
    missing = missing_prerequisites(*(["twist3"] if relay else []))
    if missing:
        raise PunchcatError("needs " + ", ".join(missing))
    try:
        payload = file.read_bytes() if file else f"{message} (from a)\n".encode()
    except OSError as exc:
        raise PunchcatError(f"cannot read {file}: {exc.strerror}") from None
    sent = {"a": payload,
            "b": f"{message} (from b)\n".encode()}
    out = sys.stdout
    with Lab(Side(nat_a, answer_a, inner_a), Side(nat_b, answer_b, inner_b)) as lab:
        for side in "ab":
            s = lab.sides[side]
            where = ("a public address behind a stateful firewall" if s.nat == "none"
                     else f"NAT that {'preserves' if s.nat == 'preserve' else 'randomises'} ports")
            answer = {"drop": "drops unsolicited SYNs",
                      "reject": "rejects unsolicited SYNs with a reset",
                      "open": "has no filter (its own TCP stack answers with a reset)"}[s.answer]
            inner = " behind a container bridge's NAT (172.17.0.0/24)" if s.inner else ""
            print(f"host {side}{inner}: {where}; its router {answer}; "
                  f"it names {lab.peer_of(side)} as PEER", file=out)
        print(f"host b starts {delay:g} s after host a, its clock {skew:+g} s off", file=out,
              flush=True)
        args = ["-v", "-w", str(timeout)]
        env = {"a": {}, "b": {"PUNCHCAT_CLOCK_OFFSET": str(skew)}}
        if relay:
            daemon = lab.start_relay()
            print(f"a transit relay listens at {daemon.endpoint} (twist3 transitrelay); both "
                  f"hosts name it with --relay and share a fresh secret", file=out, flush=True)
            args += ["--relay", daemon.endpoint]
            code = generate_code()
            for side in env:
                env[side]["PUNCHCAT_SECRET"] = code
        runs = run_pair(lab, args, stdin=sent, delay_b=delay, env=env, timeout=timeout + 30)
        if relay:
            print(f"the relay carried {daemon.carried()} bytes", file=out)
        check_interrupted()                # a signal whose first raise was dropped
    plan = re.search(r"bucket (\d+).*ports ([\d ]+)", runs["a"].stderr)
    if plan:
        print(f"bucket {plan.group(1)}, ports {plan.group(2).strip()}", file=out)
    intact = True
    for side, other in (("a", "b"), ("b", "a")):
        run = runs[side]
        got, want = run.stdout, sent[other]
        same = got == want
        intact &= same and run.returncode == 0
        print(f"host {side}: exit {run.returncode}; " + "; ".join(_summary(run)), file=out)
        print(f"host {side}: received {len(got)} of {len(want)} bytes, "
              f"sha256 {hashlib.sha256(got).hexdigest()[:16]} "
              f"{'intact' if same else 'NOT INTACT'}", file=out)
    later = runs["b"]
    if later.first_byte is not None:
        print(f"time from host b's start to its first byte: {later.first_byte:.2f} s", file=out)
    print("result: " + ("success" if intact else "failure"), file=out)
    if not intact:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``punchcat-lab``; the lab is torn down on every way out."""
    return run_app(app, "punchcat-lab", argv, interrupted="interrupted; the lab was torn down")


if __name__ == "__main__":
    sys.exit(main())
