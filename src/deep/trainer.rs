//! Training machinery every deep method shares (SDCH now, CZHash and AgNet later).
//!
//! - `resolve_device`: `--device auto|cpu|cuda` → a tch device (`cuda` without CUDA = error).
//! - [`Optimizer`]: Adam or SGD with momentum over named parameter groups (per-group learning
//!   rate, groups switched on and off by a schedule). It is implemented here, with PyTorch's
//!   update rules, rather than taken from tch, because tch's optimiser state cannot be read or
//!   restored: ours is saved in every checkpoint, so a resumed run continues exactly.
//! - [`Trainer`]: seeds (tch's generator is re-seeded from (seed, epoch) at the start of every
//!   epoch, and mini-batches come from a ChaCha8 generator whose position is checkpointed), an
//!   indicatif progress bar (when `FitContext::progress`), per-epoch lines appended to
//!   `checkpoint_dir/train.log`, and an atomic checkpoint per epoch
//!   (`checkpoint_dir/checkpoint.safetensors`: weights, optimiser state, method state such as B,
//!   and JSON metadata with the epoch, RNG position, history and the run's configuration).
//!
//! Resuming (`FitContext::resume`) refuses a checkpoint written by another method, another
//! architecture or other hyper-parameters (all but `epochs`), naming what differs. On the CPU a
//! resumed run reaches exactly the state of an uninterrupted one (tested in `sdch`).
//!
//! How a method uses it:
//! ```ignore
//! let mut tr = Trainer::new("sdch", ctx, params.epochs, control)?; // seeds tch, picks the device
//! let vs = nn::VarStore::new(tr.device); /* build the networks */
//! let mut opt = Optimizer::new(cfg, groups_from_var_store(&vs, |name| group_of(name), &lrs)?);
//! if let Some(ck) = tr.load_for_resume(&config_json)? { ck.restore_vars(&vs)?; opt.restore(&ck)?; /* method state */ tr.restore(&ck)?; }
//! while let Some(epoch) = tr.next_epoch() {
//!     for idx in tr.batches(n, batch) { /* loss */ opt.backward_step(&loss)?; tr.batch_done(loss); }
//!     tr.end_epoch(loss, "details")?;
//!     tr.checkpoint(&vs, &opt, &[("B", &b)], json!({..}))?; // also stops here when asked to
//! }
//! ```

use crate::method::{DeviceChoice, FitContext};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// The checkpoint file inside `FitContext::checkpoint_dir`.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The per-epoch log inside `FitContext::checkpoint_dir`.
pub(crate) const LOG_FILE: &str = "train.log";
const FORMAT: &str = "cmh-checkpoint-1";

/// Loads libtorch's CUDA backend, once per process; true when `libtorch_cuda.so` loaded. The binary
/// does not link it (build.rs: it would cost every process, searches included, hundreds of MB of
/// resident memory); it is found through the binary's rpath, and its static initialisers register
/// the backend. libtorch decides whether CUDA exists on its first CUDA query and never again, so
/// this must run before any other tch call: `cmh` calls it at start-up for commands that may use
/// CUDA, and `cuda_available` calls it too.
pub fn load_cuda_backend() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with a NUL-terminated name; the handle stays open for the process lifetime.
        !unsafe { libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
    })
}

/// Whether libtorch can use a CUDA device (its CUDA backend loads and sees a GPU).
pub(crate) fn cuda_available() -> bool {
    load_cuda_backend() && tch::Cuda::is_available()
}

/// The tch device for a `--device` choice. `Auto` = CUDA when available, else the CPU.
pub(crate) fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Auto => Ok(if cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if cuda_available() {
                Ok(Device::Cuda(0))
            } else {
                bail!("--device cuda was asked for, but CUDA is not available here (no GPU or driver, or libtorch without CUDA); use --device cpu or auto")
            }
        }
    }
}

// ---------------------------------------------------------------- optimiser

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (β = 0.9, 0.999, ε = 1e-8), L2 weight decay added to the gradient as in `torch.optim.Adam`.
    #[default]
    Adam,
    /// SGD with momentum 0.9 (`torch.optim.SGD` rules, no dampening or Nesterov).
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
}

/// A named group of parameters sharing a learning rate.
pub struct ParamGroup {
    pub name: String,
    pub lr: f64,
    pub enabled: bool,
    /// (variable name, variable), sorted by name.
    pub params: Vec<(String, Tensor)>,
}

struct ParamState {
    step: u64,
    /// Adam: first moment; SGD: momentum buffer.
    m: Tensor,
    /// Adam: second moment (undefined for SGD).
    v: Tensor,
    /// Scratch space for Adam's denominator (not saved).
    scratch: Tensor,
}

impl ParamState {
    /// A deep copy (fresh scratch space).
    fn deep_copy(&self) -> Self {
        let copy = |t: &Tensor| if t.defined() { t.copy() } else { Tensor::new() };
        Self {
            step: self.step,
            m: self.m.copy(),
            v: copy(&self.v),
            scratch: if self.scratch.defined() { self.scratch.zeros_like() } else { Tensor::new() },
        }
    }
}

/// An in-memory copy of an [`Optimizer`]'s state (per parameter: step, moments).
pub struct OptimizerSnapshot(BTreeMap<String, ParamState>);

/// Adam / SGD over parameter groups, with state that can be checkpointed.
pub struct Optimizer {
    cfg: OptimizerConfig,
    groups: Vec<ParamGroup>,
    state: BTreeMap<String, ParamState>,
}

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
const SGD_MOMENTUM: f64 = 0.9;

/// Splits the trainable variables of `vs` into groups: `assign(name)` gives the index into
/// `groups` ((name, learning rate) pairs) or `None` to leave a variable out.
pub(crate) fn groups_from_var_store(
    vs: &nn::VarStore,
    assign: impl Fn(&str) -> Option<usize>,
    groups: &[(&str, f64)],
) -> Result<Vec<ParamGroup>> {
    let mut out: Vec<ParamGroup> =
        groups.iter().map(|&(n, lr)| ParamGroup { name: n.to_string(), lr, enabled: true, params: vec![] }).collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        if let Some(g) = assign(&name) {
            let grp = out.get_mut(g).ok_or_else(|| anyhow!("internal: group {g} for {name} does not exist"))?;
            grp.params.push((name, t));
        }
    }
    Ok(out)
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, groups: Vec<ParamGroup>) -> Self {
        Self { cfg, groups, state: BTreeMap::new() }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Switches a group on or off (a switched-off group is not updated).
    pub(crate) fn set_enabled(&mut self, group: &str, enabled: bool) -> Result<()> {
        let g = self.groups.iter_mut().find(|g| g.name == group).ok_or_else(|| anyhow!("internal: no parameter group {group}"))?;
        g.enabled = enabled;
        Ok(())
    }

    /// Back-propagates `loss` to the parameters of the enabled groups only (fresh gradient
    /// tensors, as `autograd.grad`: nothing accumulates in `.grad`, so there is nothing to zero and
    /// switched-off groups cost no gradient computation) and applies one update to each.
    pub(crate) fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        self.backward_step_clipped(loss, None).map(|_| ())
    }

    /// [`Optimizer::backward_step`] with optional gradient-norm clipping (`torch.nn.utils.
    /// clip_grad_norm_` semantics): when the Euclidean norm of all the enabled parameters'
    /// gradients together exceeds `max_norm`, every gradient is scaled by max_norm / (norm + 1e-6)
    /// before the update. Returns the norm before clipping (0 when nothing is enabled; only
    /// computed when clipping).
    pub(crate) fn backward_step_clipped(&mut self, loss: &Tensor, max_norm: Option<f64>) -> Result<f64> {
        let mut names: Vec<(String, Tensor, f64)> = Vec::new();
        for g in self.groups.iter().filter(|g| g.enabled) {
            for (name, p) in &g.params {
                names.push((name.clone(), p.shallow_clone(), g.lr));
            }
        }
        if names.is_empty() {
            return Ok(0.0);
        }
        let inputs: Vec<&Tensor> = names.iter().map(|(_, p, _)| p).collect();
        let mut grads = Tensor::f_run_backward(&[loss], &inputs, false, false)?;
        let mut norm = 0.0;
        if let Some(max_norm) = max_norm {
            // One device-to-host read per step (not one per parameter tensor).
            let squares: Vec<Tensor> =
                tch::no_grad(|| grads.iter().filter(|g| g.defined()).map(|g| g.square().sum(Kind::Double)).collect());
            if !squares.is_empty() {
                norm = tch::no_grad(|| Tensor::stack(&squares, 0).sum(Kind::Double).double_value(&[])).sqrt();
            }
            if norm > max_norm {
                let factor = max_norm / (norm + 1e-6);
                tch::no_grad(|| {
                    for g in grads.iter_mut().filter(|g| g.defined()) {
                        let _ = g.g_mul_scalar_(factor);
                    }
                });
            }
        }
        tch::no_grad(|| {
            for ((name, p, lr), grad) in names.into_iter().zip(grads) {
                if grad.defined() {
                    self.update(&name, p, grad, lr);
                }
            }
        });
        Ok(norm)
    }

    /// Sets the learning rate of a group.
    pub(crate) fn set_lr(&mut self, group: &str, lr: f64) -> Result<()> {
        let g = self.groups.iter_mut().find(|g| g.name == group).ok_or_else(|| anyhow!("internal: no parameter group {group}"))?;
        g.lr = lr;
        Ok(())
    }

    /// A deep copy of the optimiser state (moments and step counts), for [`Optimizer::restore_snapshot`].
    pub(crate) fn snapshot(&self) -> OptimizerSnapshot {
        OptimizerSnapshot(self.state.iter().map(|(n, s)| (n.clone(), s.deep_copy())).collect())
    }

    /// Puts back the state of a [`Optimizer::snapshot`] (deep copies, so the snapshot can be reused).
    pub(crate) fn restore_snapshot(&mut self, snap: &OptimizerSnapshot) {
        self.state = snap.0.iter().map(|(n, s)| (n.clone(), s.deep_copy())).collect();
    }

    /// One update of parameter `p` with gradient `grad` (which it may overwrite).
    fn update(&mut self, name: &str, mut p: Tensor, mut grad: Tensor, lr: f64) {
        let cfg = self.cfg;
        let st = self.state.entry(name.to_string()).or_insert_with(|| ParamState {
            step: 0,
            m: p.zeros_like(),
            v: if cfg.kind == OptimizerKind::Adam { p.zeros_like() } else { Tensor::new() },
            scratch: if cfg.kind == OptimizerKind::Adam { p.zeros_like() } else { Tensor::new() },
        });
        st.step += 1;
        if cfg.weight_decay != 0.0 {
            // g ← g + λ p (L2 penalty, torch.optim semantics), without a temporary.
            let wd = Tensor::from(cfg.weight_decay as f32).to_device(p.device());
            let _ = grad.addcmul_(&p, &wd);
        }
        match cfg.kind {
            OptimizerKind::Adam => {
                // m ← β₁m + (1−β₁)g ; v ← β₂v + (1−β₂)g² ;
                // p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)
                let _ = st.m.lerp_(&grad, 1.0 - ADAM_BETA1);
                let _ = grad.g_mul_scalar_((1.0 - ADAM_BETA2).sqrt());
                let _ = st.v.g_mul_scalar_(ADAM_BETA2);
                let _ = st.v.addcmul_(&grad, &grad);
                let t = st.step as i32;
                let bc1 = 1.0 - ADAM_BETA1.powi(t);
                let bc2 = 1.0 - ADAM_BETA2.powi(t);
                let step_size = lr / bc1;
                if step_size == 0.0 {
                    return; // a frozen group (lr 0): moments advance, p stays
                }
                let _ = st.v.sqrt_out(&st.scratch);
                // scratch ← −(√v/√bc2 + ε)/step_size, so p += m / scratch.
                let _ = st.scratch.g_mul_scalar_(-1.0 / (step_size * bc2.sqrt()));
                let _ = st.scratch.g_add_scalar_(-ADAM_EPS / step_size);
                let _ = p.addcdiv_(&st.m, &st.scratch);
            }
            OptimizerKind::Sgd => {
                // buf ← μ buf + g (buf = g at the first step) ; p ← p − lr buf
                if st.step == 1 {
                    st.m.copy_(&grad);
                } else {
                    let _ = st.m.g_mul_scalar_(SGD_MOMENTUM);
                    let _ = st.m.g_add_(&grad);
                }
                let neg_lr = Tensor::from(-lr as f32).to_device(p.device());
                let _ = p.addcmul_(&st.m, &neg_lr);
            }
        }
    }

    /// State tensors for a checkpoint (`optim.<param>.m`, `optim.<param>.v`).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, st) in &self.state {
            out.push((format!("optim.{name}.m"), st.m.shallow_clone()));
            if st.v.defined() {
                out.push((format!("optim.{name}.v"), st.v.shallow_clone()));
            }
        }
        out
    }

    fn steps(&self) -> BTreeMap<String, u64> {
        self.state.iter().map(|(n, s)| (n.clone(), s.step)).collect()
    }

    /// Restores the state saved in `ck`.
    pub(crate) fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        self.state.clear();
        let params: HashMap<&str, &Tensor> = self.groups.iter().flat_map(|g| g.params.iter().map(|(n, t)| (n.as_str(), t))).collect();
        for (name, &step) in &ck.meta.optimizer_steps {
            let p =
                params.get(name.as_str()).ok_or_else(|| anyhow!("{}: optimiser state for unknown parameter {name}", ck.path.display()))?;
            let get = |suffix: &str| -> Result<Tensor> {
                let key = format!("optim.{name}.{suffix}");
                let t = ck.tensors.get(&key).ok_or_else(|| anyhow!("{}: tensor {key} missing", ck.path.display()))?;
                if t.size() != p.size() {
                    bail!("{}: tensor {key} is {:?}, expected {:?}", ck.path.display(), t.size(), p.size());
                }
                Ok(t.to_kind(p.kind()).to_device(p.device()))
            };
            let adam = self.cfg.kind == OptimizerKind::Adam;
            self.state.insert(
                name.clone(),
                ParamState {
                    step,
                    m: get("m")?,
                    v: if adam { get("v")? } else { Tensor::new() },
                    scratch: if adam { p.zeros_like() } else { Tensor::new() },
                },
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- checkpoints

/// The JSON part of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: String,
    pub method: String,
    /// The method's configuration: architecture and every hyper-parameter but `epochs`.
    pub config: serde_json::Value,
    pub seed: u64,
    /// Epochs completed.
    pub epoch: usize,
    /// Per-epoch losses so far.
    pub history: Vec<f64>,
    /// Word position of the batch generator (ChaCha8, seeded with `seed`), as a decimal string:
    /// where the next epoch's permutation is drawn (for a checkpoint within an epoch, where the
    /// current epoch's was drawn).
    pub rng_word_pos: String,
    /// Mini-batches of epoch `epoch + 1` already trained (0: the checkpoint ends an epoch).
    #[serde(default)]
    pub step: usize,
    /// Within an epoch: the sum and count of the batch losses so far.
    #[serde(default)]
    pub batch_losses: (f64, usize),
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Method-specific state that is not a tensor.
    pub extra: serde_json::Value,
}

/// A loaded checkpoint: metadata and every tensor (CPU), by name (`model.*`, `optim.*`, `state.*`).
pub struct Checkpoint {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint file; a truncated, corrupt or foreign file is a clear error.
    pub fn load(path: &Path) -> Result<Self> {
        let (tensors, meta) =
            super::tensors::read_safetensors(path).with_context(|| format!("{}: cannot read the checkpoint", path.display()))?;
        let json = meta.get("cmh").ok_or_else(|| anyhow!("{}: not a cmh checkpoint (no cmh metadata)", path.display()))?;
        let meta: CheckpointMeta =
            serde_json::from_str(json).map_err(|e| anyhow!("{}: corrupt checkpoint metadata: {e}", path.display()))?;
        if meta.format != FORMAT {
            bail!("{}: checkpoint format {:?}, this cmh reads {FORMAT:?}", path.display(), meta.format);
        }
        Ok(Self { path: path.to_path_buf(), meta, tensors: tensors.into_iter().collect() })
    }

    /// A method-state tensor (`state.<name>`).
    pub fn state(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(&format!("state.{name}")).ok_or_else(|| anyhow!("{}: tensor state.{name} missing", self.path.display()))
    }

    /// Copies the saved weights into every variable of `vs` (refusing missing / mis-shaped ones by name).
    pub(crate) fn restore_vars(&self, vs: &nn::VarStore) -> Result<()> {
        let mut targets: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        let source: HashMap<String, Tensor> =
            self.tensors.iter().filter_map(|(k, t)| k.strip_prefix("model.").map(|n| (n.to_string(), t.shallow_clone()))).collect();
        super::tensors::copy_named(&targets, &source, &format!("checkpoint {}", self.path.display()))
    }
}

/// When a run writes checkpoints within an epoch, and where it stops early (the run returns
/// [`Interrupted`] after writing its checkpoint, as a kill would; tests and callers that budget
/// time use it).
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    pub stop_after_epoch: Option<usize>,
    /// Stop after this many mini-batches of this epoch (1-based epoch, batches).
    pub stop_after_step: Option<(usize, usize)>,
    /// Also checkpoint every this many mini-batches within an epoch (default: time only).
    pub checkpoint_steps: Option<usize>,
    /// Checkpoint within an epoch when this many minutes passed since the last checkpoint
    /// (default `DEFAULT_CHECKPOINT_MINUTES`).
    pub checkpoint_minutes: Option<f64>,
}

/// Minutes of training between two checkpoints within a long epoch.
pub(crate) const DEFAULT_CHECKPOINT_MINUTES: f64 = 10.0;

/// Set by SIGINT / SIGTERM while a training runs ([`install_stop_handler`]).
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Trainings alive in this process: a signal stops gracefully only while one runs.
static ARMED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes SIGINT and SIGTERM stop a training gracefully: the current mini-batch finishes, a
/// checkpoint is written and the run returns [`Interrupted`] (`cmh` exits with 130). Outside a
/// training, or at a second signal, the signal acts as usual (the process ends at once; every file
/// cmh writes is written under a temporary name and renamed, so nothing partial is left under a
/// final name). Called once by the `cmh` commands that train.
pub fn install_stop_handler() -> Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: the action only touches atomics and calls signal-hook's async-signal-safe
        // default-action emulation.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                if ARMED.load(SeqCst) > 0 && !STOP.swap(true, SeqCst) {
                    return;
                }
                let _ = signal_hook::low_level::emulate_default_handler(sig);
            })
        }
        .map_err(|e| anyhow!("cannot install the signal handler: {e}"))?;
    }
    Ok(())
}

/// Whether a stop was asked for by a signal.
pub(crate) fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts a live training in [`ARMED`] for its lifetime.
struct Armed;
impl Armed {
    fn new() -> Self {
        ARMED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Armed
    }
}
impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The error of a run stopped by [`RunControl`] or a signal.
#[derive(Debug)]
pub struct Interrupted {
    /// Epochs completed.
    pub epoch: usize,
    /// Mini-batches of the next epoch completed (0 when the stop came at an epoch's end).
    pub step: usize,
    pub checkpoint: Option<PathBuf>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.step > 0 {
            write!(f, "training stopped after {} mini-batches of epoch {}", self.step, self.epoch + 1)?;
        } else {
            write!(f, "training stopped after epoch {}", self.epoch)?;
        }
        if let Some(p) = &self.checkpoint {
            write!(f, "; resume from {}", p.display())?;
        }
        Ok(())
    }
}
impl std::error::Error for Interrupted {}

// ---------------------------------------------------------------- trainer

/// Epoch bookkeeping, seeds, progress, logs and checkpoints of one training run.
pub struct Trainer {
    pub device: Device,
    pub method: &'static str,
    pub seed: u64,
    pub total_epochs: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Loss of each completed epoch.
    pub history: Vec<f64>,
    rng: ChaCha8Rng,
    dir: Option<PathBuf>,
    resume: bool,
    progress: Option<ProgressBar>,
    control: RunControl,
    epoch_start: std::time::Instant,
    batch_losses: (f64, usize),
    /// Mini-batches of the current epoch done (trained or replayed).
    step: usize,
    /// Batch generator position where the current epoch's permutation was drawn.
    epoch_rng_pos: u128,
    /// `batches` calls in the current epoch (checkpoints within an epoch need exactly one).
    batch_calls: usize,
    /// After a resume within an epoch: mini-batches of the epoch to replay, and their losses.
    replay: usize,
    resumed_losses: Option<(f64, usize)>,
    last_checkpoint: std::time::Instant,
    /// The configuration checkpoints carry (from [`Trainer::load_for_resume`]).
    config: Option<serde_json::Value>,
    _armed: Armed,
    /// The first non-finite batch loss of this epoch: (batch number, value).
    diverged: Option<(usize, f64)>,
    /// Held for the whole run: see [`torch_rng_lock`].
    _rng_lock: std::sync::MutexGuard<'static, ()>,
}

/// libtorch's random generator (dropout draws from it) is process-wide: two trainings running
/// at once in one process (the test harness's threads, a library user's threads) would draw
/// from each other's stream, and a seeded CPU run would no longer be reproducible or resumable
/// to the same codes. Each [`Trainer`] therefore holds this lock from its creation (which seeds
/// the generator) to its drop, so trainings in one process run one at a time. Code that draws
/// from the generator outside a training (tests) holds it too.
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn torch_seed(seed: u64, epoch: usize) -> i64 {
    // splitmix64 of (seed, epoch): distinct, well-mixed seeds per epoch.
    let mut z = seed.wrapping_add((epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

impl Trainer {
    /// Resolves the device and seeds tch (for the networks' initialisation, which happens next).
    pub fn new(method: &'static str, ctx: &FitContext, total_epochs: usize, control: &RunControl) -> Result<Self> {
        let device = resolve_device(ctx.device)?;
        if ctx.resume && ctx.checkpoint_dir.is_none() {
            bail!("resuming needs the run's checkpoint folder (checkpoint_dir)");
        }
        let rng_lock = torch_rng_lock();
        tch::manual_seed(torch_seed(ctx.seed, 0));
        let progress = ctx.progress.then(|| {
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} / ~{duration})")
                    .unwrap()
                    .progress_chars("=> "),
            );
            pb.set_prefix(method);
            pb
        });
        Ok(Self {
            device,
            method,
            seed: ctx.seed,
            total_epochs,
            epoch: 0,
            history: vec![],
            rng: ChaCha8Rng::seed_from_u64(ctx.seed),
            dir: ctx.checkpoint_dir.clone(),
            resume: ctx.resume,
            progress,
            control: control.clone(),
            epoch_start: std::time::Instant::now(),
            batch_losses: (0.0, 0),
            step: 0,
            epoch_rng_pos: 0,
            batch_calls: 0,
            replay: 0,
            resumed_losses: None,
            last_checkpoint: std::time::Instant::now(),
            config: None,
            _armed: Armed::new(),
            diverged: None,
            _rng_lock: rng_lock,
        })
    }

    pub(crate) fn checkpoint_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(CHECKPOINT_FILE))
    }

    /// When resuming: the checkpoint, after checking it was written by this method with the same
    /// `config` and seed. `None` when not resuming.
    pub(crate) fn load_for_resume(&mut self, config: &serde_json::Value) -> Result<Option<Checkpoint>> {
        self.config = Some(config.clone());
        if !self.resume {
            self.log(&format!("training started: seed {}", self.seed))?;
            return Ok(None);
        }
        let path = self.checkpoint_path().expect("checked in new");
        if !path.is_file() {
            bail!("nothing to resume: {} does not exist", path.display());
        }
        let ck = Checkpoint::load(&path)?;
        if ck.meta.method != self.method {
            bail!("{}: the checkpoint was written by method {}, not {}", path.display(), ck.meta.method, self.method);
        }
        if &ck.meta.config != config {
            let diff = json_diff(&ck.meta.config, config, "");
            bail!(
                "{}: the checkpoint belongs to another architecture or other hyper-parameters ({}); \
                 resume with the same settings or start a new run folder",
                path.display(),
                diff.join("; ")
            );
        }
        if ck.meta.seed != self.seed {
            bail!("{}: the checkpoint was trained with seed {}, this run has seed {}", path.display(), ck.meta.seed, self.seed);
        }
        Ok(Some(ck))
    }

    /// Takes the epoch count, history and batch-generator position from a checkpoint.
    pub(crate) fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let pos: u128 = ck.meta.rng_word_pos.parse().map_err(|_| anyhow!("{}: corrupt rng_word_pos", ck.path.display()))?;
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
        self.rng.set_word_pos(pos);
        self.epoch = ck.meta.epoch;
        self.history = ck.meta.history.clone();
        if self.history.len() != self.epoch {
            bail!("{}: corrupt checkpoint: {} losses for {} epochs", ck.path.display(), self.history.len(), self.epoch);
        }
        if ck.meta.step > 0 && self.epoch >= self.total_epochs {
            bail!("{}: corrupt checkpoint: within epoch {} of {}", ck.path.display(), self.epoch + 1, self.total_epochs);
        }
        self.replay = ck.meta.step;
        self.resumed_losses = (ck.meta.step > 0).then_some(ck.meta.batch_losses);
        if ck.meta.step > 0 {
            self.log(&format!("resumed from {} after {} mini-batches of epoch {}", ck.path.display(), ck.meta.step, self.epoch + 1))?;
        } else {
            self.log(&format!("resumed from {} after epoch {}", ck.path.display(), self.epoch))?;
        }
        Ok(())
    }

    /// Starts the next epoch (1-based), or `None` when all are done. Re-seeds tch's generator
    /// (dropout) from (seed, epoch) so a resumed run draws the same numbers.
    pub(crate) fn next_epoch(&mut self) -> Option<usize> {
        if self.epoch >= self.total_epochs {
            if let Some(pb) = &self.progress {
                pb.finish_and_clear();
            }
            return None;
        }
        let e = self.epoch + 1;
        tch::manual_seed(torch_seed(self.seed, e));
        self.epoch_start = std::time::Instant::now();
        self.batch_losses = self.resumed_losses.take().unwrap_or((0.0, 0));
        self.step = 0;
        self.batch_calls = 0;
        self.diverged = None;
        Some(e)
    }

    /// Mini-batches of `0..n` for this epoch: a fresh permutation cut into `batch`-sized pieces
    /// (the last one may be smaller; a last piece of one item is merged into the previous one).
    pub fn batches(&mut self, n: usize, batch: usize) -> Vec<Vec<usize>> {
        if self.batch_calls == 0 {
            self.epoch_rng_pos = self.rng.get_word_pos();
        }
        self.batch_calls += 1;
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut self.rng);
        let mut out: Vec<Vec<usize>> = perm.chunks(batch.max(1)).map(|c| c.to_vec()).collect();
        if out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
            let last = out.pop().unwrap();
            out.last_mut().unwrap().extend(last);
        }
        if let Some(pb) = &self.progress {
            if pb.length() == Some(0) {
                pb.set_length((out.len() * self.total_epochs) as u64);
                pb.set_position((out.len() * self.epoch) as u64);
            }
        }
        out
    }

    /// True at the start of an epoch that a resumed run entered part-way: the state the epoch
    /// began with (for example a layer fitted in closed form at its start) is the checkpoint's.
    pub(crate) fn resuming_within_epoch(&self) -> bool {
        self.replay > 0
    }

    /// For each mini-batch of an epoch, in order, before training it: true when the run resumed
    /// from a checkpoint written after this batch. The method then repeats only the batch's random
    /// draws (its forward pass, without a gradient step), so that libtorch's generator (dropout)
    /// reaches the state it had when the checkpoint was written, and goes on to the next batch.
    pub(crate) fn replaying(&mut self) -> bool {
        if self.replay == 0 {
            return false;
        }
        self.replay -= 1;
        self.step += 1;
        if let Some(pb) = &self.progress {
            pb.inc(1);
        }
        true
    }

    /// Records a mini-batch loss (progress bar message: epoch and running mean loss).
    pub(crate) fn batch_done(&mut self, loss: f64) {
        self.step += 1;
        if !loss.is_finite() && self.diverged.is_none() {
            self.diverged = Some((self.batch_losses.1 + 1, loss));
        }
        self.batch_losses.0 += loss;
        self.batch_losses.1 += 1;
        if let Some(pb) = &self.progress {
            pb.inc(1);
            pb.set_message(format!(
                "epoch {}/{} loss {:.4}",
                self.epoch + 1,
                self.total_epochs,
                self.batch_losses.0 / self.batch_losses.1 as f64
            ));
        }
    }

    /// Closes the epoch: records `loss` (e.g. the epoch's mean batch loss) and appends a log line.
    /// Training that diverged (a batch loss or `loss` NaN or infinite) stops here with an error,
    /// before this epoch's checkpoint: the last good one stays in place.
    pub(crate) fn end_epoch(&mut self, loss: f64, details: &str) -> Result<()> {
        if let Some((batch, value)) = self.diverged.take().or((!loss.is_finite()).then_some((0, loss))) {
            let at = if batch > 0 { format!("batch {batch} of epoch {}", self.epoch + 1) } else { format!("epoch {}", self.epoch + 1) };
            let kept = match self.checkpoint_path() {
                Some(p) if self.epoch > 0 && p.is_file() => {
                    format!("the last good checkpoint (epoch {}) is kept in {}", self.epoch, p.display())
                }
                _ => "no earlier epoch left a checkpoint".to_string(),
            };
            self.log(&format!("diverged: loss {value} at {at}"))?;
            if let Some(pb) = &self.progress {
                pb.abandon();
            }
            bail!(
                "{} diverged: the training loss became {value} at {at} (exploding gradients: the learning rate or a loss weight \
                 is too large for this data); {kept}; lower the learning rate, or find settings with `cmh tune --method {}`",
                self.method,
                self.method
            );
        }
        self.epoch += 1;
        self.history.push(loss);
        let secs = self.epoch_start.elapsed().as_secs_f64();
        self.log(&format!("epoch {}/{} loss {loss:.6} {details} time {secs:.2}s", self.epoch, self.total_epochs))
    }

    /// The mean of the batch losses recorded since the epoch began.
    pub(crate) fn mean_batch_loss(&self) -> f64 {
        if self.batch_losses.1 == 0 {
            f64::NAN
        } else {
            self.batch_losses.0 / self.batch_losses.1 as f64
        }
    }

    /// Appends a line to `train.log` (when there is a checkpoint folder).
    pub fn log(&self, line: &str) -> Result<()> {
        if let Some(dir) = &self.dir {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the checkpoint folder", dir.display()))?;
            let p = dir.join(LOG_FILE);
            let mut f =
                std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
            writeln!(f, "{} {line}", self.method).with_context(|| format!("{}: cannot write", p.display()))?;
        }
        Ok(())
    }

    /// Writes the checkpoint of the epoch just ended (atomically; no-op without a folder), then
    /// returns [`Interrupted`] if the run was asked to stop here (by [`RunControl`] or a signal).
    pub fn checkpoint(
        &mut self,
        vs: &nn::VarStore,
        opt: &Optimizer,
        config: &serde_json::Value,
        state: &[(&str, &Tensor)],
        extra: serde_json::Value,
    ) -> Result<()> {
        self.write_checkpoint(vs, opt, config, state, extra, 0)?;
        let stop = self.control.stop_after_epoch == Some(self.epoch) || stop_requested();
        if stop && self.epoch < self.total_epochs {
            return Err(self.interrupted(0));
        }
        Ok(())
    }

    /// Called by a method after each trained mini-batch (after [`Trainer::batch_done`]): writes a
    /// checkpoint within the epoch when one is due ([`RunControl`]: every N batches or M minutes)
    /// or a stop was asked for, and then returns [`Interrupted`] if so. `state` and `extra` are the
    /// method's state as [`Trainer::checkpoint`] takes them; the configuration is the one given to
    /// [`Trainer::load_for_resume`]. Only methods that draw one permutation per epoch can resume
    /// within one; others stop at the epoch's end.
    pub(crate) fn step_end(
        &mut self,
        vs: &nn::VarStore,
        opt: &Optimizer,
        state: &[(&str, &Tensor)],
        extra: serde_json::Value,
    ) -> Result<()> {
        let epoch = self.epoch + 1;
        let stop = stop_requested() || self.control.stop_after_step == Some((epoch, self.step));
        let minutes = self.control.checkpoint_minutes.unwrap_or(DEFAULT_CHECKPOINT_MINUTES);
        let due = stop
            || self.control.checkpoint_steps.is_some_and(|n| n > 0 && self.step.is_multiple_of(n))
            || self.last_checkpoint.elapsed().as_secs_f64() >= minutes * 60.0;
        if !due || self.batch_calls != 1 {
            return Ok(());
        }
        let config =
            self.config.clone().ok_or_else(|| anyhow!("internal: {} checkpoints within an epoch before load_for_resume", self.method))?;
        self.write_checkpoint(vs, opt, &config, state, extra, self.step)?;
        if stop {
            return Err(self.interrupted(self.step));
        }
        Ok(())
    }

    /// The error of a stop after `step` mini-batches of the current epoch (0: at an epoch's end).
    fn interrupted(&mut self, step: usize) -> anyhow::Error {
        if let Some(pb) = &self.progress {
            pb.abandon();
        }
        let what = if step > 0 {
            format!("stopped after {step} mini-batches of epoch {}", self.epoch + 1)
        } else {
            format!("stopped after epoch {}", self.epoch)
        };
        let _ = self.log(&what);
        Interrupted { epoch: self.epoch, step, checkpoint: self.checkpoint_path() }.into()
    }

    /// Writes a checkpoint: after `step` mini-batches of the current epoch, or at an epoch's end (0).
    fn write_checkpoint(
        &mut self,
        vs: &nn::VarStore,
        opt: &Optimizer,
        config: &serde_json::Value,
        state: &[(&str, &Tensor)],
        extra: serde_json::Value,
        step: usize,
    ) -> Result<()> {
        self.last_checkpoint = std::time::Instant::now();
        if let Some(path) = self.checkpoint_path() {
            let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
            tensors.extend(opt.state_tensors());
            tensors.extend(state.iter().map(|(n, t)| (format!("state.{n}"), t.shallow_clone())));
            let rng_pos = if step > 0 { self.epoch_rng_pos } else { self.rng.get_word_pos() };
            let meta = CheckpointMeta {
                format: FORMAT.into(),
                method: self.method.into(),
                config: config.clone(),
                seed: self.seed,
                epoch: self.epoch,
                history: self.history.clone(),
                rng_word_pos: rng_pos.to_string(),
                step,
                batch_losses: if step > 0 { self.batch_losses } else { (0.0, 0) },
                optimizer_steps: opt.steps(),
                extra,
            };
            let json = serde_json::to_string(&meta)?;
            super::tensors::write_safetensors(&path, &tensors, HashMap::from([("cmh".to_string(), json)]))?;
        }
        Ok(())
    }
}

/// Paths where two JSON values differ (for "other hyper-parameters" errors).
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => json_diff(u, v, &p),
                        (u, v) => vec![format!("{p}: checkpoint {} vs now {}", show(u), show(v))],
                    }
                })
                .collect()
        }
        _ if a == b => vec![],
        _ => vec![format!("{at}: checkpoint {a} vs now {b}")],
    }
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or("(absent)".into(), |v| v.to_string())
}

/// PyTorch's default initialisation of `nn.Linear` / `nn.Conv2d` layers (weights and biases
/// uniform in ±1/√fan_in, fan_in = inputs × kernel area), drawn from a ChaCha8 generator seeded
/// with `seed`, in variable-name order. Methods call it on their fresh networks so that the
/// initialisation depends on the seed only, not on libtorch's process-wide generator (which
/// other threads may be using). Applies to trainable `*.weight` (≥ 2-d) and `*.bias` variables
/// whose names start with one of `prefixes` (all when empty); others are left alone.
pub(crate) fn init_default(vs: &nn::VarStore, seed: u64, prefixes: &[&str]) -> Result<()> {
    use rand::Rng;
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p))).collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let t = &vars[name];
        if !t.requires_grad() {
            continue;
        }
        let fan_in = if let Some(stem) = name.strip_suffix(".bias") {
            match vars.get(&format!("{stem}.weight")) {
                Some(w) => w.size()[1..].iter().product::<i64>(),
                None => continue,
            }
        } else if name.ends_with(".weight") && t.dim() >= 2 {
            t.size()[1..].iter().product::<i64>()
        } else {
            continue;
        };
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let vals: Vec<f32> = (0..t.numel()).map(|_| rng.gen_range(-bound..bound) as f32).collect();
        tch::no_grad(|| t.shallow_clone().f_copy_(&Tensor::from_slice(&vals).view(t.size().as_slice()).to_device(t.device())))?;
    }
    Ok(())
}

/// Float tensor of `x` values on `device` (helper for small constants).
pub fn scalar(x: f64, device: Device) -> Tensor {
    Tensor::from(x as f32).to_kind(Kind::Float).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One Adam step and one SGD step on f(p) = ½‖p‖² (gradient = p), checked against the update
    /// rules computed by hand.
    #[test]
    fn adam_and_sgd_match_hand_computation() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
            let groups = groups_from_var_store(&vs, |_| Some(0), &[("all", 0.1)]).unwrap();
            let mut opt = Optimizer::new(OptimizerConfig { kind, weight_decay: 0.5 }, groups);
            let mut expect = [1.0f64, -2.0];
            let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
            for t in 1..=3 {
                let loss = (&p * &p).sum(Kind::Float) * 0.5;
                opt.backward_step(&loss).unwrap();
                for i in 0..2 {
                    let g = expect[i] + 0.5 * expect[i];
                    match kind {
                        OptimizerKind::Adam => {
                            m[i] = 0.9 * m[i] + 0.1 * g;
                            v[i] = 0.999 * v[i] + 0.001 * g * g;
                            let mh = m[i] / (1.0 - 0.9f64.powi(t));
                            let vh = v[i] / (1.0 - 0.999f64.powi(t));
                            expect[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
                        }
                        OptimizerKind::Sgd => {
                            m[i] = if t == 1 { g } else { 0.9 * m[i] + g };
                            expect[i] -= 0.1 * m[i];
                        }
                    }
                }
                let got = Vec::<f32>::try_from(&p).unwrap();
                for i in 0..2 {
                    assert!((got[i] as f64 - expect[i]).abs() < 1e-5, "{kind:?} step {t}: {got:?} vs {expect:?}");
                }
            }
            // A disabled group is left alone.
            opt.set_enabled("all", false).unwrap();
            let before = Vec::<f32>::try_from(&p).unwrap();
            opt.backward_step(&(&p * &p).sum(Kind::Float)).unwrap();
            assert_eq!(before, Vec::<f32>::try_from(&p).unwrap());
        }
    }

    /// Clipping: f(p) = ½‖p‖² at p = (3, 4) has gradient norm 5; SGD (first step: buffer = g)
    /// with max_norm 1 moves p by lr · g / (5 + 1e-6). A snapshot taken before two Adam steps,
    /// restored (with the weights), gives the same two steps again.
    #[test]
    fn clipping_and_snapshots_match_hand_computation() {
        let _lock = crate::deep::test_support::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32, 4.0]));
        let groups = groups_from_var_store(&vs, |_| Some(0), &[("all", 0.1)]).unwrap();
        let mut opt = Optimizer::new(OptimizerConfig { kind: OptimizerKind::Sgd, weight_decay: 0.0 }, groups);
        let norm = opt.backward_step_clipped(&((&p * &p).sum(Kind::Float) * 0.5), Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
        let got = Vec::<f32>::try_from(&p).unwrap();
        let f = 0.1 / (5.0 + 1e-6);
        assert!((got[0] as f64 - (3.0 - 3.0 * f)).abs() < 1e-6 && (got[1] as f64 - (4.0 - 4.0 * f)).abs() < 1e-6, "{got:?}");
        // Below the threshold nothing is scaled: a plain step.
        let before = Vec::<f32>::try_from(&p).unwrap();
        let n2 = opt.backward_step_clipped(&((&p * &p).sum(Kind::Float) * 0.5), Some(100.0)).unwrap();
        let after = Vec::<f32>::try_from(&p).unwrap();
        // SGD momentum: buf = 0.9 · g₁ + g₂.
        let g1 = [3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)]; // the clipped first gradient (the buffer)
        for i in 0..2 {
            let g2 = before[i] as f64;
            assert!((after[i] as f64 - (g2 - 0.1 * (0.9 * g1[i] + g2))).abs() < 1e-5);
        }
        assert!((n2 - (before[0] as f64).hypot(before[1] as f64)).abs() < 1e-5);
        // Snapshots (Adam).
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Optimizer::new(
            OptimizerConfig { kind: OptimizerKind::Adam, weight_decay: 0.0 },
            groups_from_var_store(&vs, |_| Some(0), &[("all", 0.1)]).unwrap(),
        );
        let step = |opt: &mut Optimizer| opt.backward_step(&(&p * &p * &p).sum(Kind::Float)).unwrap();
        step(&mut opt);
        let (snap, p0) = (opt.snapshot(), Vec::<f32>::try_from(&p).unwrap());
        step(&mut opt);
        step(&mut opt);
        let p2 = Vec::<f32>::try_from(&p).unwrap();
        opt.restore_snapshot(&snap);
        tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&p0)));
        step(&mut opt);
        step(&mut opt);
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), p2);
        // set_lr: lr 0 freezes the weights.
        opt.set_lr("all", 0.0).unwrap();
        step(&mut opt);
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), p2);
        assert!(opt.set_lr("nope", 0.1).is_err());
    }

    #[test]
    fn cuda_backend_loads_lazily() {
        // The binary does not link libtorch_cuda; asking for CUDA loads it (the wheel ships it).
        let has_lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".libtorch/lib/libtorch_cuda.so").exists();
        assert_eq!(load_cuda_backend(), has_lib);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert_eq!(maps.contains("libtorch_cuda.so"), has_lib);
    }

    #[test]
    fn cuda_without_cuda_is_a_clear_error() {
        if tch::Cuda::is_available() {
            eprintln!("CUDA present: the no-CUDA error cannot be tested here");
            return;
        }
        let e = resolve_device(DeviceChoice::Cuda).unwrap_err().to_string();
        assert!(e.contains("CUDA is not available"), "{e}");
        assert_eq!(resolve_device(DeviceChoice::Auto).unwrap(), Device::Cpu);
    }

    /// A NaN batch loss stops the run at the end of its epoch with an error naming the epoch and
    /// the kept checkpoint, which still holds the last good epoch.
    #[test]
    fn divergence_stops_with_an_error_and_keeps_the_last_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let ctx = FitContext { checkpoint_dir: Some(d.path().to_path_buf()), device: DeviceChoice::Cpu, ..FitContext::new(8, 0) };
        let mut tr = Trainer::new("sdch", &ctx, 5, &RunControl::default()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _p = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let opt = Optimizer::new(
            OptimizerConfig { kind: OptimizerKind::Adam, weight_decay: 0.0 },
            groups_from_var_store(&vs, |_| Some(0), &[("all", 0.1)]).unwrap(),
        );
        let config = serde_json::json!({});
        tr.next_epoch().unwrap();
        tr.batch_done(1.0);
        tr.end_epoch(1.0, "").unwrap();
        tr.checkpoint(&vs, &opt, &config, &[], serde_json::Value::Null).unwrap();
        tr.next_epoch().unwrap();
        tr.batch_done(0.5);
        tr.batch_done(f64::NAN);
        tr.batch_done(0.5);
        let e = tr.end_epoch(tr.mean_batch_loss(), "").unwrap_err().to_string();
        assert!(e.contains("sdch diverged") && e.contains("NaN at batch 2 of epoch 2"), "{e}");
        assert!(e.contains("the last good checkpoint (epoch 1) is kept in") && e.contains("cmh tune --method sdch"), "{e}");
        assert_eq!(tr.epoch, 1);
        assert_eq!(Checkpoint::load(&d.path().join(CHECKPOINT_FILE)).unwrap().meta.epoch, 1);
        // An infinite epoch loss with finite batches (a method's own epoch objective) stops too.
        tr.next_epoch().unwrap();
        let e = tr.end_epoch(f64::INFINITY, "").unwrap_err().to_string();
        assert!(e.contains("became inf at epoch 2"), "{e}");
    }

    #[test]
    fn batches_are_a_seeded_partition() {
        let ctx = FitContext::new(8, 5);
        // One trainer at a time (each holds the generator lock): b's first epoch, then a's.
        let bb = Trainer::new("t", &ctx, 2, &RunControl::default()).unwrap().batches(10, 4);
        let mut a = Trainer::new("t", &ctx, 2, &RunControl::default()).unwrap();
        let ba = a.batches(10, 4);
        assert_eq!(ba, bb);
        assert_eq!(ba.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = ba.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(a.batches(10, 4), ba, "a new permutation each epoch");
        // A trailing batch of one item is merged (batch statistics need two items).
        assert_eq!(a.batches(9, 4).iter().map(|x| x.len()).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn json_diff_names_the_keys() {
        let a = serde_json::json!({"arch": {"bits": 16, "hidden": [8]}, "lr": 0.1});
        let b = serde_json::json!({"arch": {"bits": 32, "hidden": [8]}, "lr": 0.1, "x": 1});
        assert_eq!(
            json_diff(&a, &b, ""),
            vec!["arch.bits: checkpoint 16 vs now 32".to_string(), "x: checkpoint (absent) vs now 1".to_string()]
        );
    }
}
