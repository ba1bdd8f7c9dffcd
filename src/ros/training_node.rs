//! The training node: [`crate::train::Trainer`] with its parameters from ROS (`config/training_node.param.yaml`),
//! progress on `~/output/progress` (`std_msgs/String`, one JSON object per optimizer step, the trainer's metrics
//! line) and `/diagnostics` (`diagnostic_msgs/DiagnosticArray`); SIGINT / SIGTERM write a checkpoint and end the
//! node cleanly (exit 0).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::std_msgs::msg::{Header, String as StringMsg};
use r2r::{Context, Node, QosProfile};

use super::params::Params;

use crate::train::trainer::StepMetrics;
use crate::train::{TrainConfig, TrainSummary, Trainer};
use crate::{Error, Result};

/// The node's parameters (see `config/training_node.param.yaml` and its schema).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingNodeParams {
    /// The training recipe (YAML, `config/train.yaml` shape).
    pub config_file: PathBuf,
    /// Output folder (adapters, head, metrics, checkpoints).
    pub out_dir: PathBuf,
    /// Continue from the newest complete checkpoint.
    pub resume: bool,
    /// Stop after this many optimizer steps (0: train to the end of stage 2).
    pub max_steps: usize,
}

impl TrainingNodeParams {
    /// Reads the parameters the node was started with; a missing required one or a wrong type is an error that
    /// names it.
    pub fn from_node(node: &Node) -> Result<Self> {
        Self::from_params(&Params::of(node)?)
    }

    /// The parameters from a snapshot (checked as the schema states).
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(Self {
            config_file: PathBuf::from(p.non_empty("config_file", "")?),
            out_dir: PathBuf::from(p.non_empty("out_dir", "")?),
            resume: p.bool("resume", false)?,
            max_steps: p.integer("max_steps", 0, 0, i64::MAX)? as usize,
        })
    }
}

fn diagnostics(
    node_name: &str,
    m: &StepMetrics,
    stamp: r2r::builtin_interfaces::msg::Time,
) -> DiagnosticArray {
    let kv = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: v,
    };
    DiagnosticArray {
        header: Header {
            stamp,
            frame_id: String::new(),
        },
        status: vec![DiagnosticStatus {
            level: DiagnosticStatus::OK as u8,
            name: format!("{node_name}: training"),
            message: format!("stage {} step {}", m.stage, m.step),
            hardware_id: String::new(),
            values: vec![
                kv("step", m.step.to_string()),
                kv("epoch", m.epoch.to_string()),
                kv("stage", m.stage.to_string()),
                kv("lr", format!("{:e}", m.lr)),
                kv("loss", format!("{:.6}", m.loss)),
                kv("mse", format!("{:.6}", m.mse)),
                kv("iou_loss", format!("{:.6}", m.iou_loss)),
                kv("confidence", format!("{:.6}", m.confidence)),
                kv("examples_per_s", format!("{:.2}", m.examples_per_s)),
            ],
        }],
    }
}

/// Runs the node to the end of training or a stop signal.
pub fn run_training_node() -> Result<TrainSummary> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::Ros(format!("cannot handle signal {sig}: {e}")))?;
    }
    let ctx = Context::create()?;
    let mut node = Node::create(ctx, "training_node", "")?;
    let params = TrainingNodeParams::from_node(&node)?;
    let name = node.name()?;
    let progress =
        node.create_publisher::<StringMsg>("~/output/progress", QosProfile::default())?;
    let diag = node.create_publisher::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    let cfg = TrainConfig::load(&params.config_file)?;
    let mut trainer = Trainer::new(cfg, &params.out_dir, params.resume)?;
    trainer.progress = false;
    r2r::log_info!(
        &name,
        "training on {} examples into {}",
        trainer.items().len(),
        params.out_dir.display()
    );
    let mut clock = r2r::Clock::create(r2r::ClockType::RosTime)?;
    let mut on_step = |m: &StepMetrics| -> bool {
        if let Ok(line) = serde_json::to_string(m) {
            let _ = progress.publish(&StringMsg { data: line });
        }
        let stamp = clock
            .get_now()
            .map(|d| r2r::Clock::to_builtin_time(&d))
            .unwrap_or_default();
        let _ = diag.publish(&diagnostics(&name, m, stamp));
        node.spin_once(Duration::ZERO);
        !stop.load(Ordering::Relaxed)
    };
    let max = (params.max_steps > 0).then_some(params.max_steps);
    let summary = trainer.run_with(max, &mut on_step)?;
    if stop.load(Ordering::Relaxed) {
        r2r::log_info!(
            &name,
            "stopped by signal at step {}; checkpoint written",
            summary.steps
        );
    }
    Ok(summary)
}
