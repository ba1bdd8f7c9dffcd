//! Training, ROS-free: the paper's two-stage LoRA recipe ([`config`]), Hungarian matching of box queries to the
//! ground truth ([`matching`]), the losses ([`loss`]: embedding MSE, then MSE + 1 − IoU3D with the exact gradient,
//! plus confidence), AdamW ([`optim`]), crash-safe checkpoints ([`checkpoint`]) and the loop ([`trainer`]); the open-set hold-out
//! and the prompt variety of training ([`prompts`]; the image augmentations are [`crate::data::augment`]).
pub mod checkpoint;
pub mod config;
pub mod loss;
pub mod matching;
pub mod optim;
pub mod prompts;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{TrainSummary, Trainer};
