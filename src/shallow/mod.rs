//! Shallow methods on ndarray + LAPACK (OpenBLAS): SCH, SeGH and the CCA-ITQ baseline.
pub mod cca_itq;
pub mod common;
pub mod sch;
pub mod segh;
