"""Hash search benchmark: top-10 latency, batch throughput, memory, recall.

Run from the repository root::

    python -m benchmarks.search                 # 1M and 10M nodules x 3 x 64 bits
    python -m benchmarks.search --quick         # 100K and 1M, fewer queries
    python -m benchmarks.search --sizes 2M --queries 200

Side by side for each size and two code distributions (``uniform`` random
bits; ``clustered``: nodules near a few hundred centres, each bit flipped with
probability 1/8, as real codes are clustered):

- ``ours c2f``   ``storage.index.HashIndex`` numpy backend, 64-bit middle coarse
                 pass, pool 1,000, joint-distance rerank;
- ``ours c2f + class filter``  the same, restricted to nodules of one of 8
                 labels (the predicted-size-class filter);
- ``ours flat fused``  the same index ranking every nodule by the joint
                 distance in one compiled pass (``storage.index.fused``, numba);
- ``ours flat numpy-only``  the same exact search without numba (the fallback);
- ``faiss flat`` ``faiss.IndexBinaryFlat`` on the same 192-bit codes;
- ``numpy naive``  ``bitwise_count(codes ^ q).sum(1)`` then ``argpartition``;
- ``torch c2f``  our torch backend on CUDA (compiled), or ``no CUDA``; with
                 ``--torch-cpu`` also eager on the CPU (slow, for reference).

Latency is one query at a time (p50/p99 over ``--queries``); throughput is one
call with a batch of ``--batch`` queries; ``x faiss`` is faiss's p50 over the
method's. ``recall@10`` compares a method's
top 10 with the exact joint-distance top 10, counting ties: a returned nodule
is a hit when its joint distance is at most the exact 10th distance.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage.index import HashIndex, fused
from storage.index.numpy_backend import joint

K = 10
N_BITS = 64
CODE_BYTES = 3 * N_BITS // 8


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    size: str
    data: str
    method: str
    p50_ms: float | None
    p99_ms: float | None
    batch_qps: float | None
    bytes_per_nodule: float | None
    recall_at_10: float | None
    note: str = ""


def parse_size(text: str) -> int:
    """``"10M"`` → 10_000_000, ``"100K"`` → 100_000, ``"5000"`` → 5000."""
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def make_codes(
    rng: np.random.Generator, n: int, kind: str, centres: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint8]:
    """``(n, 24)`` uint8 code rows: three little-endian 64-bit words per nodule."""
    words = np.empty((n, 3), np.uint64)
    step = 1 << 20
    for s in range(0, n, step):
        m = min(step, n - s)
        r = rng.integers(0, 2**64 - 1, size=(m, 3), dtype=np.uint64, endpoint=True)
        if kind == "clustered":
            noise = r
            for _ in range(2):  # AND of three words: each bit set with p = 1/8
                noise &= rng.integers(0, 2**64 - 1, size=(m, 3), dtype=np.uint64, endpoint=True)
            r = centres[rng.integers(0, len(centres), size=m)] ^ noise
        words[s : s + m] = r
    return words.view(np.uint8).reshape(n, CODE_BYTES)


def timed(fn: Callable[[], object], repeats: int) -> npt.NDArray[np.float64]:
    """Wall times in ms of ``repeats`` calls (after one warm-up call)."""
    fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def recall(exact_D: npt.NDArray[np.int32], got: npt.NDArray[np.int32]) -> float:
    """Tie-aware recall@k from joint distances of the exact and returned top k."""
    cut = exact_D[:, -1:]
    return float(((got >= 0) & (got <= cut)).sum() / exact_D.size)


def joint_of(
    index: HashIndex, q: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.int32]:
    """Joint distances ``(nq, k)`` of returned ids (rows = ids here) to their queries."""
    out = np.full(ids.shape, -1, np.int32)
    qw = index._query_words(q)
    for i in range(len(ids)):
        valid = ids[i] >= 0
        out[i, valid] = joint(qw[i], index._rows.words[:, ids[i, valid]])
    return out


def bench_size(n: int, label: str, kind: str, args: argparse.Namespace) -> list[Row]:
    """All methods on one generated data set."""
    rng = np.random.default_rng(args.seed)
    centres = rng.integers(0, 2**64 - 1, size=(args.centres, 3), dtype=np.uint64, endpoint=True)
    codes = make_codes(rng, n, kind, centres)
    queries = make_codes(rng, max(args.queries, args.batch), kind, centres)
    ids = np.arange(n, dtype=np.int64)
    rows: list[Row] = []
    index = HashIndex(N_BITS, n_threads=args.threads)
    index.add(ids, codes, labels=rng.integers(0, 8, n))  # labels: a predicted size class
    nq, nslow = args.queries, max(3, args.queries // 10)
    single = [queries[i : i + 1] for i in range(nq)]

    def latency(
        search: Callable[[npt.NDArray[np.uint8]], object], count: int
    ) -> npt.NDArray[np.float64]:
        it = itertools.cycle(single[:count])
        return timed(lambda: search(next(it)), count)

    def batch_qps(search: Callable[[npt.NDArray[np.uint8]], object], size: int) -> float:
        t = timed(lambda: search(queries[:size]), 1)[0]
        return size / (t / 1e3)

    n_exact = min(nslow, 20)
    exact_D, _ = index.search(queries[:n_exact], K, pool=0)

    def add_row(
        method: str,
        lat: npt.NDArray[np.float64],
        qps: float | None,
        bpn: float | None,
        rec: float | None,
        note: str = "",
    ) -> None:
        rows.append(
            Row(
                label,
                kind,
                method,
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)),
                qps,
                bpn,
                rec,
                note,
            )
        )
        print(f"  {label:>5} {kind:<9} {method:<18} p50 {rows[-1].p50_ms:8.2f} ms", flush=True)

    bpn = index.memory_bytes() / n
    c2f = lambda q: index.search(q, K, pool=args.pool)  # noqa: E731
    _, nbr = c2f(queries[:n_exact])
    add_row(
        f"ours c2f pool {args.pool}",
        latency(c2f, nq),
        batch_qps(c2f, args.batch),
        bpn,
        recall(exact_D, joint_of(index, queries[:n_exact], nbr)),
    )
    one_class = [[3]]
    filtered = lambda q: index.search(q, K, pool=args.pool, allowed_labels=one_class * len(q))  # noqa: E731
    add_row(
        "ours c2f + class filter",
        latency(filtered, nq),
        batch_qps(filtered, args.batch),
        bpn,
        None,
        "1 of 8 labels allowed",
    )
    flat = lambda q: index.search(q, K, pool=0)  # noqa: E731
    add_row(
        "ours flat fused" if fused.AVAILABLE else "ours flat (numba absent)",
        latency(flat, nq),
        batch_qps(flat, max(4, args.batch // 16)),
        bpn,
        1.0,
        f"exact, {index._backend.n_threads} threads",  # type: ignore[attr-defined]
    )
    if fused.AVAILABLE:
        plain = HashIndex(N_BITS, n_threads=args.threads, fused=False)
        plain.add(ids, codes)
        slow = lambda q: plain.search(q, K, pool=0)  # noqa: E731
        _, nbr = slow(queries[:n_exact])
        add_row(
            "ours flat numpy-only",
            latency(slow, nslow),
            None,
            bpn,
            recall(exact_D, joint_of(index, queries[:n_exact], nbr)),
            "exact, the fallback without numba",
        )
        del plain

    try:
        import faiss
    except ImportError:
        rows.append(
            Row(
                label,
                kind,
                "faiss flat 192b",
                None,
                None,
                None,
                None,
                None,
                "faiss not installed (pip install faiss-cpu)",
            )
        )
    else:
        fx = faiss.IndexBinaryFlat(3 * N_BITS)
        fx.add(codes)
        fs = lambda q: fx.search(q, K)  # noqa: E731
        _, nbr = fs(queries[:n_exact])
        add_row(
            "faiss flat 192b",
            latency(fs, nslow),
            batch_qps(fs, args.batch),
            fx.ntotal and 3 * N_BITS / 8,
            recall(exact_D, joint_of(index, queries[:n_exact], nbr)),
            "ranks by plain 192-bit Hamming",
        )
        del fx

    words = codes.view(np.uint64).reshape(n, 3)

    def naive(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        out = []
        for qq in q.view(np.uint64).reshape(-1, 3):
            d = np.bitwise_count(words ^ qq).sum(axis=1, dtype=np.int32)
            out.append(np.argpartition(d, K)[:K])
        return np.stack(out)

    add_row(
        "numpy naive",
        latency(naive, nslow),
        batch_qps(naive, 4),
        float(CODE_BYTES),
        None,
        "plain 192-bit Hamming, 1 thread",
    )

    import torch

    if torch.cuda.is_available():
        tx = HashIndex(N_BITS, backend="torch", device="cuda")
        tx.add(ids, codes)

        def tsearch(q: npt.NDArray[np.uint8]) -> object:
            out = tx.search(q, K, pool=args.pool)
            torch.cuda.synchronize()
            return out

        _, nbr = tsearch(queries[:n_exact])
        add_row(
            "torch c2f cuda",
            latency(tsearch, nq),
            batch_qps(tsearch, args.batch),
            bpn,
            recall(exact_D, joint_of(index, queries[:n_exact], nbr)),
            torch.cuda.get_device_name(),
        )
        del tx
    else:
        rows.append(Row(label, kind, "torch c2f cuda", None, None, None, None, None, "no CUDA"))
    if args.torch_cpu:
        tc = HashIndex(N_BITS, backend="torch", device="cpu")
        tc.add(ids, codes)
        ts = lambda q: tc.search(q, K, pool=args.pool)  # noqa: E731
        add_row(
            "torch c2f cpu eager",
            latency(ts, 3),
            None,
            bpn,
            None,
            f"{torch.get_num_threads()} threads",
        )
        del tc
    return rows


def print_table(rows: list[Row]) -> None:
    """The result table, markdown, with each method's speed against faiss on the same data."""

    def f(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    faiss_p50 = {(r.size, r.data): r.p50_ms for r in rows if r.method.startswith("faiss")}
    print(
        "\n| nodules | codes | method | top-10 p50 ms | p99 ms | x faiss | batch q/s | B/nodule "
        "| recall@10 | note |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        ref = faiss_p50.get((r.size, r.data))
        ratio = ref / r.p50_ms if ref and r.p50_ms else None
        print(
            f"| {r.size} | {r.data} | {r.method} | {f(r.p50_ms, '.2f')} | {f(r.p99_ms, '.2f')} | "
            f"{f(ratio, '.1f')} | {f(r.batch_qps, ',.0f')} | {f(r.bytes_per_nodule, '.0f')} | "
            f"{f(r.recall_at_10, '.3f')} | {r.note} |"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", default=None, help="comma list, e.g. 1M,10M (default; --quick: 100K,1M)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer queries")
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="single queries for latency (default 100; quick 20)",
    )
    parser.add_argument("--batch", type=int, default=256, help="queries per batch call")
    parser.add_argument("--pool", type=int, default=1000, help="coarse pool size")
    parser.add_argument("--centres", type=int, default=300, help="centres of the clustered codes")
    parser.add_argument("--data", default="uniform,clustered", help="code distributions to run")
    parser.add_argument("--threads", type=int, default=None, help="numpy threads (default: cores)")
    parser.add_argument(
        "--torch-cpu", action="store_true", help="also time the torch backend eagerly on CPU"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = args.sizes or ("100K,1M" if args.quick else "1M,10M")
    if args.queries is None:
        args.queries = 20 if args.quick else 100
    if args.quick:
        args.batch = min(args.batch, 64)
    print(f"cores: {os.cpu_count()}, k={K}, codes 3 x {N_BITS} bits", flush=True)
    rows: list[Row] = []
    for label in sizes.split(","):
        for kind in args.data.split(","):
            rows += bench_size(parse_size(label), label.strip(), kind.strip(), args)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
