//! Deep methods on tch (libtorch): AlexNet, SDCH, CZHash, AgNet.
//!
//! - [`alexnet`]: torchvision-compatible AlexNet; [`mlp`]: the bag-of-words / feature-mode MLP;
//! - [`pretrained`]: torchvision checkpoints (`.pth` via [`pth`], or safetensors);
//! - [`trainer`]: device choice, seeded batches, progress, logs, an optimiser whose state is
//!   checkpointed, and atomic resumable checkpoints — shared by every deep method;
//! - [`sdch`]: Semantic Deep Cross-modal Hashing; [`itq`]: ITQ rotation (SDCH's B initialisation);
//! - [`features`]: `cmh features` (fc7 image features into a new bundle).

pub mod alexnet;
pub mod features;
pub mod itq;
pub mod mlp;
pub mod pretrained;
pub mod pth;
pub mod sdch;
pub mod tensors;
pub mod trainer;
