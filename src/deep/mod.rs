//! Deep methods on tch (libtorch): AlexNet, SDCH, CZHash, AgNet.
pub mod agnet;
pub mod czhash;
pub mod zs_common;
