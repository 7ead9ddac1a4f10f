//! The sign function of binary codes: sgn(x) = +1 for x ≥ 0, −1 for x < 0 (the tie rule of
//! [`BinaryCodes::from_signs`], which packs the signs into bits in numpy.packbits order).

use crate::codes::BinaryCodes;
use ndarray::{Array2, ArrayView2};

/// sgn of one value with the codes' tie rule (0 → +1).
#[inline]
pub fn sgn1(v: f64) -> f64 {
    if v >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// sgn with the tie rule of [`BinaryCodes::from_signs`]: x ≥ 0 → +1, x < 0 → −1.
pub fn sgn(x: ArrayView2<f64>) -> Array2<f64> {
    x.mapv(sgn1)
}

/// Packed codes sgn(x) (x ≥ 0 → bit 1 = +1).
pub fn sign_codes(x: ArrayView2<f64>) -> BinaryCodes {
    BinaryCodes::from_signs(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn sgn_ties_go_to_plus_one_and_codes_pack_the_same_signs() {
        let x = array![[0.0, -0.0, -1e-300, 2.5], [-3.0, 1e-300, 0.5, -0.5]];
        let s = sgn(x.view());
        // −0.0 ≥ 0 holds in IEEE arithmetic, so it is a +1 like 0.
        assert_eq!(s, array![[1.0, 1.0, -1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]]);
        let c = sign_codes(x.view());
        assert_eq!(c, BinaryCodes::from_signs(s.view()));
        // Bit j of row i is set exactly where sgn is +1 (numpy.packbits order: bit 7 − j of byte 0).
        assert_eq!(c.row(0)[0], 0b1101_0000);
        assert_eq!(c.row(1)[0], 0b0110_0000);
    }
}
