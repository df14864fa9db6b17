"""TRUSTED side: TLS terminated inside the enclave.

``ssl.SSLSocket``'s C object reads and writes its fd itself, so over a host fd the TLS keys
and the plaintext would live outside the enclave's routed world.  Here the TLS state machine
runs on memory BIOs (OpenSSL's record layer over two in-enclave buffers, the C object behind
``ssl.SSLObject``) and only ciphertext crosses the boundary, through the enclave socket's own
routed ``recv``/``send``.

The app's code is unchanged: ``SSLContext.wrap_socket`` on an enclave socket returns an
:class:`ssl.SSLSocket` (a subclass whose socket half is the enclave socket), so
``http.client`` over HTTPS, ``ssl`` servers, ``asyncio``'s and ``socketserver``'s TLS work as
they do natively.  All of ``ssl.SSLSocket``'s Python logic (argument checks, ragged EOFs,
``unwrap``, ``accept``) is CPython's own; what is replaced is only the object it drives
(``_sslobj``): :class:`BioPump`, which turns "want read"/"want write" into routed socket I/O
that honours the socket's blocking mode and timeout.
"""
from __future__ import annotations

import _ssl
import ssl as _sslmod
import time

_RECORD = 16 * 1024 + 2048        # the largest TLS record body (RFC 8446: 2^14 + 2048)
_HEADER = 5                       # a TLS record header: type, version, length
_RealWrapSocket = _ssl._SSLContext._wrap_socket


class BioPump:
    """What ``SSLSocket._sslobj`` is for an enclave socket: the C ``_SSLSocket`` in BIO mode,
    pumped through the socket.  Every other attribute is the C object's."""

    def __init__(self, context, sock, server_side, server_hostname, owner, session, base):
        incoming, outgoing = _sslmod.MemoryBIO(), _sslmod.MemoryBIO()
        obj = context._wrap_bio(incoming, outgoing, server_side, server_hostname,
                                owner=owner, session=session)
        d = self.__dict__
        d["_obj"], d["_in"], d["_out"], d["_sock"], d["_base"] = \
            obj, incoming, outgoing, sock, base
        d["_unsent"] = b""
        d["_head"], d["_left"] = b"", 0     # where _fill is in the incoming record stream

    def __getattr__(self, name):
        return getattr(self._obj, name)

    def __setattr__(self, name, value):           # session, context: the C object's
        setattr(self._obj, name, value)

    # -- the pump -------------------------------------------------------------------------
    def _deadline(self):
        t = self._sock._timeout
        return None if not t else time.monotonic() + t

    def _flush(self, deadline, what) -> None:
        """Send what the TLS engine produced.  A non-blocking socket that cannot take it all
        keeps the rest for the next call and raises SSLWantWriteError, as OpenSSL does."""
        data = self._unsent + self._out.read()
        self.__dict__["_unsent"] = b""
        base, sock = self._base, self._sock
        while data:
            try:
                if deadline is not None and deadline <= time.monotonic():
                    raise TimeoutError
                n = base.send(sock, data)
            except BlockingIOError:
                self.__dict__["_unsent"] = data
                raise _sslmod.SSLWantWriteError(_ssl.SSL_ERROR_WANT_WRITE,
                                                "The operation did not complete (write)")
            except TimeoutError:
                self.__dict__["_unsent"] = data
                raise TimeoutError(f"The {what} operation timed out") from None
            data = data[n:]

    def _fill(self, deadline, what) -> None:
        """Read ciphertext into the engine (b"" from the peer: EOF), never past the end of
        the current TLS record (a 5-byte header, then the length it gives), as OpenSSL's
        socket BIO reads: what follows a close_notify is the app's, in plain, after unwrap.
        Raises SSLWantReadError where a non-blocking socket has nothing, TimeoutError when
        the time is up."""
        base, sock, d = self._base, self._sock, self.__dict__
        head, left = d["_head"], d["_left"]
        want = _HEADER - len(head) if left == 0 else min(left, _RECORD)
        try:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                saved = sock._timeout
                sock._timeout = remaining
                try:
                    data = base.recv(sock, want)
                finally:
                    sock._timeout = saved
            else:
                data = base.recv(sock, want)
        except BlockingIOError:
            raise _sslmod.SSLWantReadError(_ssl.SSL_ERROR_WANT_READ,
                                           "The operation did not complete (read)") from None
        except TimeoutError:
            raise TimeoutError(f"The {what} operation timed out") from None
        if not data:
            self._in.write_eof()
            return
        self._in.write(data)
        if left:
            d["_left"] = left - len(data)
        else:
            head += data
            if len(head) == _HEADER:
                d["_left"], head = int.from_bytes(head[3:5], "big"), b""
            d["_head"] = head

    def _pump(self, what, fn, *args):
        deadline = self._deadline()
        if self._unsent:
            self._flush(deadline, what)
        while True:
            try:
                ret = fn(*args)
            except _sslmod.SSLWantReadError:
                self._flush(deadline, what)        # the peer may be waiting for us first
                self._fill(deadline, what)
                continue
            except _sslmod.SSLWantWriteError:
                self._flush(deadline, what)
                continue
            except _sslmod.SSLError:
                # a failed handshake leaves its alert in the engine: the peer must get it
                try:
                    self._flush(deadline, what)
                except (OSError, _sslmod.SSLError):
                    pass
                raise
            self._flush(deadline, what)
            return ret

    def do_handshake(self):
        return self._pump("handshake", self._obj.do_handshake)

    def _pump_data(self, what, fn, *args):
        """read/write as the C module's: a socket error under SSL_read_ex/SSL_write_ex (a
        reset, a broken pipe) is SSL_ERROR_SYSCALL with a 0 return, which it reports as
        SSLEOFError, "EOF occurred in violation of protocol" (so ``SSLSocket.read`` with
        ``suppress_ragged_eofs`` returns b"", and a write that meets the peer's reset after
        its alert raises an SSLError), not as the OSError.  Handshake and shutdown return -1
        and report the OSError itself, as ``_pump`` lets them."""
        try:
            return self._pump(what, fn, *args)
        except (_sslmod.SSLError, TimeoutError):
            raise
        except OSError:
            raise _sslmod.SSLEOFError(_ssl.SSL_ERROR_EOF,
                                      "EOF occurred in violation of protocol") from None

    def read(self, len=1024, buffer=None):
        if buffer is not None:
            return self._pump_data("read", self._obj.read, len, buffer)
        return self._pump_data("read", self._obj.read, len)

    def write(self, data):
        return self._pump_data("write", self._obj.write, data)

    def shutdown(self):
        """As the C object's shutdown (``SSLSocket.unwrap``): close_notify both ways, then
        the socket, now plain, is the app's again."""
        self._pump("shutdown", self._obj.shutdown)
        return self._sock


def patches(socket_class) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement): ``SSLContext`` wraps enclave sockets in the enclave."""

    class SSLSocket(_sslmod.SSLSocket, socket_class):
        __doc__ = _sslmod.SSLSocket.__doc__
        __module__ = "ssl"

        @classmethod
        def _create(cls, sock, *args, **kwargs):
            self = super()._create(sock, *args, **kwargs)
            self._k.own_fd(self._fd)      # the old object's detach() handed the fd out
            return self

    def _wrap_socket(context, sock, server_side, server_hostname=None, *, owner=None,
                     session=None):
        if isinstance(sock, socket_class):
            return BioPump(context, sock, server_side, server_hostname, owner, session,
                           socket_class)
        return _RealWrapSocket(context, sock, server_side, server_hostname, owner=owner,
                               session=session)

    return [(_sslmod.SSLContext, "sslsocket_class", SSLSocket),
            (_sslmod.SSLContext, "_wrap_socket", _wrap_socket)]


__all__ = ["BioPump", "patches"]
