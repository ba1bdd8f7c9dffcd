//! Training, ROS-free: the paper's two-stage LoRA recipe ([`config`]), Hungarian matching of box queries to the
//! ground truth ([`matching`]), the losses ([`loss`]: embedding MSE, then MSE + 1 − IoU3D with the exact gradient,
//! plus confidence), crash-safe checkpoints ([`checkpoint`]) and the loop ([`trainer`]).
pub mod checkpoint;
pub mod config;
pub mod loss;
pub mod matching;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{TrainSummary, Trainer};
