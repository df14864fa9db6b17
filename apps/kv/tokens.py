"""Numbers and keys as memcached's text protocol reads them (app code, used by apps/kvstore.py).

memcached parses numbers with strtol/strtoul/strtoull (``safe_strto*`` in util.c): an optional
sign, any number of leading zeros, the value in range. Keys are refused when longer than 250
bytes; protocol.txt also forbids control characters and whitespace.
"""
from __future__ import annotations

import re

KEY_MAX = 250
MASK64 = (1 << 64) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1

_NUM = re.compile(rb"[+-]?[0-9]+\Z")
# protocol.txt: a key has no control characters or whitespace. memaslap (the paper's load
# generator) starts its keys with an 8-byte binary counter (0x10 bytes, 0x7f, ...), which
# memcached accepts: with --allow-control-keys only what memcached cannot carry in a key
# (NUL, CR, LF; a space already splits tokens) is refused.
BAD_KEY = re.compile(rb"[\x00-\x20\x7f]")
BAD_KEY_LENIENT = re.compile(rb"[\x00\r\n]")


def num(tok: bytes, lo: int, hi: int) -> int | None:
    """A decimal as memcached's safe_strto* accepts it (sign, leading zeros), or None."""
    if not tok.isdigit() and not _NUM.match(tok):
        return None
    if len(tok) > 21:
        # int() refuses more than 4,300 digits (ValueError); memcached's strtoull reads any
        # number of leading zeros, so only those can make a long token a 64-bit number.
        sign = tok[:1] if tok[:1] in b"+-" else b""
        tok = sign + (tok[len(sign):].lstrip(b"0") or b"0")
        if len(tok) > 21:
            return None
    v = int(tok)
    return v if lo <= v <= hi else None


def unsigned(tok: bytes, hi: int) -> int | None:
    """safe_strtoul/safe_strtoull: as num, but a minus sign is refused."""
    return None if tok[:1] == b"-" else num(tok, 0, hi)
