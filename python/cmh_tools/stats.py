"""Statistics of a set of binary codes: bit balance, bit correlation, collisions."""

import numpy as np

from .codes import unpack

__all__ = ["code_statistics"]


def code_statistics(codes, bits=None):
    """Bit balance, bit correlation and code collisions of codes in any of cmh's forms.

    - ``mean_abs_balance`` / ``max_abs_balance``: |mean of a bit's ±1 values| over the bits (0 =
      half +1, half −1; 1 = constant), mean and worst bit; ``constant_bits``;
    - ``mean_abs_corr`` / ``max_abs_corr``: |Pearson correlation| between two different
      non-constant bits, mean and worst pair (NaN with fewer than two such bits);
    - ``distinct_codes``, ``largest_bucket`` (most items sharing one code) and
      ``items_sharing_a_code``.
    """
    pm1 = unpack(codes, bits)
    c = pm1.astype(np.float64)
    n, nbits = c.shape
    balance = c.mean(axis=0)
    constant = c.std(axis=0) == 0
    live = ~constant
    if live.sum() >= 2:
        corr = np.corrcoef(c[:, live], rowvar=False)
        off = np.abs(corr[~np.eye(corr.shape[0], dtype=bool)])
        mean_corr, max_corr = float(off.mean()), float(off.max())
    else:
        mean_corr = max_corr = float("nan")
    _, counts = np.unique(pm1, axis=0, return_counts=True)
    return {
        "n": int(n),
        "bits": int(nbits),
        "mean_abs_balance": float(np.abs(balance).mean()),
        "max_abs_balance": float(np.abs(balance).max()),
        "constant_bits": int(constant.sum()),
        "mean_abs_corr": mean_corr,
        "max_abs_corr": max_corr,
        "distinct_codes": int(len(counts)),
        "largest_bucket": int(counts.max()),
        "items_sharing_a_code": int(counts[counts > 1].sum()),
    }
