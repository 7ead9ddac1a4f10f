//! Deep methods on tch (libtorch): AlexNet, SDCH, CZHash, AgNet.
