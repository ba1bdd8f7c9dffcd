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
use r2r::{Context, Node, ParameterValue, QosProfile};

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
        let params = node
            .params
            .lock()
            .map_err(|_| Error::Ros("parameter table poisoned".into()))?;
        let string = |k: &str| -> Result<String> {
            match params.get(k).map(|p| &p.value) {
                Some(ParameterValue::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(ParameterValue::String(_)) | None | Some(ParameterValue::NotSet) => {
                    Err(Error::invalid(
                        format!("parameter {k}"),
                        "required (a path); set it in the params file or with -p",
                    ))
                }
                Some(other) => Err(Error::invalid(
                    format!("parameter {k}"),
                    format!("{other:?} is not a string"),
                )),
            }
        };
        let resume = match params.get("resume").map(|p| &p.value) {
            None | Some(ParameterValue::NotSet) => false,
            Some(ParameterValue::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::invalid(
                    "parameter resume",
                    format!("{other:?} is not a bool"),
                ))
            }
        };
        let max_steps = match params.get("max_steps").map(|p| &p.value) {
            None | Some(ParameterValue::NotSet) => 0,
            Some(ParameterValue::Integer(n)) if *n >= 0 => *n as usize,
            Some(other) => {
                return Err(Error::invalid(
                    "parameter max_steps",
                    format!("{other:?} is not an integer ≥ 0"),
                ))
            }
        };
        Ok(Self {
            config_file: PathBuf::from(string("config_file")?),
            out_dir: PathBuf::from(string("out_dir")?),
            resume,
            max_steps,
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
