//! The bag-of-words network (and the image network in feature mode): fully connected layers
//! `{name}-fc1`, `{name}-fc2`, …, ReLU after every layer but the last (SDCH's text network:
//! txt-fc1 4096, txt-fc2 4096, txt-fc3 k). Optional dropout after each ReLU while training.

use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    dropout: f64,
}

impl Mlp {
    /// `in_dim → hidden[0] → … → out_dim`, layers named `{name}-fc1` … under `p`.
    pub fn new(p: &nn::Path, name: &str, in_dim: i64, hidden: &[i64], out_dim: i64, dropout: f64) -> Mlp {
        let dims: Vec<i64> = std::iter::once(in_dim).chain(hidden.iter().copied()).chain(std::iter::once(out_dim)).collect();
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(p / format!("{name}-fc{}", i + 1), w[0], w[1], Default::default()))
            .collect();
        Mlp { layers, dropout }
    }
}

impl nn::ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.layers.len() - 1;
        let mut x = xs.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = x.apply(l);
            if i < last {
                x = x.relu();
                if train && self.dropout > 0.0 {
                    x = x.dropout(self.dropout, true);
                }
            }
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn::ModuleT;
    use tch::{Device, Kind};

    #[test]
    fn layout_and_hand_computed_forward() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Mlp::new(&vs.root(), "txt", 2, &[3], 1, 0.0);
        let mut names: Vec<_> = vs.variables().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["txt-fc1.bias", "txt-fc1.weight", "txt-fc2.bias", "txt-fc2.weight"]);
        let v = vs.variables();
        tch::no_grad(|| {
            v["txt-fc1.weight"].shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0]).view([3, 2]));
            v["txt-fc1.bias"].shallow_clone().copy_(&Tensor::from_slice(&[0.0f32, -1.0, 0.0]));
            v["txt-fc2.weight"].shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]));
            v["txt-fc2.bias"].shallow_clone().copy_(&Tensor::from_slice(&[0.5f32]));
        });
        // x = (2, 3): h = relu(2, 2, -5) = (2, 2, 0); y = 2 + 4 + 0 + 0.5 = 6.5
        let y = m.forward_t(&Tensor::from_slice(&[2.0f32, 3.0]).view([1, 2]), false);
        assert!((y.double_value(&[0, 0]) - 6.5).abs() < 1e-6);
        assert_eq!(y.kind(), Kind::Float);
    }
}
