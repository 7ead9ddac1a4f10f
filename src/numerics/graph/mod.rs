//! Neighbourhood graphs: k nearest neighbours of every point (exact: kd-tree; approximate:
//! random-projection forest with neighbour exploring) and sparse matrices in CSR form.

pub mod csr;
pub mod kdtree;
pub mod knn;

pub use csr::Csr;
pub use knn::{knn, knn_approx, knn_approx_ordered, permute_rows};
