//! Shallow methods on ndarray + LAPACK (OpenBLAS): SCH, SeGH, the CCA-ITQ baseline and the
//! attribute-regression zero-shot baseline.
pub mod attr_ridge;
pub mod cca_itq;
pub mod common;
pub mod sch;
pub mod segh;
