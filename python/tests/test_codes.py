"""Code forms, packing, Hamming distances and top-k search, against hand-worked values, brute
force and `cmh search`."""

import os

import numpy as np
import pytest

import cmh_tools as ct


def random_pm1(rng, n, bits):
    return np.where(rng.random((n, bits)) < 0.5, 1, -1).astype(np.int8)


def test_packbits_layout_by_hand():
    # Bit j is bit 7 - j % 8 of byte j // 8: 1,0,1,1,0,0,0,0 | 1 -> 0b10110000 = 176, 0b10000000 = 128.
    bits01 = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]], dtype=bool)
    assert ct.pack(bits01).tolist() == [[176, 128]]
    assert ct.unpack(np.array([[176, 128]], dtype=np.uint8), bits=9).tolist() == [[1, -1, 1, 1, -1, -1, -1, -1, 1]]
    assert ct.pack(np.where(bits01, 1, -1).astype(np.int8)).tolist() == [[176, 128]]


def test_padding_bits_are_cleared_and_lengths_checked():
    packed, bits = ct.as_packed(np.array([[0xFF]], dtype=np.uint8), bits=4)
    assert bits == 4 and packed.tolist() == [[0xF0]]
    with pytest.raises(ValueError, match="need 2 columns"):
        ct.as_packed(np.zeros((1, 1), dtype=np.uint8), bits=9)
    with pytest.raises(ValueError, match="expected 8-bit codes"):
        ct.as_packed(np.ones((1, 9), dtype=np.int8), bits=8)


def test_rejects_values_cmh_rejects():
    with pytest.raises(ValueError, match=r"found 0 at row 0, column 1"):
        ct.unpack(np.array([[1, 0]], dtype=np.int8))
    with pytest.raises(ValueError, match="dtype uint16"):
        ct.unpack(np.ones((2, 3), dtype=np.uint16))
    # In memory, ±1 of any signed or float dtype reads as int8 ±1.
    assert ct.unpack(np.array([[1.0, -1.0]])).tolist() == [[1, -1]]
    with pytest.raises(ValueError, match=r"found 0.5 at row 0, column 0"):
        ct.unpack(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        ct.unpack(np.ones(3, dtype=np.int8))


def test_save_and_load_all_three_forms(tmp_path):
    rng = np.random.default_rng(1)
    c = random_pm1(rng, 7, 13)
    ct.save_codes(tmp_path, "c", c)
    assert np.array_equal(np.load(tmp_path / "c.npy"), c)
    assert np.array_equal(np.load(tmp_path / "c_packed.npy"), np.packbits(c > 0, axis=1))
    assert np.array_equal(ct.load_codes(tmp_path / "c.npy"), c)
    assert np.array_equal(ct.load_codes(tmp_path / "c_packed.npy", bits=13), c)
    np.save(tmp_path / "b.npy", c > 0)
    assert np.array_equal(ct.load_codes(tmp_path / "b.npy"), c)
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]
    # A twin that disagrees is an error naming it.
    flipped = c.copy()
    flipped[3, 5] *= -1
    np.save(tmp_path / "c.npy", flipped)
    with pytest.raises(ValueError, match="c_packed.npy does not hold the same codes"):
        ct.load_codes(tmp_path / "c.npy")


@pytest.mark.parametrize("bits", [1, 7, 16, 64, 65, 130])
def test_hamming_distances_equal_brute_force_in_every_form(bits):
    rng = np.random.default_rng(bits)
    q, d = random_pm1(rng, 9, bits), random_pm1(rng, 31, bits)
    want = (q[:, None, :] != d[None, :, :]).sum(-1)
    for a, b in ((q, d), (q > 0, d > 0), (ct.pack(q), ct.pack(d))):
        got = ct.hamming_distances(a, b, bits=bits)
        assert got.dtype == np.int32 and np.array_equal(got, want)
    with pytest.raises(ValueError, match="code length mismatch"):
        ct.hamming_distances(q, random_pm1(rng, 3, bits + 1))


def test_topk_orders_by_distance_then_index():
    # Codes with many ties: 4 bits, 40 items.
    rng = np.random.default_rng(5)
    q, d = random_pm1(rng, 6, 4), random_pm1(rng, 40, 4)
    idx, dist = ct.topk(q, d, 10)
    full = ct.hamming_distances(q, d)
    for i in range(len(q)):
        want = np.lexsort((np.arange(40), full[i]))[:10]
        assert idx[i].tolist() == want.tolist()
        assert dist[i].tolist() == full[i, want].tolist()
    assert ct.topk(q, d, 40)[0].shape == (6, 40)
    with pytest.raises(ValueError, match="between 1 and the database size"):
        ct.topk(q, d, 41)


def test_topk_equals_cmh_search(cmh, tmp_path):
    rng = np.random.default_rng(3)
    q, d = random_pm1(rng, 25, 32), random_pm1(rng, 500, 32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "d.npy", ct.pack(d))
    cmh("search", "--db", tmp_path / "d.npy", "--query", tmp_path / "q.npy", "-k", 20, "--out", tmp_path / "res")
    idx, dist = ct.topk(q, d, 20)
    assert np.array_equal(np.load(tmp_path / "res" / "indices.npy"), idx)
    assert np.array_equal(np.load(tmp_path / "res" / "distances.npy"), dist)
