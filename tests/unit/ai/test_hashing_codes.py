"""ai.hashing.codes: packing, size classes, HashCodes."""

from __future__ import annotations

import numpy as np
import pytest

from ai.hashing.codes import HashCodes, pack_signs, unpack_bits


@pytest.mark.parametrize("n_bits", [24, 32, 48, 64, 13])
def test_pack_unpack_round_trip(n_bits: int) -> None:
    relaxed = np.random.default_rng(n_bits).standard_normal((20, n_bits))
    packed = pack_signs(relaxed)
    assert packed.dtype == np.uint8 and packed.shape == (20, (n_bits + 7) // 8)
    np.testing.assert_array_equal(unpack_bits(packed, n_bits), (relaxed > 0).astype(np.uint8))


def test_pack_is_msb_first_and_zero_is_a_zero_bit() -> None:
    packed = pack_signs(np.array([[1.0, -1, 0, -0.5, -2, -3, -4, 0.1]]))
    assert packed.tolist() == [[0b10000001]]


def _codes(n: int, n_bits: int = 32) -> HashCodes:
    rng = np.random.default_rng(0)
    layer = lambda: pack_signs(rng.standard_normal((n, n_bits)))  # noqa: E731
    probs = rng.random((n, 8)).astype(np.float32)
    return HashCodes(
        layer(),
        layer(),
        layer(),
        np.zeros((n, 16), np.float32),
        probs,
        np.full((n, 3), 1 / 3, np.float32),
        n_bits,
    )


def test_hash_codes_rows_and_predictions() -> None:
    codes = _codes(5)
    assert len(codes) == 5
    rows = codes.rows()
    assert rows.shape == (5, 12)
    np.testing.assert_array_equal(rows[:, 4:8], codes.middle)
    np.testing.assert_array_equal(codes.size_class, codes.size_probs.argmax(1))


def test_hash_codes_validates_shapes() -> None:
    good = _codes(4)
    with pytest.raises(ValueError, match="middle"):
        HashCodes(
            good.shallow,
            good.middle[:, :3],
            good.deep,
            good.embedding,
            good.size_probs,
            good.texture_probs,
            32,
        )
    with pytest.raises(ValueError, match="size_probs"):
        HashCodes(
            good.shallow,
            good.middle,
            good.deep,
            good.embedding,
            good.size_probs[:, :7],
            good.texture_probs,
            32,
        )
