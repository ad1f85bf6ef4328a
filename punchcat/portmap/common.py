"""What the portmap codecs and client share: the one parse error and the
escaping of router-supplied text."""

from __future__ import annotations



class MalformedResponse(ValueError):
    """A router's answer that cannot be understood (truncated, oversized, of
    the wrong version or opcode, not ours, not well-formed XML or HTTP, or
    carrying a DOCTYPE or entity declaration).  Every parser in
    ``punchcat.portmap`` raises this and nothing else for bad input; a
    well-formed error answer (a result code, a SOAP fault) is a return
    value, not an exception."""


def escape(text: object, limit: int = 200) -> str:
    """*text* (router-supplied) safe for a terminal: printable characters
    stay, every other one becomes ``\\xNN`` (``\\uNNNN`` above 0xff; for
    bytes, every byte outside printable ASCII); a backslash is doubled; cut to
    about *limit* characters."""
    raw = isinstance(text, (bytes, bytearray))
    text = bytes(text).decode("latin-1") if raw else str(text)
    cut = len(text) > limit
    out = []
    for ch in text[:limit]:
        if ch.isprintable() and ch != "\\" and not (raw and ord(ch) > 0x7E):
            out.append(ch)
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out) + ("…" if cut else "")
