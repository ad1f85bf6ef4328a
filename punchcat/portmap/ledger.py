"""What one engine knows, for any thread to read, and the words for it.

The engine (:mod:`.engine`) writes here from its asyncio loop: the gateways,
each protocol's answer, the mappings held, the ports that failed, and
notes and warnings in human terms (router text already escaped).  Any
thread may take a :meth:`Ledger.snapshot` at any time: one re-entrant lock
(a signal handler may call in) guards it, and ``on_update`` is called with a
fresh snapshot after every change.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Iterable

from ..addresses import classify_ipv4
from .driver import Held
from .results import (NAMES, PROTOCOLS, STILL_ASKING, Answer, Mapping, PortmapStatus, Refusal,
                      names_text, ports_text)


class Ledger:
    """The engine's record: answers, mappings, failures, notes, warnings."""

    def __init__(self, protocols: Iterable[str], discovery_timeout: float,
                 on_update: Callable[[PortmapStatus], None] | None = None):
        self.protocols = tuple(protocols)
        self.discovery_timeout = discovery_timeout
        self.on_update = on_update
        self.lock = threading.RLock()    # re-entrant: a signal handler may call in
        self.gateways: list[str] = []
        self.answers: dict[tuple[str, str], Answer] = {}
        self.held: dict[int, Held] = {}
        self.failures: dict[int, str] = {}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.chosen: tuple[str, str] | None = None
        self.finished = False
        self.changed: asyncio.Event | None = None     # set by every change, for the engine

    def snapshot(self) -> PortmapStatus:
        with self.lock:
            chosen = self.chosen
            answers = tuple(self.answers[k] for k in sorted(
                self.answers, key=lambda k: (self._gw_rank(k[1]), PROTOCOLS.index(k[0]))))
            return PortmapStatus(
                finished=self.finished, gateways=tuple(self.gateways),
                protocol=chosen[0] if chosen else None, gateway=chosen[1] if chosen else None,
                public_address=self.public_address(),
                mappings=tuple(h.mapping for _, h in sorted(self.held.items())),
                failures=tuple(sorted(self.failures.items())), answers=answers,
                warnings=tuple(self.warnings), notes=tuple(self.notes))

    def _gw_rank(self, gateway: str) -> int:
        return self.gateways.index(gateway) if gateway in self.gateways else 99

    def public_address(self) -> str | None:
        """The chosen protocol's, else the first reported (call with the lock held)."""
        order = sorted(self.answers.values(), key=lambda a: (
            0 if self.chosen and (a.protocol, a.gateway) == self.chosen else 1,
            self._gw_rank(a.gateway), PROTOCOLS.index(a.protocol)))
        for answer in order:
            if answer.public_address:
                return answer.public_address
        return None

    def update(self) -> None:
        if self.changed is not None:
            self.changed.set()
        if self.on_update is not None:
            try:
                self.on_update(self.snapshot())
            except Exception:           # a callback's bug must not stop the mapper
                pass

    def finish(self) -> None:
        """The first round is over: what the punch waits for."""
        with self.lock:
            self.finished = True
        self.update()

    def note(self, *lines: str) -> None:
        with self.lock:
            self.notes.extend(lines)
        self.update()

    def answer(self, answer: Answer) -> None:
        with self.lock:
            self.answers[(answer.protocol, answer.gateway)] = answer
        if answer.public_address:
            self.warn_about_addresses(final=False)
        else:
            self.update()

    def record(self, port: int, result: Held | Refusal) -> None:
        """What a mapping request for *port* got."""
        with self.lock:
            if isinstance(result, Held):
                self.held[port] = result
                self.failures.pop(port, None)
            else:
                self.failures[port] = result.text
        self.update()

    def summarise(self, protocol: str, gw: str) -> None:
        """Notes on the first round of mapping."""
        name = NAMES[protocol]
        with self.lock:
            held = [h.mapping for h in self.held.values() if h.mapping.protocol == protocol]
            failures = dict(self.failures)
            address = self.public_address()
        same = sorted(m.internal_port for m in held if m.external_port == m.internal_port)
        lifetimes = sorted({m.lifetime for m in held})
        lines = []
        if same:
            life = ("permanently (the router accepts no lease; removed on close)"
                    if lifetimes == [0] else f"for {'/'.join(map(str, lifetimes))} s")
            lines.append(f"{name}: gateway {gw} maps TCP {ports_text(same)} {life}"
                         + (f"; public address {address}" if address else ""))
        for m in sorted(held, key=lambda m: m.internal_port):
            if m.external_port != m.internal_port:
                lines.append(f"{name}: gateway {gw} maps TCP {m.internal_port} to another "
                             f"external port, {m.external_port}, for {m.lifetime} s")
        asking = sorted(p for p, why in failures.items() if why == STILL_ASKING)
        if asking:
            lines.append(f"{name}: gateway {gw}: no answer yet for TCP {ports_text(asking)} "
                         "(still asking)")
        for port, why in sorted(failures.items()):
            if why != STILL_ASKING:
                lines.append(f"{name}: gateway {gw} did not map TCP {port}: {why}")
        self.note(*lines)

    def summarise_late(self, protocol: str, gw: str, ports: Iterable[int],
                       took: float) -> None:
        """Notes on the requests that outlived the first round, *took* seconds in all."""
        with self.lock:
            mapped = sorted(p for p in ports if p in self.held)
            failed = {p: self.failures.get(p, "") for p in ports if p not in self.held}
        lines = []
        if mapped:
            lines.append(f"{NAMES[protocol]}: gateway {gw} mapped TCP {ports_text(mapped)} "
                         f"late (within {took:.1f} s)")
        for port, why in sorted(failed.items()):
            lines.append(f"{NAMES[protocol]}: gateway {gw} did not map TCP {port}: {why}")
        if lines:
            self.note(*lines)

    def warn_about_addresses(self, final: bool = True) -> None:
        """Warnings about the public address(es) reported so far; when
        *final* (discovery over), also about no answer at all."""
        with self.lock:
            answers = [a for a in self.answers.values() if a.public_address]
            warnings = []
            spoke = [a for a in self.answers.values() if a.outcome in ("ok", "refused", "garbage")]
            if final and self.gateways and self.protocols and not answers:
                if spoke:
                    warnings.append("no router reported its public address "
                                    f"(asked {', '.join(self.gateways)})")
                else:
                    warnings.append(f"no router answered {names_text(self.protocols)} within "
                                    f"{self.discovery_timeout:g} s (asked {', '.join(self.gateways)})")
            seen = {}
            for a in answers:
                seen.setdefault(a.public_address, []).append(NAMES[a.protocol])
            for address, who in seen.items():
                kind = classify_ipv4(address)
                if kind == "private":
                    warnings.append(f"the router's WAN address {address} ({', '.join(who)}) is "
                                    "private (RFC 1918): there is another NAT beyond it")
                elif kind == "shared":
                    warnings.append(f"the router's WAN address {address} ({', '.join(who)}) is "
                                    "in the shared address space 100.64.0.0/10: carrier-grade "
                                    "NAT beyond it")
                elif kind != "public":
                    warnings.append(f"the router reports {address} ({', '.join(who)}) as its "
                                    "WAN address, which is not a public address")
            if len(seen) > 1:
                warnings.append("the protocols disagree on the public address: "
                                + "; ".join(f"{', '.join(w)}: {a}" for a, w in seen.items()))
            self.warnings.extend(w for w in warnings if w not in self.warnings)
        self.update()

    def summarise_removal(self, removed: Iterable[tuple[Mapping, object]],
                          unsure: Iterable[tuple[int, object]]) -> None:
        """Notes on removal: (mapping, result) of each held one, (port,
        result) of each removal of what an unanswered request may have
        mapped; a result is True once the router confirmed."""
        removed, unsure = list(removed), list(unsure)
        confirmed = [m for m, ok in removed if ok is True]
        unconfirmed = [m for m, ok in removed if ok is not True]
        unknown = sorted(port for port, ok in unsure if ok is not True)
        if confirmed:
            self.note(f"{NAMES[confirmed[0].protocol]}: removed "
                      f"{len(confirmed)} mapping{'s' if len(confirmed) != 1 else ''} "
                      f"(TCP {ports_text(sorted(m.internal_port for m in confirmed))})")
        if unconfirmed:
            self.note(f"{NAMES[unconfirmed[0].protocol]}: removal of TCP "
                      f"{ports_text(sorted(m.internal_port for m in unconfirmed))} not confirmed "
                      "in time (the router drops them when their lease ends)")
        if unknown:
            self.note(f"removal of what unanswered requests for TCP {ports_text(unknown)} may "
                      "have mapped not confirmed in time (the router drops it when its lease ends)")
