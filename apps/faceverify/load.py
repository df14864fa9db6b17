"""Closed-loop workload generator for the face verification server (the paper's client side).

Untrusted client code: it runs outside any enclave (plain python), as Eleos's workload
generator ran on another machine.  N client threads each keep one request in flight: send,
wait for the reply, send the next.  Requests are built and sealed before the clock starts
(a pool, replayed round-robin from a random start per thread), so the client spends its time
on the network and on opening replies, not on LBP or AES.

Each request claims an identity drawn uniformly from the server's whole database (the access
pattern that makes a database larger than the EPC page) and carries a genuine probe of it or
an impostor's.  Real faces (ids 0..99) get image-derived probes; synthetic identities get
probes resampled from their block statistics (see data.py).

Prints verifications/s, latency percentiles and accuracy; ``--json PATH`` writes them.
``python -m apps.faceverify.load -p PORT --db-mb 80 --threads 100 --duration 10``
"""
from __future__ import annotations

if __package__ in (None, ""):
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from apps.faceverify import data, features, protocol as P
from apps.faceverify.server import identities_for_mb


@dataclass
class Request:
    frame: bytes
    nonce: bytes
    genuine: bool
    real: bool          # a real lfw face (else a synthetic identity)


def build_pool(n: int, identities: int, genuine_share: float, client_id: int, seed: int,
               master: bytes = P.DEMO_MASTER_KEY, size: int = data.FACE_SIZE,
               block: int = features.DEFAULT_BLOCK, data_seed: int = data.DEFAULT_SEED,
               mode: str = "template") -> list[Request]:
    """``n`` sealed requests for ``client_id``; deterministic given ``seed`` (except nonces).

    To page a database larger than the EPC the way random users would, the pool must touch
    most of it: a benchmark asks for about as many requests as there are identities."""
    session = P.ClientSession(client_id, master)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, identities, size=n)
    genuine = rng.random(n) < genuine_share
    real = ids < data.N_FACES
    if mode == "image" and not real.all():
        raise ValueError("image mode needs real faces only: use --identities 100")
    synthetic = {}
    if (~real).any():
        probes = data.synthetic_probes(ids[~real], genuine[~real], rng, size, block, data_seed)
        synthetic = dict(zip(np.nonzero(~real)[0].tolist(), probes))
    pool = []
    for k in range(n):
        identity, is_genuine = int(ids[k]), bool(genuine[k])
        if real[k]:
            image = data.probe_image(identity, is_genuine, rng, size)
            if mode == "image":
                frame, nonce = session.image_request(identity, image)
            else:
                frame, nonce = session.template_request(identity, features.extract(image, block))
        else:
            frame, nonce = session.template_request(identity, synthetic[k])
        pool.append(Request(frame, nonce, is_genuine, bool(real[k])))
    return pool


@dataclass
class ThreadResult:
    latencies_ns: list[int] = field(default_factory=list)
    outcomes: list[tuple[bool, bool, bool]] = field(default_factory=list)  # genuine, real, accepted
    errors: int = 0


def _client(address: tuple[str, int], session: P.ClientSession, pool: list[Request], start: int,
            clock_window: dict, result: ThreadResult, ready: threading.Barrier,
            thread_init=None) -> None:
    """One closed-loop client: connect, wait for the others, then request/reply until the end."""
    try:
        if thread_init is not None:
            thread_init()
        sock = socket.create_connection(address, timeout=60)
    except OSError:
        result.errors += 1
        ready.abort()
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat, out = result.latencies_ns, result.outcomes
    i, n = start, len(pool)
    clock = time.perf_counter_ns
    try:
        ready.wait()
        # Read after the barrier: the main thread sets the window once everyone is connected.
        measure_ns, end_ns = clock_window["measure_ns"], clock_window["end_ns"]
        while True:
            req = pool[i % n]
            i += 1
            t0 = clock()
            if t0 >= end_ns:
                break
            sock.sendall(req.frame)
            # A reply is 43 bytes: one recv nearly always holds the whole frame, which saves
            # the client a syscall and leaves more of a shared machine to the server.
            got = sock.recv(4096)
            if len(got) >= P.LEN.size and len(got) == P.LEN.size + P.LEN.unpack_from(got)[0]:
                body = got[P.LEN.size:]
            else:
                body = _finish_frame(sock, got)
            t1 = clock()
            try:
                status, accepted, _ = session.open_reply(body, req.nonce)
            except (P.ServerError, P.ProtocolError):
                result.errors += 1
                continue
            if status != P.OK:
                result.errors += 1
                continue
            if t0 >= measure_ns:
                lat.append(t1 - t0)
                out.append((req.genuine, req.real, accepted))
    except (OSError, threading.BrokenBarrierError):
        result.errors += 1
    finally:
        sock.close()


def _finish_frame(sock: socket.socket, got: bytes) -> bytes:
    """The rest of a reply frame whose first ``got`` bytes have arrived."""
    if not got:
        raise ConnectionError("connection closed by the server")
    if len(got) < P.LEN.size:
        got += P.recv_exact(sock, P.LEN.size - len(got))
    (n,) = P.LEN.unpack_from(got)
    if n > P.MAX_FRAME or len(got) > P.LEN.size + n:
        raise P.ProtocolError("unexpected reply framing")
    return got[P.LEN.size:] + P.recv_exact(sock, P.LEN.size + n - len(got))


def run(address: tuple[str, int], identities: int, threads: int = 100, duration: float = 10.0,
        warmup: float = 2.0, genuine_share: float = 0.5, pool_size: int = 2048, seed: int = 1,
        client_id: int = 1, master: bytes = P.DEMO_MASTER_KEY, mode: str = "template",
        pool: list[Request] | None = None, size: int = data.FACE_SIZE,
        block: int = features.DEFAULT_BLOCK, data_seed: int = data.DEFAULT_SEED,
        thread_init=None) -> dict:
    """Drive the server for warmup + duration seconds; returns the summary dict.

    ``pool``: requests already built by build_pool for this client id (a benchmark reuses
    one pool across servers; otherwise one is built here).  ``thread_init``: called first in
    each client thread (the benchmark makes them SCHED_BATCH with it)."""
    if pool is None:
        pool = build_pool(pool_size, identities, genuine_share, client_id, seed, master, size,
                          block, data_seed, mode)
    pool_size = len(pool)
    session = P.ClientSession(client_id, master)
    results = [ThreadResult() for _ in range(threads)]
    ready = threading.Barrier(threads + 1)
    starts = np.random.default_rng(seed + 1).integers(0, pool_size, size=threads)
    window: dict = {}
    workers = [threading.Thread(target=_client, daemon=True,
                                args=(address, session, pool, int(starts[k]), window,
                                      results[k], ready, thread_init))
               for k in range(threads)]
    for th in workers:
        th.start()
    t0 = time.perf_counter_ns()
    window["measure_ns"] = t0 + int(warmup * 1e9)
    window["end_ns"] = t0 + int((warmup + duration) * 1e9)
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    for th in workers:
        th.join()
    return summarize(results, duration, threads, identities, genuine_share, pool_size, mode)


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def summarize(results: list[ThreadResult], duration: float, threads: int, identities: int,
              genuine_share: float, pool_size: int, mode: str = "template") -> dict:
    lat = np.array([x for r in results for x in r.latencies_ns], dtype=np.int64)
    outcomes = np.array([o for r in results for o in r.outcomes], dtype=bool).reshape(-1, 3)
    genuine, real, accepted = outcomes[:, 0], outcomes[:, 1], outcomes[:, 2]
    pct = (lambda q: float(np.percentile(lat, q)) / 1e3) if lat.size else (lambda q: None)
    return {
        "verifications": int(lat.size),
        "duration_s": duration,
        "verifications_per_s": lat.size / duration,
        "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                       "mean": float(lat.mean()) / 1e3 if lat.size else None},
        "accuracy": {
            "tpr": _rate(int((genuine & accepted).sum()), int(genuine.sum())),
            "fpr": _rate(int((~genuine & accepted).sum()), int((~genuine).sum())),
            "real_faces": {
                "requests": int(real.sum()),
                "tpr": _rate(int((genuine & real & accepted).sum()), int((genuine & real).sum())),
                "fpr": _rate(int((~genuine & real & accepted).sum()), int((~genuine & real).sum())),
            },
        },
        "errors": sum(r.errors for r in results),
        "threads": threads,
        "identities": identities,
        "genuine_share": genuine_share,
        "pool": pool_size,
        "probe": mode,
    }


def format_summary(s: dict) -> str:
    lat, acc = s["latency_us"], s["accuracy"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return "\n".join([
        f"verifications/s  {s['verifications_per_s']:.0f}  ({s['verifications']} in "
        f"{s['duration_s']:.1f} s, {s['threads']} threads, {s['identities']} identities)",
        f"latency us       p50 {fmt(lat['p50'], '.0f')}  p90 {fmt(lat['p90'], '.0f')}  "
        f"p99 {fmt(lat['p99'], '.0f')}  p99.9 {fmt(lat['p999'], '.0f')}",
        f"accuracy         TPR {fmt(acc['tpr'], '.4f')}  FPR {fmt(acc['fpr'], '.4f')}  "
        f"(real faces: {acc['real_faces']['requests']} requests, TPR "
        f"{fmt(acc['real_faces']['tpr'], '.4f')}, FPR {fmt(acc['real_faces']['fpr'], '.4f')})",
        f"errors           {s['errors']}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="faceverify-load", description=__doc__.split("\n")[0])
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--db-mb", type=float, default=0.0, help="the server's --db-mb")
    size.add_argument("--identities", type=int, default=0, help="the server's --identities")
    ap.add_argument("--threads", type=int, default=100, help="closed-loop clients (Eleos: 100)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    ap.add_argument("--genuine", type=float, default=0.5, help="share of genuine probes")
    ap.add_argument("--pool", type=int, default=0,
                    help="distinct pre-sealed requests (default: as many as identities, >= 2048)")
    ap.add_argument("--probe", choices=("template", "image"), default="template",
                    help="send the histogram, or the image for the server to describe")
    ap.add_argument("--block", type=int, default=features.DEFAULT_BLOCK,
                    help="the server's --block")
    ap.add_argument("--face-size", type=int, default=data.FACE_SIZE,
                    help="the server's --face-size")
    ap.add_argument("--data-seed", type=int, default=data.DEFAULT_SEED,
                    help="the server's --seed (synthetic identities)")
    ap.add_argument("--seed", type=int, default=1, help="the workload's seed")
    ap.add_argument("--client-id", type=int, default=1)
    ap.add_argument("--master-key", default=P.DEMO_MASTER_KEY.hex())
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    identities = args.identities or identities_for_mb(args.db_mb, args.face_size, args.block)
    args.pool = args.pool or max(2048, identities)
    summary = run((args.host, args.port), identities, args.threads, args.duration, args.warmup,
                  args.genuine, args.pool, args.seed, args.client_id,
                  bytes.fromhex(args.master_key), args.probe, size=args.face_size,
                  block=args.block, data_seed=args.data_seed)
    print(format_summary(summary), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
