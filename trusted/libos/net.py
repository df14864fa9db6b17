"""TRUSTED side: the app's sockets, routed through the transport.

:class:`EnclaveSocket` is a subclass of ``socket.socket`` (so ``isinstance`` holds and the
stdlib's Python-level helpers - ``makefile``, ``sendfile``, ``__repr__``, context managers -
are inherited) whose every syscall is an ABI request.  The C base object is never given the
fd: it stays at -1, so nothing can reach the kernel behind the shim's back.

The blocking rule (issue 3, item 4): the host fd is always O_NONBLOCK; the app's blocking mode
and timeout live in the socket object.  An operation is tried non-blocking (cheap, RPC-able);
only if it would block and the app's socket may block does the thread wait, with OP_POLL as an
OCALL (``wait=True``), and retry.  So no RPC worker is ever tied up by a blocking socket.

Socket addresses cross the boundary as raw ``struct sockaddr_*`` bytes, built and parsed here
as CPython's ``getsockaddrarg``/``makesockaddr`` do; a reply of the wrong family or length is
an Iago attack.  ``sendmsg``/``recvmsg``/``recvmsg_into`` carry ancillary data as raw
``struct cmsghdr`` records (OP_SENDMSG/OP_RECVMSG), and the ones the host returns are parsed
here as hostile input: lengths, and SCM_RIGHTS fds, which enter the enclave's fd table.
Flags such as MSG_DONTWAIT take the general path, never the C data path.  Host names are resolved by OP_GETADDRINFO, whose records this module parses.
"""
from __future__ import annotations

import _socket
import array
import errno as _errno
import operator
import os as _os
import socket as _socketmod
import struct
import time
import warnings

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.cargs import as_int, c_int
from trusted.libos._kernel import (F_GETFL, F_SETFL, MAX_IO, O_NONBLOCK, POLLIN, POLLOUT,
                                   SOL_SOCKET, Kernel, oserror, timeout_error)
from trusted.syscall import Reply

AF_UNIX, AF_INET, AF_INET6 = _socket.AF_UNIX, _socket.AF_INET, _socket.AF_INET6
AF_VSOCK = getattr(_socket, "AF_VSOCK", 40)
SOCK_NONBLOCK, SOCK_CLOEXEC = _socket.SOCK_NONBLOCK, _socket.SOCK_CLOEXEC
SO_TYPE, SO_ERROR, SO_PROTOCOL, SO_DOMAIN = 3, 4, 38, 39
SOCKADDR_MAX = 128          # sizeof(struct sockaddr_storage)
SUN_PATH_MAX = 108          # sizeof(sockaddr_un.sun_path)
GAI_BUF = 64 << 10          # room for getaddrinfo records (a few dozen addresses)
EAI_NONAME = _socket.EAI_NONAME
_GAI_HEAD = struct.Struct("=iiiiI")   # family, socktype, protocol, addrlen, canonname length
_ADDR_LEN = {AF_INET: 16, AF_INET6: 28}
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = _socket.SOCK_STREAM, _socket.SOCK_DGRAM, _socket.SOCK_RAW
IPPROTO_TCP, IPPROTO_UDP = 6, 17
AI_CANONNAME, AI_V4MAPPED = _socket.AI_CANONNAME, _socket.AI_V4MAPPED
# The flags that do not change the answer for a numeric host (glibc's getaddrinfo).
_NUMERIC_SAFE_FLAGS = (_socket.AI_PASSIVE | AI_CANONNAME | _socket.AI_NUMERICHOST |
                       _socket.AI_NUMERICSERV)
# What glibc answers for a numeric host, per (type, proto) asked: (type, proto) records.
_NUMERIC_RECORDS = {
    (0, 0): ((SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP), (SOCK_RAW, 0)),
    (SOCK_STREAM, 0): ((SOCK_STREAM, IPPROTO_TCP),), (0, IPPROTO_TCP): ((SOCK_STREAM, IPPROTO_TCP),),
    (SOCK_STREAM, IPPROTO_TCP): ((SOCK_STREAM, IPPROTO_TCP),),
    (SOCK_DGRAM, 0): ((SOCK_DGRAM, IPPROTO_UDP),), (0, IPPROTO_UDP): ((SOCK_DGRAM, IPPROTO_UDP),),
    (SOCK_DGRAM, IPPROTO_UDP): ((SOCK_DGRAM, IPPROTO_UDP),),
}
# The protocol a record of each socket type may carry when the app asked for none (glibc's
# gaih_inet_typeproto: tcp, udp, raw, seqpacket = sctp, dccp); a record of another type or
# family is not an answer to any getaddrinfo of the Internet families (Iago).
_DEFAULT_PROTO = {SOCK_STREAM: IPPROTO_TCP, SOCK_DGRAM: IPPROTO_UDP, SOCK_RAW: 0,
                  _socket.SOCK_SEQPACKET: 132, 6: 33}
# Every error code getaddrinfo has (netdb.h, glibc's extensions included).
_EAI_CODES = frozenset([getattr(_socket, n) for n in dir(_socket) if n.startswith("EAI_")] +
                       [-100, -101, -102, -103, -104, -105])

_RealSocket = _socketmod.socket         # the stdlib class, saved before anything is patched
_intenum = _socketmod._intenum_converter
MSG_DONTWAIT, MSG_TRUNC, MSG_CTRUNC = _socket.MSG_DONTWAIT, _socket.MSG_TRUNC, _socket.MSG_CTRUNC
SCM_RIGHTS = _socket.SCM_RIGHTS
SCM_CREDENTIALS = getattr(_socket, "SCM_CREDENTIALS", 2)
_CMSG = struct.Struct("=Qii")            # struct cmsghdr on x86_64: len, level, type
_CREDS = struct.Struct("=iII")           # struct ucred: pid, uid, gid


def _bytes_like(data):
    """CPython's ``y*`` converter: bytes stay bytes, anything else a flat byte view."""
    if type(data) is bytes:
        return data
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not "
                        f"'{type(data).__name__}'") from None


def _cmsg_space(n: int) -> int:
    return _CMSG.size + ((n + 7) & ~7)


# -- socket addresses ---------------------------------------------------------------------------
def _idna(host, func) -> bytes:
    if isinstance(host, str):
        try:
            return host.encode("ascii")
        except UnicodeEncodeError:
            return host.encode("idna")
    if isinstance(host, (bytes, bytearray)):
        return bytes(host)
    raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")


def decode_sockaddr(family: int, raw: bytes, what: str, required: bool = False):
    """The Python address for a host-returned sockaddr (None when empty), checked.
    ``required``: the kernel always gives one here (accept, getsockname, a datagram's
    sender), so an empty one is a lie, not None."""
    if not raw:
        if required:
            raise IagoError(f"host returned no address for {what}")
        return None
    if len(raw) < 2:
        raise IagoError(f"host returned a {len(raw)}-byte socket address for {what}")
    fam = struct.unpack_from("=H", raw)[0]
    if fam != family:
        raise IagoError(f"host returned a family-{fam} address for a family-{family} socket "
                        f"({what})")
    if fam == AF_INET:
        if len(raw) != 16:
            raise IagoError(f"host returned a {len(raw)}-byte sockaddr_in for {what}")
        return (_socket.inet_ntop(AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
    if fam == AF_INET6:
        if len(raw) != 28:
            raise IagoError(f"host returned a {len(raw)}-byte sockaddr_in6 for {what}")
        port, flow = struct.unpack_from("!HI", raw, 2)
        scope = struct.unpack_from("=I", raw, 24)[0]
        return (_socket.inet_ntop(AF_INET6, raw[8:24]), port, flow, scope)
    if fam == AF_UNIX:
        if len(raw) > 2 + SUN_PATH_MAX:
            raise IagoError(f"host returned a {len(raw)}-byte sockaddr_un for {what}")
        path = raw[2:]
        if path[:1] == b"\0":
            return path                        # Linux abstract namespace: bytes, as CPython
        return _os.fsdecode(path.split(b"\0", 1)[0])
    return (fam, raw[2:])


def _numeric_host(host: bytes):
    """(family, packed address) when ``host`` is a numeric IPv4/IPv6 address in the form
    inet_pton reads, else None."""
    try:
        text = host.decode("ascii")
    except UnicodeDecodeError:
        return None
    for fam in (AF_INET, AF_INET6):
        try:
            return fam, _socket.inet_pton(fam, text)
        except OSError:
            continue
    return None


def _numeric_getaddrinfo(host: bytes, numeric, port: bytes, family, type, proto, flags):
    """glibc's answer for a numeric host, computed in the enclave (nothing for the host to
    lie about), or None for the cases it does not cover (a service name, v4-mapped answers,
    AI_ADDRCONFIG, other socket types): those are asked and checked."""
    fam, packed = numeric
    records = _NUMERIC_RECORDS.get((type, proto))
    if (family not in (0, fam) or records is None or flags & ~_NUMERIC_SAFE_FLAGS or
            not (port == b"" or port.isdigit())):
        return None
    pnum = int(port) if port else 0
    if pnum > 0xFFFF:
        return None
    if fam == AF_INET:
        addr = (_socket.inet_ntop(AF_INET, packed), pnum)
    else:
        addr = (_socket.inet_ntop(AF_INET6, packed), pnum, 0, 0)
    canon = host.decode("ascii") if flags & AI_CANONNAME else ""
    out = []
    for typ, pro in records:
        out.append((_intenum(fam, _socketmod.AddressFamily),
                    _intenum(typ, _socketmod.SocketKind), pro, canon, addr))
        canon = ""      # only the first record carries it
    return out


def _gai_error(r: Reply) -> None:
    """Raise the resolver error the host reported, if it is one getaddrinfo can report."""
    code = r.args[5]
    if code:
        if code not in _EAI_CODES or r.ret != 0:
            raise IagoError(f"host returned getaddrinfo error code {code}")
        raise _socketmod.gaierror(code, r.out2.decode("utf-8", "replace"))


def _check_answer(records, host: bytes, numeric, family, type, proto, flags) -> None:
    """Each record must answer what was asked: an Internet family (the one asked for, if
    any), the socket type and protocol asked for (or the type's own protocol), a canonical
    name only if asked and only on the first record, and for a numeric host its address."""
    for i, (fam, typ, pro, canon, addr) in enumerate(records):
        if fam not in (AF_INET, AF_INET6) or family not in (0, fam):
            raise IagoError(f"host answered getaddrinfo for family {family} with a "
                            f"family-{int(fam)} record")
        if typ not in _DEFAULT_PROTO or type not in (0, typ):
            raise IagoError(f"host answered getaddrinfo for socket type {type} with a "
                            f"type-{int(typ)} record")
        if pro != (proto or _DEFAULT_PROTO[typ]):
            raise IagoError(f"host answered getaddrinfo for protocol {proto} with a "
                            f"protocol-{pro} record of type {int(typ)}")
        if canon and (i or not flags & AI_CANONNAME):
            raise IagoError(f"host's getaddrinfo record {i} has a canonical name nobody "
                            f"asked for ({canon!r})")
        if numeric is not None:
            nfam, packed = numeric
            got = _socket.inet_pton(fam, addr[0])
            # glibc also maps between IPv4 and v4-mapped IPv6 literals: with AI_V4MAPPED
            # for AF_INET6, and a v4-mapped literal asked for as AF_INET.
            v4mapped = b"\0" * 10 + b"\xff\xff"
            mapped = (nfam == AF_INET and fam == AF_INET6 and flags & AI_V4MAPPED and
                      got == v4mapped + packed) or \
                     (nfam == AF_INET6 and fam == AF_INET and packed[:12] == v4mapped and
                      got == packed[12:])
            if not (fam == nfam and got == packed) and not mapped:
                raise IagoError(f"host answered getaddrinfo for the numeric host "
                                f"{host.decode()!r} with {addr[0]!r}")
            if canon and canon != host.decode():
                raise IagoError(f"host named the numeric host {host.decode()!r} "
                                f"{canon!r}")


class Resolver:
    """``getaddrinfo`` over OP_GETADDRINFO, and address encoding that needs it.  A numeric
    host is resolved in the enclave; every record the host sends is checked against what
    was asked (family, type, protocol, canonical name, and a numeric host's address)."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        if host is None:
            h = b""
        elif isinstance(host, (str, bytes, bytearray)):
            h = _idna(host, "getaddrinfo")
            if not h:
                # The wire format spells "no host" as an empty string; glibc answers a real
                # empty host with EAI_NONAME, so give the app that without asking.
                raise _socketmod.gaierror(EAI_NONAME, "Name or service not known")
        else:
            raise TypeError("getaddrinfo() argument 1 must be string or None")
        if port is None:
            p = b""
        elif isinstance(port, int):
            p = str(port).encode()
        elif isinstance(port, str):
            p = port.encode("utf-8")
        elif isinstance(port, bytes):
            p = port
        else:
            raise OSError("Int or String expected")
        if b"\0" in h or b"\0" in p:
            raise ValueError("embedded null character")
        fam, typ, pro, fl = (operator.index(family), operator.index(type),
                             operator.index(proto), operator.index(flags))
        numeric = _numeric_host(h)
        if numeric is not None:
            local = _numeric_getaddrinfo(h, numeric, p, fam, typ, pro, fl)
            if local is not None:
                return local     # the native answer, computed in the enclave: no host asked
        r = self.kernel.check(abi.OP_GETADDRINFO, fam, typ, pro, fl, 0, 0,
                              inbuf=h + b"\0" + p + b"\0", out2cap=GAI_BUF)
        _gai_error(r)
        records = self._parse(r.ret, r.out2)
        _check_answer(records, h, numeric, fam, typ, pro, fl)
        return records

    @staticmethod
    def _parse(count: int, data: bytes) -> list:
        out, pos = [], 0
        for _ in range(count):
            if pos + _GAI_HEAD.size > len(data):
                raise IagoError("host's getaddrinfo records overrun their buffer")
            fam, typ, proto, alen, clen = _GAI_HEAD.unpack_from(data, pos)
            pos += _GAI_HEAD.size
            if fam in _ADDR_LEN and alen != _ADDR_LEN[fam] or not 2 <= alen <= SOCKADDR_MAX:
                raise IagoError(f"host's getaddrinfo record has a {alen}-byte address of "
                                f"family {fam}")
            if pos + alen + clen > len(data):
                raise IagoError("host's getaddrinfo record overruns its buffer")
            addr = decode_sockaddr(fam, data[pos:pos + alen], "getaddrinfo")
            pos += alen
            canon = data[pos:pos + clen].decode("utf-8", "surrogateescape")
            pos += clen
            out.append((_intenum(fam, _socketmod.AddressFamily),
                        _intenum(typ, _socketmod.SocketKind), proto, canon, addr))
        if pos != len(data) or (count == 0 and data):
            raise IagoError(f"host's getaddrinfo reply has {len(data) - pos} stray bytes")
        if count == 0:
            raise IagoError("host's getaddrinfo reported success with no address")
        return out

    def _resolve(self, host: bytes, family: int) -> bytes:
        """A sockaddr for a host name that is not a numeric address (port filled in later)."""
        r = self.kernel.check(abi.OP_GETADDRINFO, family, 0, 0, 0, 0, 0,
                              inbuf=host + b"\0\0", out2cap=GAI_BUF)
        _gai_error(r)
        records = self._parse(r.ret, r.out2)
        _check_answer(records, host, None, family, 0, 0, 0)
        return _socket.inet_pton(family, records[0][4][0])

    def encode(self, family: int, address, func: str) -> bytes:
        """CPython's getsockaddrarg: the raw sockaddr for ``address``."""
        if family == AF_UNIX:
            path = _os.fsencode(address) if not isinstance(address, (bytes, bytearray)) \
                else bytes(address)
            if not path or path[:1] == b"\0":
                if len(path) > SUN_PATH_MAX:
                    raise OSError("AF_UNIX path too long")
                return struct.pack("=H", AF_UNIX) + path
            if len(path) >= SUN_PATH_MAX:
                raise OSError("AF_UNIX path too long")
            return struct.pack("=H", AF_UNIX) + path + b"\0"
        if family == AF_INET:
            if not isinstance(address, tuple):
                raise TypeError(f"{func}(): AF_INET address must be tuple, not "
                                f"{type(address).__name__}")
            if len(address) != 2:
                raise TypeError("AF_INET address must be a pair (host, port)")
            host, port = address
            h = _idna(host, func)
            port = operator.index(port)
            if not 0 <= port <= 0xFFFF:
                raise OverflowError(f"{func}(): port must be 0-65535.")
            if h == b"":
                packed = b"\0\0\0\0"
            elif h in (b"<broadcast>", b"255.255.255.255"):
                packed = b"\xff\xff\xff\xff"
            else:
                try:
                    packed = _socket.inet_pton(AF_INET, h.decode("ascii"))
                except (OSError, UnicodeDecodeError):
                    packed = self._resolve(h, AF_INET)
            return struct.pack("=H", AF_INET) + struct.pack("!H", port) + packed + bytes(8)
        if family == AF_INET6:
            if not isinstance(address, tuple):
                raise TypeError(f"{func}(): AF_INET6 address must be tuple, not "
                                f"{type(address).__name__}")
            if not 2 <= len(address) <= 4:
                raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, "
                                "scopeid]])")
            host, port = address[0], operator.index(address[1])
            flow = operator.index(address[2]) if len(address) > 2 else 0
            scope = operator.index(address[3]) if len(address) > 3 else 0
            if not 0 <= port <= 0xFFFF:
                raise OverflowError(f"{func}(): port must be 0-65535.")
            if not 0 <= flow <= 0xFFFFF:
                raise OverflowError(f"{func}(): flowinfo must be 0-1048575.")
            h = _idna(host, func)
            if h == b"":
                packed = bytes(16)
            else:
                try:
                    packed = _socket.inet_pton(AF_INET6, h.decode("ascii"))
                except (OSError, UnicodeDecodeError):
                    packed = self._resolve(h, AF_INET6)
            return (struct.pack("=H", AF_INET6) + struct.pack("!HI", port, flow) + packed +
                    struct.pack("=I", scope))
        if isinstance(address, (bytes, bytearray)):
            return struct.pack("=H", family) + bytes(address)
        raise OSError(_errno.EAFNOSUPPORT, f"{func}(): bad family")


# The SOL_SOCKET options whose value the enclave acts on, and what the kernel can answer.
_FAMILIES = frozenset(int(f) for f in _socketmod.AddressFamily)
_KINDS = frozenset(int(k) for k in _socketmod.SocketKind)


def _checked_sockopt(name: int, value: int) -> int:
    """An integer SOL_SOCKET option as the host answered it, if the kernel could have."""
    if name == SO_ERROR:
        ok = 0 <= value <= abi.MAX_ERRNO      # a pending errno, or none
    elif name == SO_DOMAIN:
        ok = value in _FAMILIES
    elif name == SO_TYPE:
        ok = value in _KINDS
    elif name == SO_PROTOCOL:
        ok = 0 <= value <= 255
    else:
        return value
    if not ok:
        raise IagoError(f"host returned {value} for socket option {name}, which the kernel "
                        f"cannot")
    return value


class EnclaveSocket(_RealSocket):
    """``socket.socket`` inside the enclave.  Subclassed per LibOS with ``_k``/``_res`` set."""
    __slots__ = ("_fd", "_family", "_stype", "_proto", "_timeout")
    _k: Kernel
    _res: Resolver
    _plain: type

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        # Not _socket.socket.__init__: the C object must never hold the real fd.
        self._io_refs = 0
        self._closed = False
        self._fd = -1
        k = self._k
        family, type, proto = (operator.index(family), operator.index(type),
                               operator.index(proto))
        if fileno is None:
            family = AF_INET if family == -1 else family
            type = _socket.SOCK_STREAM if type == -1 else type
            proto = 0 if proto == -1 else proto
            r = k.check(abi.OP_SOCKET, family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto)
            fd = k.adopt_fd(r.ret, "socket")
        else:
            fd = operator.index(fileno)
            if fd < 0:
                raise ValueError("negative file descriptor")
            if family == -1:
                family = self._getopt_int(fd, SO_DOMAIN)
                self._check_domain(fd, family)      # the host's word: check it
            if type == -1:
                type = self._getopt_int(fd, SO_TYPE)
            if proto == -1:
                proto = self._getopt_int(fd, SO_PROTOCOL)
            fl = k.check(abi.OP_FCNTL, fd, F_GETFL, 0).ret
            if not fl & O_NONBLOCK:
                k.check(abi.OP_FCNTL, fd, F_SETFL, fl | O_NONBLOCK)
            k.own_fd(fd)               # an fd the app handed us: the socket's from now on
        self._init_fd(fd, family, type, proto)

    def _init_fd(self, fd, family, type, proto):
        self._fd, self._family, self._proto = fd, family, proto
        self._stype = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
        self._timeout = 0.0 if type & SOCK_NONBLOCK else _socket.getdefaulttimeout()
        self._k.app_blocking[fd] = self._timeout is None
        if self._stype == _socket.SOCK_STREAM:
            self._k.full_write.add(fd)

    @classmethod
    def _from_new_fd(cls, fd, family, type, proto):
        """A socket for an fd the host just created (already O_NONBLOCK, in the fd table)."""
        s = cls.__new__(cls)
        s._io_refs = 0
        s._closed = False
        s._init_fd(fd, family, type, proto)
        return s

    def _check_domain(self, fd, family):
        """The host says fd is a socket of ``family``: its own address says which family it
        is, and a host that answers SO_DOMAIN with one family and getsockname with another
        is lying about one of them."""
        r = self._k.call(abi.OP_GETSOCKNAME, fd, outcap=SOCKADDR_MAX)
        if r.ret < 0:
            return          # CPython never asks: the fd's own errors come with its use
        if len(r.out) < 2 or struct.unpack_from("=H", r.out)[0] != family:
            raise IagoError(f"host says fd {fd} is a family-{family} socket, but its address "
                            f"is {r.out[:2].hex() or 'empty'}")

    def _getopt_int(self, fd, name):
        r = self._k.check(abi.OP_GETSOCKOPT, fd, SOL_SOCKET, name, 4, outcap=4)
        return _checked_sockopt(name, int.from_bytes(r.out.ljust(4, b"\0"), "little",
                                                     signed=True))

    # -- identity ------------------------------------------------------------------------------
    @property
    def family(self):
        return _intenum(self._family, _socketmod.AddressFamily)

    @property
    def type(self):
        return _intenum(self._stype, _socketmod.SocketKind)

    @property
    def proto(self):
        return self._proto

    def fileno(self):
        return self._fd

    # -- blocking mode and timeout (enclave state; the host fd stays O_NONBLOCK) ----------
    @property
    def timeout(self):
        return self._timeout

    def gettimeout(self):
        return self._timeout

    def settimeout(self, value):
        if value is not None:
            if isinstance(value, float):
                if value != value:
                    raise ValueError("Invalid value NaN (not a number)")
            else:
                value = operator.index(value)      # CPython's TypeError for anything else
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        if self._fd < 0 or self._fd not in self._k.fds:
            # natively this is an fcntl on the fd: an fd closed elsewhere fails (EBADF)
            raise oserror(_errno.EBADF)
        self._timeout = value
        self._k.app_blocking[self._fd] = value is None

    def setblocking(self, flag):
        self.settimeout(None if flag else 0.0)

    def getblocking(self):
        return self._timeout != 0.0

    # -- the blocking rule ---------------------------------------------------------------------
    def _io(self, events, attempt, deadline=None, first=None, flags=0):
        """Finish a socket call by the blocking rule (see Kernel.blocking_io); ``first`` is the
        reply of the attempt the caller already made.  MSG_DONTWAIT in ``flags`` makes this
        one call non-blocking whatever the socket's mode, as the kernel does."""
        timeout = 0.0 if flags & MSG_DONTWAIT else self._timeout
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
            if timeout == 0.0 and (first is None or first.ret < 0):
                raise timeout_error()
        return self._k.blocking_io(self._fd, events, attempt, timeout, first)

    # -- calls --------------------------------------------------------------------------------
    def bind(self, address):
        raw = self._res.encode(self._family, address, "bind")
        self._k.check(abi.OP_BIND, self._fd, inbuf=raw)

    def listen(self, backlog=min(_socket.SOMAXCONN, 128)):
        self._k.check(abi.OP_LISTEN, self._fd, max(0, c_int(backlog)))

    def accept(self):
        fd = self._fd
        r = self._io(POLLIN, lambda: self._k.call(abi.OP_ACCEPT4, fd, SOCK_NONBLOCK |
                                                  SOCK_CLOEXEC, outcap=SOCKADDR_MAX))
        newfd = self._k.adopt_fd(r.ret, "accept")
        try:
            addr = decode_sockaddr(self._family, r.out, "accept", required=True)
        except IagoError:
            self._k.call(abi.OP_CLOSE, newfd)   # not the app's connection: give it back
            self._k.forget_fd(newfd)
            raise
        sock = self._plain._from_new_fd(newfd, self._family, self._stype, self._proto)
        return sock, addr

    def _connect(self, address) -> int:
        """0 or the errno of a failed connect; raises TimeoutError-as-EWOULDBLOCK via -1."""
        raw = self._res.encode(self._family, address, "connect")
        fd, k = self._fd, self._k
        if fd < 0:
            return _errno.EBADF
        r = k.call(abi.OP_CONNECT, fd, inbuf=raw)
        if r.ret >= 0:
            return 0
        err = -r.ret
        if err == _errno.EAGAIN and self._family == AF_UNIX and self._timeout is None:
            return self._connect_unix_backlog(raw)
        if err not in (_errno.EINPROGRESS, _errno.EINTR):
            return err
        if self._timeout == 0.0:
            return err
        if self._timeout is None:
            # A blocking connect natively ends inside the kernel, which also resets the
            # socket's state on failure (a later connect then fails as natively, not with
            # ECONNABORTED).  Asking connect again once the fd is writable gets exactly that:
            # EISCONN on success, the pending error (state reset) on failure.
            while True:
                k.wait_fd(fd, POLLOUT, None)
                r = k.call(abi.OP_CONNECT, fd, inbuf=raw)
                if r.ret >= 0 or r.ret == -_errno.EISCONN:
                    return 0
                if r.ret not in (-_errno.EALREADY, -_errno.EINPROGRESS, -_errno.EINTR):
                    return -r.ret
        # With a timeout CPython itself connects non-blocking, polls and reads SO_ERROR.
        if not k.wait_fd(fd, POLLOUT, time.monotonic() + self._timeout):
            return -1
        return self._getopt_int(fd, SO_ERROR)

    def _connect_unix_backlog(self, raw) -> int:
        """A blocking connect to a Unix listener whose backlog is full waits natively in the
        kernel until the server accepts (with a timeout CPython fails at once with EAGAIN, and
        so does this); the host fd is non-blocking, gets EAGAIN, and no fd event announces
        room.  So retry with a short backoff (1 ms doubling to 20 ms), in the enclave thread,
        until it connects or fails otherwise."""
        delay = 0.001
        while True:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
            r = self._k.call(abi.OP_CONNECT, self._fd, inbuf=raw)
            if r.ret >= 0:
                return 0
            if r.ret not in (-_errno.EAGAIN, -_errno.EINTR):
                return -r.ret

    def connect(self, address):
        err = self._connect(address)
        if err == -1:
            raise timeout_error()
        if err:
            raise oserror(err)

    def connect_ex(self, address):
        err = self._connect(address)
        return _errno.EWOULDBLOCK if err == -1 else err

    # (The class's send and recv are these fused with the transport's data path: see
    # socket_class and Transport.fused.)
    def send(self, data, flags=0):
        if type(data) is not bytes:
            data = _bytes_like(data)
        if len(data) > MAX_IO:
            data = data[:MAX_IO]
        return self._send_after(data, flags, self._k.data_out(abi.OP_SENDTO, self._fd, data,
                                                              flags))

    def _send_after(self, data, flags, ret):
        """send of ``data`` (at most MAX_IO bytes) after its first attempt took ``ret``."""
        if ret == len(data):
            return ret
        fd, k = self._fd, self._k
        if ret < 0:
            call = k._call
            ret = self._io(POLLOUT, lambda: call(abi.OP_SENDTO, fd, flags, inbuf=data),
                           first=Reply(ret, b"", b"", ()), flags=flags).ret
        if ret < len(data):
            if ret == 0:
                # a socket takes a byte of non-empty data or says EAGAIN: an app looping on
                # send() would spin for ever on this
                raise IagoError(f"host says a send of {len(data)} bytes took none")
            if self._timeout is None and not flags & MSG_DONTWAIT:
                # natively a blocking stream send returns only when all of it is queued
                return k.complete_write(fd, data, ret,
                                        lambda b: k._call(abi.OP_SENDTO, fd, flags, inbuf=b))
        return ret

    def sendall(self, data, flags=0):
        fd, k = self._fd, self._k
        # As CPython >= 3.5: the timeout bounds the whole sendall, not each send.
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        ret = None
        if type(data) is bytes and len(data) <= MAX_IO:
            ret = k.data_out(abi.OP_SENDTO, fd, data, flags)     # most often all of it
            if ret == len(data):
                return None
        m = memoryview(_bytes_like(data))
        call = k._call
        while True:
            chunk = m[:MAX_IO]
            if ret is None:
                ret = k.data_out(abi.OP_SENDTO, fd, chunk, flags)    # one checked crossing
            if ret < 0:
                ret = self._io(POLLOUT, lambda: call(abi.OP_SENDTO, fd, flags, inbuf=chunk),
                               deadline, Reply(ret, b"", b"", ()), flags).ret
            if ret == 0 and len(chunk):
                raise IagoError(f"host says a send of {len(chunk)} bytes took none (sendall "
                                f"would loop for ever)")
            m = m[ret:]
            if not len(m):
                return None
            ret = None

    def sendto(self, data, *args):
        if not 1 <= len(args) <= 2:
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        m = _bytes_like(data)          # as CPython: the data, then flags, then the address
        if len(args) == 1:
            flags, address = 0, args[0]
        else:
            flags, address = c_int(args[0]), args[1]
        raw = self._res.encode(self._family, address, "sendto")
        fd, call = self._fd, self._k.call
        return self._io(POLLOUT, lambda: call(abi.OP_SENDTO, fd, flags, inbuf=m,
                                              in2=raw), flags=flags).ret

    def recv(self, bufsize, flags=0):
        bufsize = operator.index(bufsize)
        if flags:
            flags = c_int(flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        n = bufsize if bufsize <= MAX_IO else MAX_IO
        if not flags:
            ret, data = self._k.data_in(abi.OP_RECVFROM, self._fd, n)    # one checked crossing
            if ret >= 0:
                return data
            return self._recv_after(n, flags, ret)
        return self._recv_after(n, flags, None)

    def _recv_after(self, n, flags, ret):
        """recv of ``n`` bytes (at most MAX_IO) after its first attempt said -errno (``ret``),
        or without one (None)."""
        fd, call = self._fd, self._k._call
        return self._io(POLLIN, lambda: call(abi.OP_RECVFROM, fd, n, flags, outcap=n),
                        first=None if ret is None else Reply(ret, b"", b"", ()),
                        flags=flags).out

    def recv_into(self, buffer, nbytes=0, flags=0):
        nbytes = operator.index(nbytes)
        m = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes == 0:
            nbytes = len(m)
        if nbytes > len(m):
            raise ValueError("buffer too small for requested bytes")
        n = min(nbytes, MAX_IO)
        if not flags:
            ret = self._k.data_into(abi.OP_RECVFROM, self._fd, n, m)   # one checked crossing
            if ret >= 0:
                return ret
            return self._recv_into_after(n, flags, ret, m)
        return self._recv_into_after(n, flags, None, m)

    def _recv_into_after(self, n, flags, ret, m):
        """recv_into ``m`` (a writable buffer of at least ``n`` bytes, n at most MAX_IO)
        after its first attempt said -errno (``ret``), or without one (None)."""
        fd, call = self._fd, self._k._call
        ret = self._io(POLLIN, lambda: call(abi.OP_RECVFROM, fd, n, flags, outcap=n, into=m),
                       first=None if ret is None else Reply(ret, b"", b"", ()),
                       flags=flags).ret
        return self._stream_count(ret, n)

    def _stream_count(self, ret: int, n: int) -> int:
        """A count of received bytes: with MSG_TRUNC a datagram's length may exceed the ``n``
        asked for (the transport allows it), a stream's never does."""
        if ret > n and self._stype == SOCK_STREAM:
            raise IagoError(f"host returned {ret} for recvfrom of {n} bytes on a stream")
        return ret

    def _has_sender(self) -> bool:
        """Whether the kernel always reports a received datagram's sender: an Internet
        datagram or raw socket does; a stream (no address: None) or Unix socket (an unbound
        sender has none) may not."""
        return self._family in (AF_INET, AF_INET6) and self._stype in (SOCK_DGRAM, SOCK_RAW)

    def recvfrom(self, bufsize, flags=0):
        bufsize = operator.index(bufsize)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        n = min(bufsize, MAX_IO)
        fd, call = self._fd, self._k.call
        r = self._io(POLLIN, lambda: call(abi.OP_RECVFROM, fd, n, flags, outcap=n,
                                          out2cap=SOCKADDR_MAX), flags=flags)
        return r.out, decode_sockaddr(self._family, r.out2, "recvfrom", self._has_sender())

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        nbytes = operator.index(nbytes)
        m = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes == 0:
            nbytes = len(m)
        if nbytes > len(m):
            raise ValueError("nbytes is greater than the length of the buffer")
        n = min(nbytes, MAX_IO)
        fd, call = self._fd, self._k.call
        r = self._io(POLLIN, lambda: call(abi.OP_RECVFROM, fd, n, flags, outcap=n,
                                          out2cap=SOCKADDR_MAX, into=m), flags=flags)
        return self._stream_count(r.ret, n), decode_sockaddr(self._family, r.out2,
                                                             "recvfrom_into",
                                                             self._has_sender())

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None, /):
        """One OP_SENDMSG: the buffers gathered in the enclave, the control messages built
        here as ``struct cmsghdr`` records (SCM_RIGHTS fds are the app's own host fds)."""
        try:
            bufs = [_bytes_like(b) for b in buffers]
        except TypeError as e:
            if "bytes-like" in str(e):
                raise
            raise TypeError("sendmsg() argument 1 must be an iterable") from None
        data = bufs[0] if len(bufs) == 1 else b"".join(bufs)
        ctl = []
        try:
            items = list(ancdata)
        except TypeError:
            raise TypeError("sendmsg() argument 2 must be an iterable") from None
        for item in items:
            try:
                level, ctype, cdata = item
            except (TypeError, ValueError):
                n = len(item) if hasattr(item, "__len__") else None
                raise TypeError("[sendmsg() ancillary data items]() argument must be "
                                "sequence of length 3" + (f", not {n}" if n is not None
                                                           else "")) from None
            level, ctype, cdata = c_int(level), c_int(ctype), bytes(_bytes_like(cdata))
            pad = _cmsg_space(len(cdata)) - _CMSG.size - len(cdata)
            ctl.append(_CMSG.pack(_CMSG.size + len(cdata), level, ctype) + cdata + bytes(pad))
        flags = c_int(flags)
        name = b"" if address is None else self._res.encode(self._family, address, "sendmsg")
        in2 = name + b"".join(ctl)
        fd, k = self._fd, self._k
        call = k.call
        ret = self._io(POLLOUT, lambda: call(abi.OP_SENDMSG, fd, flags, len(name), inbuf=data,
                                             in2=in2), flags=flags).ret
        if ret < len(data) and self._timeout is None and not flags & MSG_DONTWAIT:
            # a blocking stream sendmsg returns when all is queued; the control data went
            # with the first part
            return k.complete_write(fd, data, ret, lambda b: call(abi.OP_SENDTO, fd, flags,
                                                                  inbuf=b))
        return ret

    def _recvmsg(self, n, ancbufsize, flags, into):
        """One OP_RECVMSG by the blocking rule: (Reply, control messages, msg_flags, address),
        every field of the host's reply checked."""
        flags = c_int(flags)
        fd, k = self._fd, self._k
        call = k.call
        r = self._io(POLLIN, lambda: call(abi.OP_RECVMSG, fd, n, flags, ancbufsize, outcap=n,
                                          out2cap=abi.MSG_NAME_MAX + ancbufsize, into=into),
                     flags=flags)
        msg_flags, namelen = r.args[4], r.args[5]
        if not 0 <= msg_flags <= 0xFFFFFFFF or not 0 <= namelen <= abi.MSG_NAME_MAX \
                or len(r.out2) < abi.MSG_NAME_MAX:
            raise IagoError(f"host's recvmsg reply has msg_flags {msg_flags:#x}, a {namelen}-"
                            f"byte name and {len(r.out2)} bytes of name and control data")
        anc = self._cmsgs(r.out2[abi.MSG_NAME_MAX:], msg_flags)
        addr = decode_sockaddr(self._family, r.out2[:namelen], "recvmsg", self._has_sender())
        return r, anc, msg_flags, addr

    def _cmsgs(self, ctl: bytes, msg_flags: int) -> list:
        """The control messages the host returned, as CPython's (level, type, data) list;
        checked as hostile: lengths, and the fds of SCM_RIGHTS, which enter the fd table."""
        out, pos, cut = [], 0, bool(msg_flags & MSG_CTRUNC)
        while pos + _CMSG.size <= len(ctl):
            clen, level, ctype = _CMSG.unpack_from(ctl, pos)
            end = pos + clen
            if clen < _CMSG.size or (end > len(ctl) and not cut):
                raise IagoError(f"host's recvmsg control message at {pos} claims {clen} "
                                f"bytes of {len(ctl)}")
            data = ctl[pos + _CMSG.size:min(end, len(ctl))]
            if level == SOL_SOCKET and ctype == SCM_RIGHTS:
                if len(data) % 4 and not cut:
                    raise IagoError(f"host's SCM_RIGHTS message holds {len(data)} bytes")
                fds = array.array("i", data[:len(data) // 4 * 4])
                for fd in fds:
                    self._k.adopt_fd(fd, "recvmsg SCM_RIGHTS", raw=True)
            elif level == SOL_SOCKET and ctype == SCM_CREDENTIALS and not cut \
                    and len(data) != _CREDS.size:
                raise IagoError(f"host's SCM_CREDENTIALS message holds {len(data)} bytes")
            out.append((level, ctype, data))
            pos += _cmsg_space(clen - _CMSG.size)
        if pos < len(ctl) and not cut and len(ctl) - pos >= _CMSG.size:
            raise IagoError("host's recvmsg control data has a stray tail")
        return out

    def recvmsg(self, bufsize, ancbufsize=0, flags=0, /):
        bufsize, ancbufsize = operator.index(bufsize), operator.index(ancbufsize)
        if bufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if ancbufsize < 0:
            raise ValueError("invalid ancillary data buffer length")
        r, anc, msg_flags, addr = self._recvmsg(min(bufsize, MAX_IO), ancbufsize, flags, None)
        return r.out, anc, msg_flags, addr

    def recvmsg_into(self, buffers, ancbufsize=0, flags=0, /):
        ancbufsize = operator.index(ancbufsize)
        if ancbufsize < 0:
            raise ValueError("invalid ancillary data buffer length")
        try:
            views = [memoryview(b).cast("B") for b in buffers]
        except TypeError:
            raise TypeError("recvmsg_into() argument 1 must be an iterable of single-segment "
                            "read-write buffers") from None
        if any(v.readonly for v in views):
            raise TypeError("recvmsg_into() argument 1 must be an iterable of single-segment "
                            "read-write buffers")
        total = sum(len(v) for v in views)
        n = min(total, MAX_IO)
        into = views[0] if len(views) == 1 else bytearray(n)
        r, anc, msg_flags, addr = self._recvmsg(n, ancbufsize, flags, into)
        if len(views) > 1:                  # scatter, as the kernel's iovec would
            left, pos = min(r.ret, n), 0
            for v in views:
                take = min(len(v), left - pos)
                if take <= 0:
                    break
                v[:take] = into[pos:pos + take]
                pos += take
        return r.ret, anc, msg_flags, addr

    def shutdown(self, how):
        self._k.check(abi.OP_SHUTDOWN, self._fd, as_int(how))

    def setsockopt(self, level, optname, value, optlen=None, /):
        if optlen is not None:
            if value is not None:
                raise TypeError("setsockopt() takes 3 or 4 arguments with None as value")
            raw = bytes(operator.index(optlen))
        elif isinstance(value, int):
            # as CPython: AF_VSOCK options are 64-bit, all others a C int
            raw = struct.pack("=Q", value) if level == AF_VSOCK else struct.pack("=i", value)
        else:
            raw = bytes(memoryview(value).cast("B"))
        self._k.check(abi.OP_SETSOCKOPT, self._fd, level, optname, inbuf=raw)

    def getsockopt(self, level, optname, buflen=None, /):
        if buflen is None:
            if level == AF_VSOCK:
                r = self._k.check(abi.OP_GETSOCKOPT, self._fd, level, optname, 8, outcap=8)
                return int.from_bytes(r.out.ljust(8, b"\0"), "little")
            r = self._k.check(abi.OP_GETSOCKOPT, self._fd, level, optname, 4, outcap=4)
            value = int.from_bytes(r.out.ljust(4, b"\0"), "little", signed=True)
            return _checked_sockopt(optname, value) if level == SOL_SOCKET else value
        if not 0 < buflen <= 1024:
            raise OSError("getsockopt buflen out of range")
        return self._k.check(abi.OP_GETSOCKOPT, self._fd, level, optname, buflen,
                             outcap=buflen).out

    def getsockname(self):
        r = self._k.check(abi.OP_GETSOCKNAME, self._fd, outcap=SOCKADDR_MAX)
        return decode_sockaddr(self._family, r.out, "getsockname", required=True)

    def getpeername(self):
        r = self._k.check(abi.OP_GETPEERNAME, self._fd, outcap=SOCKADDR_MAX)
        return decode_sockaddr(self._family, r.out, "getpeername", required=True)

    # -- lifetime ------------------------------------------------------------------------------
    def _real_close(self, _ss=None):
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                self._k.close(fd)
            except ConnectionResetError:
                pass           # as CPython: a reset peer is no error at close

    def detach(self):
        self._closed = True
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with self._k._lock:
                self._k.raw_fds.add(fd)   # a bare int in the app's hands from now on
        return fd

    def dup(self):
        r = self._k.check(abi.OP_DUP, self._fd)
        newfd = self._k.adopt_fd(r.ret, "dup")
        sock = self._plain._from_new_fd(newfd, self._family, self._stype, self._proto)
        sock.settimeout(self._timeout)
        return sock

    def __del__(self):
        # As CPython's sock_finalize: warn (which may raise under -W error: reported as
        # unraisable, as natively), then close the fd in any case.
        if getattr(self, "_fd", -1) >= 0:
            try:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            finally:
                try:
                    self._real_close()
                except OSError:
                    pass


class SocketModule:
    """The routed ``socket`` module functions."""

    def __init__(self, kernel: Kernel, cls):
        self.kernel = kernel
        self.cls = cls
        self.resolver = cls._res

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        return self.resolver.getaddrinfo(host, port, family, type, proto, flags)

    def socketpair(self, family=None, type=_socket.SOCK_STREAM, proto=0):
        if family is None:
            family = AF_UNIX
        k = self.kernel
        r = k.check(abi.OP_SOCKETPAIR, family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto,
                    outcap=8)
        if len(r.out) != 8:
            raise IagoError(f"host returned {len(r.out)} bytes for socketpair's two fds")
        a, b = struct.unpack("=ii", r.out)
        if a == b:
            raise IagoError("host returned the same fd twice for socketpair")
        k.adopt_fd(a, "socketpair")
        k.adopt_fd(b, "socketpair")
        return (self.cls._from_new_fd(a, family, type, proto),
                self.cls._from_new_fd(b, family, type, proto))

    def fromfd(self, fd, family, type, proto=0):
        r = self.kernel.check(abi.OP_DUP, operator.index(fd))
        nfd = self.kernel.adopt_fd(r.ret, "dup")
        return self.cls(family, type, proto, nfd)

    def close(self, fd, /):
        self.kernel.close(operator.index(fd))

    def dup(self, fd, /):
        r = self.kernel.check(abi.OP_DUP, operator.index(fd))
        return self.kernel.adopt_fd(r.ret, "dup", raw=True)

    def gethostbyname(self, hostname, /):
        records = self.resolver.getaddrinfo(hostname, None, AF_INET)
        return records[0][4][0]


def socket_class(kernel: Kernel):
    """The class patched in as ``socket.socket`` for this kernel.  Named like the stdlib's so
    that reprs (``<socket.socket fd=...>``) read the same inside and outside the enclave."""
    ns = {"__slots__": (), "_k": kernel, "_res": Resolver(kernel), "__module__": "socket",
          "__doc__": EnclaveSocket.__doc__}
    # send / recv: the common case in one frame with the C crossing.
    fused = getattr(kernel.transport, "fused", None)
    if fused is not None:
        ns["send"] = fused("send", EnclaveSocket.send, EnclaveSocket._send_after)
        ns["recv"] = fused("recv", EnclaveSocket.recv, EnclaveSocket._recv_after)
        ns["recv_into"] = fused("recv_into", EnclaveSocket.recv_into,
                                EnclaveSocket._recv_into_after)
    cls = type("socket", (EnclaveSocket,), ns)
    cls._plain = cls       # what accept() and dup() make, also from a subclass (TLS)
    return cls
