"""storage.index against a brute-force popcount reference (STYLE G12)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import DuplicateIdError, IndexFileError
from storage.index import HashIndex, pack_layers, unpack_layers


def _codes(rng: np.random.Generator, n: int, n_bits: int, n_layers: int = 3) -> np.ndarray:
    nb = (n_bits + 7) // 8
    bits = rng.integers(0, 2, size=(n, n_layers, nb * 8), dtype=np.uint8)
    bits[:, :, n_bits:] = 0  # padding bits of a K-bit code are zero (np.packbits)
    return np.packbits(bits, axis=2).reshape(n, n_layers * nb)


def _clustered(
    rng: np.random.Generator, n: int, n_bits: int = 64, centres: int = 5, flip: float = 0.08
) -> np.ndarray:
    nb = n_bits // 8
    c = rng.integers(0, 2, size=(centres, 3, n_bits), dtype=np.uint8)
    bits = c[rng.integers(0, centres, n)] ^ (rng.random((n, 3, n_bits)) < flip).astype(np.uint8)
    return np.packbits(bits, axis=2).reshape(n, 3 * nb)


def _reference(
    db: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None
):
    """Joint distance by unpacking bits; ``q`` is ``(V, code_size)``; sorted by (D, id)."""
    nb = db.shape[1] // 3
    bdb = np.unpackbits(db.reshape(len(db), 3, nb), axis=2).astype(np.int32)
    bq = np.unpackbits(q.reshape(len(q), 3, nb), axis=2).astype(np.int32)
    per = (bdb[None] != bq[:, None]).sum(axis=3)  # (V, n, 3)
    joint = per[:, :, 0].min(0) + per[0, :, 1] + per[:, :, 2].min(0)
    cand = np.arange(len(db)) if rows is None else rows
    order = np.lexsort((ids[cand], joint[cand]))[:k]
    D = np.full(k, -1, np.int32)
    nbr = np.full(k, -1, np.int64)
    D[: order.size] = joint[cand][order]
    nbr[: order.size] = ids[cand][order]
    return D, nbr


def _reference_pool(db: np.ndarray, q0: np.ndarray, pool: int) -> np.ndarray:
    """Rows within the pool-th smallest middle-layer distance."""
    nb = db.shape[1] // 3
    mid = np.unpackbits(db[:, nb : 2 * nb], axis=1)
    d = (mid != np.unpackbits(q0[nb : 2 * nb])).sum(axis=1)
    return np.flatnonzero(d <= np.sort(d)[pool - 1])


@pytest.mark.parametrize("n_bits", [24, 48, 64])
def test_pack_unpack_round_trip(n_bits: int) -> None:
    codes = _codes(np.random.default_rng(0), 50, n_bits)
    words = pack_layers(codes, n_bits, 3)
    assert words.shape == (3, 50) and words.dtype == np.uint64
    np.testing.assert_array_equal(unpack_layers(words, n_bits), codes)


@pytest.mark.parametrize("n_bits", [24, 32, 64])
@pytest.mark.parametrize("n_views", [1, 3])
def test_flat_search_matches_brute_force(n_bits: int, n_views: int) -> None:
    rng = np.random.default_rng(n_bits + n_views)
    db = _codes(rng, 700, n_bits)
    ids = rng.permutation(10_000)[:700].astype(np.int64)
    queries = _codes(rng, 4 * n_views, n_bits).reshape(4, n_views, -1)
    index = HashIndex(n_bits)
    index.add(ids, db)
    D, nbr = index.search(queries if n_views > 1 else queries[:, 0], 10, pool=0)
    assert D.dtype == np.int32 and nbr.dtype == np.int64 and D.shape == (4, 10)
    for i in range(4):
        rD, rI = _reference(db, ids, queries[i], 10)
        np.testing.assert_array_equal(D[i], rD)
        np.testing.assert_array_equal(nbr[i], rI)


def test_coarse_to_fine_ranks_the_coarse_pool_by_joint_distance() -> None:
    rng = np.random.default_rng(1)
    db = _clustered(rng, 2000)
    ids = np.arange(2000, dtype=np.int64) * 7
    queries = _clustered(rng, 5)
    index = HashIndex(64)
    index.add(ids, db)
    D, nbr = index.search(queries, 10, pool=50, max_pool=10**6)
    for i in range(5):
        rows = _reference_pool(db, queries[i], 50)
        rD, rI = _reference(db, ids, queries[i : i + 1], 10, rows)
        np.testing.assert_array_equal(D[i], rD)
        np.testing.assert_array_equal(nbr[i], rI)
    # a pool covering everything is the exact search
    np.testing.assert_array_equal(
        index.search(queries, 10, pool=5000)[1], index.search(queries, 10, pool=0)[1]
    )


def test_threaded_scan_over_many_chunks_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    n = 40_000  # 20 chunks: rows split over two threads
    db = _codes(rng, n, 64)
    ids = np.arange(n, dtype=np.int64)
    index = HashIndex(64, n_threads=2, chunk_rows=2000)
    index.add(ids, db)
    q = _codes(rng, 2, 64)
    D, nbr = index.search(q, 5, pool=0)
    Dc, Ic = index.search(q, 5, pool=300)
    for i in range(2):
        rD, rI = _reference(db, ids, q[i : i + 1], 5)
        np.testing.assert_array_equal(D[i], rD)
        np.testing.assert_array_equal(nbr[i], rI)
        rows = _reference_pool(db, q[i], 300)
        cD, cI = _reference(db, ids, q[i : i + 1], 5, rows)
        np.testing.assert_array_equal(Dc[i], cD)
        np.testing.assert_array_equal(Ic[i], cI)


def _assert_backends_agree(
    device: str, n: int, centres: int, pools: tuple[int, ...], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    db = _clustered(rng, n, centres=centres, flip=0.15)
    ids = rng.permutation(n).astype(np.int64)
    queries = _clustered(rng, 6, centres=centres).reshape(2, 3, -1)
    a = HashIndex(64)
    b = HashIndex(64, backend="torch", device=device)
    a.add(ids, db)
    b.add(ids, db)
    for q in (queries, queries[:, 0]):
        for pool in pools:
            for x, y in zip(a.search(q, 15, pool=pool), b.search(q, 15, pool=pool), strict=True):
                np.testing.assert_array_equal(x, y)


def test_torch_backend_equals_numpy_backend() -> None:
    _assert_backends_agree("cpu", 3000, 20, (0, 40), seed=3)


def test_torch_popcount_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    from storage.index.torch_backend import popcount64

    words = np.random.default_rng(4).integers(
        0, 2**64 - 1, size=1000, dtype=np.uint64, endpoint=True
    )
    words[:3] = [0, 2**64 - 1, 2**63]
    got = popcount64(torch.from_numpy(words.view(np.int64))).numpy()
    np.testing.assert_array_equal(got, np.bitwise_count(words))


def test_fewer_than_k_pads_with_minus_one_and_empty_index() -> None:
    rng = np.random.default_rng(5)
    index = HashIndex(32)
    D, nbr = index.search(_codes(rng, 1, 32), 3)
    assert (D == -1).all() and (nbr == -1).all()
    index.add([5, 9], _codes(rng, 2, 32))
    for pool in (0, 1000):
        D, nbr = index.search(_codes(rng, 1, 32), 4, pool=pool)
        assert sorted(nbr[0, :2]) == [5, 9] and (nbr[0, 2:] == -1).all() and (D[0, 2:] == -1).all()


def test_add_rejects_duplicates_and_remove_keeps_results_consistent() -> None:
    rng = np.random.default_rng(6)
    db = _codes(rng, 500, 64)
    ids = np.arange(100, 600, dtype=np.int64)
    index = HashIndex(64)
    index.add(ids[:300], db[:300])
    index.add(ids[300:], db[300:])
    with pytest.raises(DuplicateIdError):
        index.add([150], db[:1])
    with pytest.raises(DuplicateIdError):
        index.add([1, 1], db[:2])
    assert index.ntotal == 500
    gone = ids[rng.choice(500, 120, replace=False)]
    assert index.remove(np.concatenate([gone, [10**9]])) == 120
    assert index.remove(gone) == 0
    keep = ~np.isin(ids, gone)
    fresh = HashIndex(64)
    fresh.add(ids[keep], db[keep])
    q = _codes(rng, 3, 64)
    for pool in (0, 60):
        np.testing.assert_array_equal(
            index.search(q, 20, pool=pool)[1], fresh.search(q, 20, pool=pool)[1]
        )
        # the label partitions (filtered coarse pass) follow removals too
        np.testing.assert_array_equal(
            index.search(q, 20, pool=pool, allowed_labels=[[0]] * 3)[1],
            fresh.search(q, 20, pool=pool)[1],
        )
    np.testing.assert_array_equal(index.reconstruct(ids[keep][:7]), db[keep][:7])
    with pytest.raises(KeyError):
        index.reconstruct(gone[:1])
    index.add(gone[:3], db[:3])  # a removed id can come back
    assert index.ntotal == 383


def test_save_load_round_trip_gives_identical_results(tmp_path) -> None:
    rng = np.random.default_rng(7)
    db = _codes(rng, 800, 48)
    emb = rng.standard_normal((800, 16)).astype(np.float32)
    index = HashIndex(48, embedding_dim=16)
    index.add(np.arange(800) * 3, db, emb)
    index.remove([0, 3, 6])
    path = tmp_path / "v1.npz"
    index.save(path)
    again = HashIndex.load(path)
    q = _codes(rng, 4, 48)
    for pool in (0, 100):
        pair = (index.search(q, 10, pool=pool), again.search(q, 10, pool=pool))
        for a, b in zip(*pair, strict=True):
            np.testing.assert_array_equal(a, b)
    qe = rng.standard_normal((4, 16)).astype(np.float32)
    for a, b in zip(index.search_reranked(q, qe, 5), again.search_reranked(q, qe, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(IndexFileError):
        HashIndex.load(tmp_path / "bad.npz")


def test_search_reranked_orders_the_shortlist_by_l2() -> None:
    rng = np.random.default_rng(8)
    db = _codes(rng, 300, 64)
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) + 1000
    index = HashIndex(64, embedding_dim=8)
    index.add(ids, db, emb)
    q, qe = db[:2], emb[:2] + 0.01
    D, nbr = index.search_reranked(q, qe, 5, shortlist=30, pool=0)
    _, short = index.search(q, 30, pool=0)
    for i in range(2):
        d2 = ((emb[short[i] - 1000] - qe[i]) ** 2).sum(axis=1)
        np.testing.assert_array_equal(nbr[i], short[i][np.argsort(d2, kind="stable")[:5]])
        np.testing.assert_allclose(D[i], np.sort(d2)[:5], rtol=1e-6)
        assert nbr[i, 0] == ids[i]


def test_a_file_saved_by_one_backend_loads_in_the_other(tmp_path) -> None:
    rng = np.random.default_rng(9)
    db = _clustered(rng, 400)
    ids = np.arange(400, dtype=np.int64) * 3 + 1
    torch_index = HashIndex(64, backend="torch", embedding_dim=4)
    torch_index.add(ids, db, rng.normal(size=(400, 4)).astype(np.float32), labels=ids % 8)
    torch_index.save(tmp_path / "t.npz")
    numpy_index = HashIndex.load(tmp_path / "t.npz", backend="numpy")
    q = db[[5, 77]]
    for pool in (0, 40):
        d_t, i_t = torch_index.search(q, 7, pool=pool, allowed_labels=[{0, 1}, None])
        d_n, i_n = numpy_index.search(q, 7, pool=pool, allowed_labels=[{0, 1}, None])
        np.testing.assert_array_equal(d_t, d_n)
        np.testing.assert_array_equal(i_t, i_n)
    assert i_n[0][0] == ids[5] and set((i_n[0][i_n[0] >= 0] % 8).tolist()) <= {0, 1}


def test_misleading_first_chunk_triggers_an_exact_rescan() -> None:
    rng = np.random.default_rng(10)
    q = _codes(rng, 1, 64)
    db = np.concatenate([np.repeat(q, 20, axis=0), _codes(rng, 3000, 64)])  # sample says "all at 0"
    ids = np.arange(len(db), dtype=np.int64)
    index = HashIndex(64, chunk_rows=1000, n_threads=1)
    index.add(ids, db)
    D, nbr = index.search(q, 30, pool=50, max_pool=10**6)
    rD, rI = _reference(db, ids, q, 30, _reference_pool(db, q[0], 50))
    np.testing.assert_array_equal(D[0], rD)
    np.testing.assert_array_equal(nbr[0], rI)
    assert (D[0, :20] == 0).all() and (D[0, 20:] > 0).all()


@pytest.mark.gpu
def test_cuda_backend_equals_numpy_backend() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _assert_backends_agree("cuda", 50_000, 50, (0, 1000), seed=11)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("pool", [0, 30])
def test_allowed_labels_filter_results(backend: str, pool: int, tmp_path) -> None:
    rng = np.random.default_rng(12)
    db = _clustered(rng, 600, centres=4, flip=0.1)
    ids = np.arange(600, dtype=np.int64) + 50
    labels = rng.integers(0, 8, 600)
    index = HashIndex(64, backend=backend, chunk_rows=128)  # type: ignore[arg-type]
    index.add(ids, db, labels=labels)
    q = _clustered(rng, 5, centres=4)
    allowed = [[2], [0, 7], None, [0, 1, 2, 3, 5, 6], []]
    D, nbr = index.search(q, 10, pool=pool, allowed_labels=allowed)
    for i, ok in enumerate(allowed):
        keep = np.arange(600) if ok is None else np.flatnonzero(np.isin(labels, ok))
        if keep.size == 0:
            assert (nbr[i] == -1).all() and (D[i] == -1).all()
            continue
        if pool:
            sub = _reference_pool(db[keep], q[i], pool)
            rD, rI = _reference(db[keep], ids[keep], q[i : i + 1], 10, sub)
        else:
            rD, rI = _reference(db[keep], ids[keep], q[i : i + 1], 10)
        np.testing.assert_array_equal(D[i], rD)
        np.testing.assert_array_equal(nbr[i], rI)
    # a label that nobody carries gives nothing; labels survive save/load
    assert (index.search(q[:1], 5, pool=pool, allowed_labels=[[200]])[1] == -1).all()
    index.save(tmp_path / "l.npz")
    again = HashIndex.load(tmp_path / "l.npz", backend=backend)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.search(q, 10, pool=pool, allowed_labels=allowed)[1], nbr)
    with pytest.raises(ValueError):
        index.add([1], db[:1], labels=[300])


def test_concurrent_adds_and_searches_stay_consistent() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    db = _codes(rng, 4000, 64)
    index = HashIndex(64, chunk_rows=500)
    q = _codes(rng, 1, 64)

    def add(part: int) -> None:
        sl = slice(part * 200, (part + 1) * 200)
        index.add(np.arange(4000)[sl], db[sl])

    def search(_: int) -> np.ndarray:
        return index.search(q, 5, pool=50)[1]

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(add, p) for p in range(20)] + [
            pool.submit(search, i) for i in range(20)
        ]
        for f in futures:
            f.result()
    assert index.ntotal == 4000
    rD, rI = _reference(db, np.arange(4000), q, 5, _reference_pool(db, q[0], 50))
    np.testing.assert_array_equal(index.search(q, 5, pool=50)[1][0], rI)
