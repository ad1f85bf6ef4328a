"""The shared secret itself: made, typed, read and written (no network, no TLS).

A secret is what both users give punchcat (``-s``, ``PUNCHCAT_SECRET``,
``--secret-file``); :mod:`punchcat.secure` proves it and encrypts the link
with it.  Here: fresh secrets and short codes (``--gen-secret``,
``--gen-code``), the one rule by which a code typed with or without its
separators is the same secret, and secret files treated as ssh treats a
private key.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import stat

from .errors import PunchcatError, UsageError

#: A short code: CODE_GROUPS groups of CODE_DIGITS random decimal digits.
CODE_GROUPS, CODE_DIGITS = 3, 5
#: Separators a person may type or paste between the digits of a code: any
#: whitespace (``\s``, which includes no-break and thin spaces) and the
#: hyphen-minus with its typographic look-alikes (hyphens U+2010-U+2011,
#: figure, en and em dashes and horizontal bar U+2012-U+2015, minus sign
#: U+2212, small and full-width hyphen-minus U+FE63, U+FF0D).
_CODE_LIKE = re.compile(r"[\s\-\u2010-\u2015\u2212\ufe63\uff0d]*[0-9]"
                        r"[0-9\s\-\u2010-\u2015\u2212\ufe63\uff0d]*")


def generate_secret() -> str:
    """A fresh secret: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def generate_code() -> str:
    """A fresh short code to read out over the phone, e.g. ``48210-93755-62183``.

    Fifteen random decimal digits (log2(10^15) = 49.8 bits) in three groups
    of five.  Digits only: they read out the same in any language, on any
    keyboard or phone keypad, with no 0/O, 1/l or case to confuse.  Three
    groups of five are read and typed in three breaths.  Because of SRP an
    attacker can test only one guess per run of the real peer, and the user
    sees that run fail, so 49.8 bits is far more than such guessing can
    get through (a 40-bit floor would already be); :func:`generate_secret`
    remains for secrets that are copied rather than read out.  Spaces and
    dashes typed between the digits do not matter: see
    :func:`normalize_secret`.
    """
    count = CODE_GROUPS * CODE_DIGITS
    digits = f"{secrets.randbelow(10 ** count):0{count}d}"
    return "-".join(digits[i:i + CODE_DIGITS] for i in range(0, count, CODE_DIGITS))


def normalize_secret(secret: str) -> str:
    """The secret as both sides use it: a code is reduced to its digits.

    A secret made only of ASCII digits, whitespace and dashes (see
    ``_CODE_LIKE``), with at least one digit, "looks like a code" and is
    replaced by its digits alone, so ``48210-93755-62183``, ``48210 93755
    62183``, ``4821093755 62183`` and ``48210–93755–62183`` (en dashes from a
    chat program) are all the secret ``482109375562183``.  Anything else,
    including every secret of :func:`generate_secret` with a letter or an
    underscore in it, is used exactly as given.

    Why this is safe: both sides apply the same rule (it is part of protocol
    version 2), so it can only make two secrets equal that differ in where
    the separators are; it never changes which digits, or their order.  A
    generated code's entropy is all in its digits; a person who picked a
    digits-and-dashes secret gains nothing real from the dashes (their
    places are a few bits at most, and people do not remember them apart
    from the digits anyway).  A secret of only separators has no digit and
    is left alone, so no secret ever becomes empty.
    """
    if _CODE_LIKE.fullmatch(secret):
        return "".join(c for c in secret if c in "0123456789")
    return secret


#: Bits a secret must carry by :func:`strength` (a 15-digit code carries
#: 49.8): SRP makes every guess an online one, but an unattended ``-k``
#: server answers one guess per backoff step (at worst one every five
#: minutes), so 2**40 guesses is beyond reach and a 4-digit PIN (13 bits)
#: or "hunter2" (36) is not.
FLOOR_BITS = 40.0
#: The alphabets :func:`strength` recognises, and their sizes.
_ALPHABETS = ((str.isdigit, 10), (str.islower, 26), (str.isupper, 26))
#: Printable ASCII that is neither a letter nor a digit (punctuation, space).
_SYMBOLS = 33
#: What any character beyond ASCII adds to the alphabet (a rough guess).
_BEYOND_ASCII = 100


def strength(secret: str) -> float:
    """A simple estimate of the bits in *secret*, as both sides use it
    (:func:`normalize_secret`): its length times log2 of the alphabet its
    characters are drawn from (digits 10, lowercase 26, uppercase 26, other
    ASCII 33, anything else 100, summed over the kinds present).

    It is an upper bound that assumes each character was drawn at random: it
    catches short secrets and small alphabets (a PIN, "hunter2"), not a long
    word or a pattern ("password1234" passes).  What punchcat makes always
    passes: a code (15 random digits, 49.8 bits) and a secret (32 base64url
    characters, 192 bits)."""
    used = normalize_secret(secret)
    if not used:
        return 0.0
    size = sum(n for test, n in _ALPHABETS if any(test(c) and c.isascii() for c in used))
    if any(c.isascii() and not c.isalnum() for c in used):
        size += _SYMBOLS
    if any(not c.isascii() for c in used):
        size += _BEYOND_ASCII
    return len(used) * math.log2(size)


def check_strength(secret: str) -> None:
    """Refuse (:class:`UsageError`) a secret weaker than :data:`FLOOR_BITS`."""
    bits = strength(secret)
    if bits < FLOOR_BITS:
        raise UsageError(f"the secret is too weak: about {bits:.0f} bits by punchcat's estimate, "
                         f"less than the {FLOOR_BITS:g} it asks for (a code of --gen-code has "
                         f"{CODE_GROUPS * CODE_DIGITS * math.log2(10):.1f}); make one with "
                         f"punchcat --gen-code, or give --allow-weak-secret")


#: Most bytes read from a secret file (its first line): /dev/zero is not a secret.
MAX_SECRET_LINE = 4096


def read_secret_file(path: str, insecure: bool = False) -> str:
    """The secret in *path*: its first line, surrounding whitespace removed.

    As ssh treats a private key: a file (or named pipe) that another user
    can read or write, or that another user owns, is refused with the
    reason unless *insecure*.  Bytes that are not UTF-8 are kept as they are
    (as a command line or the environment would give them).
    """
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not insecure:
                _check_private(path, info)
            line = f.readline(MAX_SECRET_LINE + 1)
    except OSError as exc:
        raise PunchcatError(f"cannot read the secret file {path}: "
                            f"{exc.strerror or exc}") from None
    if len(line) > MAX_SECRET_LINE:
        raise PunchcatError(f"the secret file {path}: its first line is longer than "
                            f"{MAX_SECRET_LINE} bytes")
    return line.decode("utf-8", "surrogateescape").strip()


def _check_private(path: str, info: os.stat_result) -> None:
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
        return                        # a terminal, /dev/stdin: not a file others share
    if info.st_uid not in (os.geteuid(), 0):
        raise PunchcatError(f"the secret file {path} belongs to another user (uid "
                            f"{info.st_uid}), who can change it; use a file of your own, "
                            f"or give --insecure-secret-file")
    if info.st_mode & 0o077:
        raise PunchcatError(f"the secret file {path} can be read or changed by other users "
                            f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}, or "
                            f"give --insecure-secret-file")


def give_secret(code: bool, secret: bool, path: str | None) -> None:
    """--gen-code or --gen-secret: print a fresh one, or write it to a new file *path*."""
    if code and secret:
        raise UsageError("--gen-code and --gen-secret cannot be used together")
    fresh = generate_code() if code else generate_secret()
    if path is None:
        print(fresh)  # stdout-ok: asked for
    else:
        write_secret_file(path, fresh)


def write_secret_file(path: str, secret: str) -> None:
    """Write *secret* to a new file *path* that only its owner can read (0600).

    An existing file is never replaced (:class:`UsageError`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; remove it first or choose another path") from None
    except OSError as exc:
        raise PunchcatError(f"cannot write the secret file {path}: "
                            f"{exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)
        data = (secret + "\n").encode()
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise PunchcatError(f"cannot write the secret file {path}: "
                            f"{exc.strerror or exc}") from None
    os.close(fd)
