//! SeGH's affinity graph: the kNN heat-kernel affinities of each modality (eqs. 3–4), the label
//! affinity between modalities (eq. 5), their sum, its Laplacian, and the H-system M = cI + γL
//! (eq. 10).

use super::*;

/// Eqs. 3–4: symmetrised kNN heat-kernel affinity, a_ij = ½(w_ij + w_ji) with
/// w_ij = exp(−‖zᵢ − z_j‖²/σ²) when j is one of i's k nearest neighbours `nn[i]` (squared
/// distance, index), σ² = mean squared kNN distance; as triplets (i, j, a_ij), duplicates summed
/// later.
pub(super) fn knn_affinity(nn: &[Vec<(f64, usize)>]) -> Vec<(u32, u32, f64)> {
    let n = nn.len();
    let k = nn.first().map_or(0, |r| r.len());
    let total: f64 = nn.iter().flat_map(|row| row.iter().map(|&(d2, _)| d2)).sum();
    let count = nn.iter().map(|r| r.len()).sum::<usize>().max(1);
    let sigma2 = total / count as f64;
    let sigma2 = if sigma2 > 0.0 { sigma2 } else { 1.0 };
    let mut t = Vec::with_capacity(2 * n * k);
    for (i, row) in nn.iter().enumerate() {
        for &(d2, j) in row {
            let w = 0.5 * (-d2 / sigma2).exp();
            let (i, j) = (i as u32, j as u32);
            t.push((i, j, w));
            t.push((j, i, w));
        }
    }
    t
}

/// The rows of a sparse n × C matrix: the L2-normalised label rows Ỹₘ (classes ascending; a row
/// that is unlabelled or has no class is empty). Products go row by row over the non-zeros in a
/// fixed order, so every column of a product is computed the same way whatever the other columns.
pub(super) struct LabelRows {
    pub(super) indptr: Vec<usize>,
    pub(super) class: Vec<u32>,
    pub(super) value: Vec<f64>,
    pub(super) classes: usize,
}

impl LabelRows {
    /// Row p holds item `order[p]` (item p without an order).
    pub(super) fn new(l: &Array2<u8>, labelled: &[bool], order: Option<&[usize]>) -> Self {
        let mut t = Self { indptr: vec![0], class: Vec::new(), value: Vec::new(), classes: l.ncols() };
        for p in 0..l.nrows() {
            let i = order.map_or(p, |o| o[p]);
            let row = l.row(i);
            let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
            if labelled[i] && norm > 0.0 {
                for (c, &v) in row.iter().enumerate().filter(|(_, &v)| v != 0) {
                    t.class.push(c as u32);
                    t.value.push(v as f64 / norm);
                }
            }
            t.indptr.push(t.class.len());
        }
        t
    }

    pub(super) fn row(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let r = self.indptr[i]..self.indptr[i + 1];
        self.class[r.clone()].iter().map(|&c| c as usize).zip(self.value[r].iter().copied())
    }

    /// Ỹᵀ V (C × r), rows summed in the fixed order of [`fold_parts`].
    pub(super) fn t_dot(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let n = self.indptr.len() - 1;
        let shape = (self.classes, v.ncols());
        let parts = fold_parts(
            n,
            || Array2::<f64>::zeros(shape),
            |s, e, acc| {
                for i in s..e {
                    for (c, y) in self.row(i) {
                        acc.row_mut(c).scaled_add(y, &v.row(i));
                    }
                }
            },
        );
        sum_in_order(parts, shape)
    }

    /// out += w · Ỹ T (T: C × r).
    pub(super) fn mul_add(&self, w: f64, t: &Array2<f64>, out: &mut Array2<f64>) {
        out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(
            || Array1::<f64>::zeros(t.ncols()),
            |acc, (i, mut o)| {
                acc.fill(0.0);
                for (c, y) in self.row(i) {
                    acc.scaled_add(y, &t.row(c));
                }
                o.scaled_add(w, acc);
            },
        );
    }

    /// Σ_c Ỹᵢ꜀ Z̃ᵢ꜀ for each row i (both sparse rows with ascending classes).
    pub(super) fn row_dots(&self, other: &LabelRows) -> Array1<f64> {
        Array1::from_shape_fn(self.indptr.len() - 1, |i| {
            let mut theirs = other.row(i).peekable();
            let mut sum = 0.0;
            for (c, y) in self.row(i) {
                while theirs.peek().is_some_and(|&(d, _)| d < c) {
                    theirs.next();
                }
                if let Some(&(d, z)) = theirs.peek() {
                    if d == c {
                        sum += y * z;
                    }
                }
            }
            sum
        })
    }

    pub(super) fn to_dense(&self) -> Array2<f64> {
        let n = self.indptr.len() - 1;
        let mut y = Array2::<f64>::zeros((n, self.classes));
        for i in 0..n {
            for (c, v) in self.row(i) {
                y[[i, c]] = v;
            }
        }
        y
    }
}

/// The affinity A = Σₘ A⁽ᵐ⁾ + Ŝ and its Laplacian L = D − A (eq. 6), kept as a sparse kNN part
/// and low-rank label factors; Ŝ = mean over ordered modality pairs (a ≠ b) of Ỹₐ Ỹ_bᵀ (Ỹ = label
/// rows L2-normalised, zero for unlabelled items), so for shared labels Ŝ_ij = cos(yᵢ, y_j).
pub(super) struct Graph {
    pub(super) knn: Csr,
    /// Ỹₘ (n × C, sparse) per modality.
    pub(super) y: Vec<LabelRows>,
    pub(super) pairs: Vec<(usize, usize)>,
    pub(super) degree: Array1<f64>,
    /// Diagonal of A (self-affinities of the label term).
    pub(super) self_affinity: Array1<f64>,
}

impl Graph {
    /// The graph of `n` items; with `order`, row p is item `order[p]` (the kNN triplets are given
    /// in that numbering already).
    pub(super) fn new(
        n: usize,
        knn_parts: Vec<Vec<(u32, u32, f64)>>,
        labels: &[Array2<u8>],
        labelled: &[Vec<bool>],
        order: Option<&[usize]>,
    ) -> Self {
        let knn = Csr::from_triplets(n, knn_parts.into_iter().flatten().collect());
        let y: Vec<LabelRows> = labels.iter().zip(labelled).map(|(l, lab)| LabelRows::new(l, lab, order)).collect();
        let nm = y.len();
        let pairs: Vec<(usize, usize)> =
            if nm == 1 { vec![(0, 0)] } else { (0..nm).flat_map(|a| (0..nm).filter(move |&b| b != a).map(move |b| (a, b))).collect() };
        let mut g = Self { knn, y, pairs, degree: Array1::zeros(n), self_affinity: Array1::zeros(n) };
        let ones = Array2::<f64>::ones((n, 1));
        g.degree = g.affinity_mul(ones.view()).column(0).to_owned();
        let w = 1.0 / g.pairs.len() as f64;
        let mut diag = g.knn.diagonal();
        for &(a, b) in &g.pairs {
            diag += &(g.y[a].row_dots(&g.y[b]) * w);
        }
        g.self_affinity = diag;
        g
    }

    pub(super) fn len(&self) -> usize {
        self.degree.len()
    }

    /// A V.
    pub(super) fn affinity_mul(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let mut out = Array2::<f64>::zeros((self.len(), v.ncols()));
        self.affinity_mul_into(v, &mut out);
        out
    }

    /// Overwrites `out` with A V.
    pub(super) fn affinity_mul_into(&self, v: ArrayView2<f64>, out: &mut Array2<f64>) {
        self.knn.mul_dense_into(v, out);
        let w = 1.0 / self.pairs.len() as f64;
        for &(a, b) in &self.pairs {
            let t = self.y[b].t_dot(v);
            self.y[a].mul_add(w, &t, out);
        }
    }

    /// tr(Vᵀ L V) = Σᵢ dᵢ‖vᵢ‖² − Σᵢⱼ Aᵢⱼ vᵢ·vⱼ, without forming L V: the kNN part row by row, the
    /// label part as Σ w ⟨Ỹₐᵀ V, Ỹ_bᵀ V⟩.
    pub(super) fn quadratic_form(&self, v: ArrayView2<f64>) -> f64 {
        let parts = fold_parts(
            self.len(),
            || 0.0f64,
            |s, e, acc| {
                for i in s..e {
                    let vi = v.row(i);
                    let mut a = self.degree[i] * vi.dot(&vi);
                    for p in self.knn.indptr[i]..self.knn.indptr[i + 1] {
                        a -= self.knn.values[p] * vi.dot(&v.row(self.knn.indices[p] as usize));
                    }
                    *acc += a;
                }
            },
        );
        let w = 1.0 / self.pairs.len() as f64;
        let t: Vec<Array2<f64>> = self.y.iter().map(|y| y.t_dot(v)).collect();
        let label: f64 = self.pairs.iter().map(|&(a, b)| w * (&t[a] * &t[b]).sum()).sum();
        parts.into_iter().sum::<f64>() - label
    }

    /// L V = D V − A V (eq. 6).
    pub(super) fn laplacian_mul(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let av = self.affinity_mul(v);
        let mut out = &v * &self.degree.view().insert_axis(Axis(1));
        out -= &av;
        out
    }

    pub(super) fn laplacian_diag(&self) -> Array1<f64> {
        &self.degree - &self.self_affinity
    }

    /// The dense n × n affinity (tests and the dense solver only).
    pub(super) fn dense_affinity(&self) -> Array2<f64> {
        let mut a = self.knn.to_dense();
        let w = 1.0 / self.pairs.len() as f64;
        for &(p, q) in &self.pairs {
            a.scaled_add(w, &self.y[p].to_dense().dot(&self.y[q].to_dense().t()));
        }
        a
    }
}

/// M = c I + γ L, the fixed matrix of the H update (eq. 10), c = Σₘ μₘ.
pub(super) struct System<'a> {
    pub(super) graph: &'a Graph,
    pub(super) c: f64,
    pub(super) gamma: f64,
}

impl System<'_> {
    /// Overwrites `out` with M V = c V + γ (D V − A V), in one pass over the rows after A V.
    pub(super) fn mul_into(&self, v: ArrayView2<f64>, out: &mut Array2<f64>) {
        self.graph.affinity_mul_into(v, out);
        let (c, gamma) = (self.c, self.gamma);
        ndarray::Zip::from(out.rows_mut()).and(v.rows()).and(&self.graph.degree).par_for_each(|mut o, vi, &d| {
            let s = c + gamma * d;
            o.zip_mut_with(&vi, |o, &x| *o = s * x - gamma * *o);
        });
    }
    pub(super) fn diag(&self) -> Array1<f64> {
        self.graph.laplacian_diag() * self.gamma + self.c
    }
    pub(super) fn dense(&self) -> Array2<f64> {
        let a = self.graph.dense_affinity();
        let mut m = -a * self.gamma;
        for i in 0..self.graph.len() {
            m[[i, i]] += self.c + self.gamma * self.graph.degree[i];
        }
        m
    }
}

/// Solves M X = B; returns X and the iteration count (0 for the dense solve).
pub(super) fn solve_system(sys: &System, b: &Array2<f64>, solver: Solver, tol: f64, max_iter: usize) -> Result<(Array2<f64>, usize)> {
    match solver {
        Solver::Cg => pcg(|v, out| sys.mul_into(v, out), &sys.diag(), b, tol, max_iter)
            .map_err(|e| anyhow!("segh: {e:#} in the H-system of eq. 10 (cg_max_iter and cg_tol set the iteration budget and tolerance)")),
        Solver::Dense => {
            let l = sys.dense().cholesky(UPLO::Lower).context("segh: the H-system matrix is not positive definite")?;
            let y = l.solve_triangular(UPLO::Lower, Diag::NonUnit, b)?;
            let x = l.t().to_owned().solve_triangular(UPLO::Upper, Diag::NonUnit, &y)?;
            Ok((x, 0))
        }
    }
}
