//! Square sparse matrices in compressed sparse row form.

use ndarray::{Array1, Array2, ArrayView2};
use rayon::prelude::*;

/// A square sparse matrix in compressed sparse row form.
pub struct Csr {
    pub n: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f64>,
}

impl Csr {
    /// From (row, column, value) triplets; duplicates are summed.
    pub fn from_triplets(n: usize, mut t: Vec<(u32, u32, f64)>) -> Self {
        t.par_sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut indptr = vec![0usize; n + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f64> = Vec::with_capacity(t.len());
        let mut last: Option<(u32, u32)> = None;
        for (i, j, v) in t {
            if last == Some((i, j)) {
                *values.last_mut().expect("entry") += v;
            } else {
                indices.push(j);
                values.push(v);
                indptr[i as usize + 1] += 1;
                last = Some((i, j));
            }
        }
        for i in 0..n {
            indptr[i + 1] += indptr[i];
        }
        Self { n, indptr, indices, values }
    }

    /// Overwrites `out` (n × r, row-major) with A V for a dense V (n × r), parallel over rows.
    pub fn mul_dense_into(&self, v: ArrayView2<f64>, out: &mut Array2<f64>) {
        let r = v.ncols();
        assert_eq!(out.dim(), (self.n, r), "output shape");
        if r == 0 || self.n == 0 {
            return;
        }
        let v = v.as_standard_layout();
        let vs = v.as_slice().expect("standard layout");
        out.as_slice_mut().expect("row-major output").par_chunks_mut(r).enumerate().for_each(|(i, row)| {
            row.fill(0.0);
            for p in self.indptr[i]..self.indptr[i + 1] {
                let w = self.values[p];
                let j = self.indices[p] as usize;
                let src = &vs[j * r..(j + 1) * r];
                for (o, &s) in row.iter_mut().zip(src) {
                    *o += w * s;
                }
            }
        });
    }

    pub fn diagonal(&self) -> Array1<f64> {
        Array1::from_shape_fn(self.n, |i| {
            (self.indptr[i]..self.indptr[i + 1]).filter(|&p| self.indices[p] as usize == i).map(|p| self.values[p]).sum()
        })
    }

    pub fn to_dense(&self) -> Array2<f64> {
        let mut a = Array2::zeros((self.n, self.n));
        for i in 0..self.n {
            for p in self.indptr[i]..self.indptr[i + 1] {
                a[[i, self.indices[p] as usize]] += self.values[p];
            }
        }
        a
    }
}
