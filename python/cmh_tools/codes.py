"""Binary codes as cmh writes them, Hamming distances and top-k search.

cmh stores a code of ``bits`` bits in one of three forms, one row per item:

- int8 ±1, ``n × bits`` (``query_image.npy``);
- bool 0/1, ``n × bits``;
- uint8 packed, ``n × ceil(bits / 8)``, in ``numpy.packbits`` order: bit ``j`` of a code is bit
  ``7 - j % 8`` of byte ``j // 8`` (``query_image_packed.npy``). Bit 1 stands for +1, 0 for −1;
  padding bits are zero.

The dtype tells the form, as in cmh: int8 means ±1, bool means 0/1, uint8 means packed (in memory,
any signed integer or float array of ±1 values counts as ±1 too). Every function here accepts any
of these; :func:`as_packed` is the one place that reads them.
"""

import os

import numpy as np

__all__ = [
    "as_packed",
    "hamming_distances",
    "load_codes",
    "pack",
    "save_codes",
    "topk",
    "unpack",
]


def _fail(where, msg):
    raise ValueError(f"{where}: {msg}" if where else msg)


def as_packed(codes, bits=None, where=""):
    """``(packed uint8 n × ceil(bits/8), bits)`` from codes in any of cmh's three forms.

    ``bits`` is needed only for packed codes whose length is not 8 × columns; when given for the
    other forms it must match. Values other than ±1 (int8) or 0/1 (bool) are refused, naming the
    first position, as cmh refuses them.
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        _fail(where, f"codes must be a 2-d array (items × bits), found shape {a.shape}")
    if a.dtype == np.uint8:
        nbits = a.shape[1] * 8 if bits is None else int(bits)
        if nbits < 1 or (nbits + 7) // 8 != a.shape[1]:
            _fail(where, f"packed uint8 codes of {nbits} bits need {(nbits + 7) // 8} columns, found {a.shape[1]}")
        packed = np.ascontiguousarray(a)
        if nbits % 8:
            packed = packed.copy()
            packed[:, -1] &= np.uint8((0xFF << (8 - nbits % 8)) & 0xFF)
        return packed, nbits
    if a.dtype == np.int8 or np.issubdtype(a.dtype, np.signedinteger) or np.issubdtype(a.dtype, np.floating):
        bad = (a != 1) & (a != -1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            _fail(where, f"{a.dtype} codes must be +1 or -1: found {a[i, j]} at row {i}, column {j}")
        on = a > 0
    elif a.dtype == np.bool_:
        on = a
    else:
        _fail(where, f"codes must be int8 (±1), bool (0/1) or uint8 (numpy.packbits); found dtype {a.dtype}")
    if a.shape[1] < 1:
        _fail(where, "codes must have at least one bit")
    if bits is not None and int(bits) != a.shape[1]:
        _fail(where, f"expected {bits}-bit codes, found {a.shape[1]}")
    return np.packbits(on, axis=1), a.shape[1]


def pack(codes, bits=None):
    """Packed uint8 codes (``numpy.packbits`` order) from any of the three forms."""
    return as_packed(codes, bits)[0]


def unpack(codes, bits=None):
    """int8 ±1 codes (n × bits) from any of the three forms."""
    packed, nbits = as_packed(codes, bits)
    return np.where(np.unpackbits(packed, axis=1, count=nbits) > 0, 1, -1).astype(np.int8)


def load_codes(path, bits=None):
    """Reads a code file (int8 ±1, bool 0/1 or packed uint8) and returns int8 ±1 codes.

    For a ``STEM.npy`` with a ``STEM_packed.npy`` twin beside it (as cmh exports them), the two
    must hold the same codes.
    """
    path = os.fspath(path)
    try:
        codes = unpack(np.load(path), bits)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    twin = path[:-4] + "_packed.npy" if path.endswith(".npy") and not path.endswith("_packed.npy") else None
    if twin and os.path.isfile(twin):
        packed = np.load(twin)
        if packed.shape != (codes.shape[0], (codes.shape[1] + 7) // 8) or not np.array_equal(packed, pack(codes)):
            raise ValueError(f"{twin} does not hold the same codes as {path}")
    return codes


def save_codes(directory, stem, codes, bits=None):
    """Writes ``STEM.npy`` (int8 ±1) and ``STEM_packed.npy`` (uint8) as cmh does, each written to
    a temporary name first and renamed when complete."""
    pm1 = unpack(codes, bits)
    os.makedirs(directory, exist_ok=True)
    for name, arr in ((f"{stem}.npy", pm1), (f"{stem}_packed.npy", pack(pm1))):
        final = os.path.join(directory, name)
        tmp = final + ".partial.npy"
        np.save(tmp, arr)
        os.replace(tmp, final)


_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _words(packed):
    """Packed rows as little-endian uint64 words (rows zero-padded to whole words)."""
    n, stride = packed.shape
    width = -(-stride // 8) * 8
    if width != stride:
        padded = np.zeros((n, width), dtype=np.uint8)
        padded[:, :stride] = packed
        packed = padded
    return np.ascontiguousarray(packed).view("<u8")


def _popcount(x):
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint16)


def hamming_distances(query_codes, db_codes, bits=None):
    """Hamming distances (int32, queries × database) between two sets of codes in any form."""
    q, qbits = as_packed(query_codes, bits, "query codes")
    # Packed database codes take the query codes' length unless told.
    default = qbits if np.asarray(db_codes).dtype == np.uint8 else None
    d, dbits = as_packed(db_codes, bits if bits is not None else default, "database codes")
    if qbits != dbits:
        raise ValueError(f"code length mismatch: query codes have {qbits} bits, database codes {dbits}")
    qw, dw = _words(q), _words(d)
    out = np.zeros((qw.shape[0], dw.shape[0]), dtype=np.int32)
    # Query blocks keep the temporaries near 32 MB.
    step = max(1, (1 << 22) // max(1, dw.shape[0]))
    for s in range(0, qw.shape[0], step):
        block = out[s:s + step]
        for w in range(qw.shape[1]):
            block += _popcount(qw[s:s + step, w, None] ^ dw[None, :, w])
    return out


def topk(query_codes, db_codes, k, bits=None):
    """The ``k`` nearest database codes of every query, ranked by (Hamming distance, database
    index), as ``cmh search -k K``: ``(indices int64, distances int32)``, each queries × k."""
    dist = hamming_distances(query_codes, db_codes, bits)
    n = dist.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the database size ({n}), found {k}")
    # One integer key per item orders by (distance, index) exactly; partition, then sort the k.
    key = dist.astype(np.int64) * n + np.arange(n)
    part = np.argpartition(key, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), key.shape)
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)
    return order.astype(np.int64), np.take_along_axis(dist, order, axis=1)
