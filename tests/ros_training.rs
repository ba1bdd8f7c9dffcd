//! The training node over ROS 2: an rclpy peer receives its progress messages, a checkpoint appears, and SIGTERM
//! ends it cleanly with a checkpoint. Needs the environment of `env.sh` (rclpy in `VLM3D_PYTHON`).
#![cfg(feature = "ros")]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{scratch, small_bag, tiny_recipe};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Kills a child process if the test fails first.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listen(topic: &str) -> Kid {
    let script = common::repo().join("tests/peers/peer.py");
    let py = std::env::var("VLM3D_PYTHON").unwrap_or_else(|_| "python3".into());
    Kid(Command::new(py)
        .arg(script)
        .args([
            "listen",
            "std_msgs/msg/String",
            topic,
            "--timeout",
            &TIMEOUT.as_secs().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the rclpy peer (is env.sh sourced?)"))
}

fn node(name: &str, yaml: &Path, out: &Path, max_steps: usize) -> Kid {
    Kid(Command::new(env!("CARGO_BIN_EXE_training_node"))
        .args(["--ros-args", "-r", &format!("__node:={name}"), "-p"])
        .arg(format!("config_file:={}", yaml.display()))
        .arg("-p")
        .arg(format!("out_dir:={}", out.display()))
        .arg("-p")
        .arg(format!("max_steps:={max_steps}"))
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start training_node"))
}

/// Waits for the peer's one JSON line (the first progress message) and returns it.
fn first_message(peer: &mut Kid) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = peer.0.try_wait().unwrap() {
            let mut out = String::new();
            peer.0
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert!(st.success(), "peer got nothing: {st}");
            let msg: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            return serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no progress message within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.join("state.json").is_file());
    v.sort();
    v
}

#[test]
fn progress_reaches_an_rclpy_peer_and_sigterm_stops_with_a_checkpoint() {
    let dir = scratch("ros-training");
    let bag = small_bag(&dir);
    let yaml = dir.join("train.yaml");
    // Many short steps: the node keeps publishing while discovery matches the peer.
    std::fs::write(
        &yaml,
        serde_yaml::to_string(&tiny_recipe(&bag, 400, 0)).unwrap(),
    )
    .unwrap();
    let name = format!("vlm3d_train_{}", std::process::id());
    let out = dir.join("out");
    let mut peer = listen(&format!("/{name}/output/progress"));
    let mut n = node(&name, &yaml, &out, 0);
    let m = first_message(&mut peer);
    assert!(
        m["step"].as_u64().unwrap() >= 1 && m["loss"].as_f64().unwrap().is_finite(),
        "{m}"
    );
    assert_eq!(m["stage"].as_u64(), Some(1));
    // SIGTERM: the node writes a checkpoint and exits 0 well before step 400.
    let st = Command::new("kill")
        .args(["-TERM", &n.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = n.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}");
    let ck = checkpoints(&out);
    let last = ck.last().expect("a checkpoint after SIGTERM");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("state.json")).unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!((1..400).contains(&step), "stopped at step {step}");
    assert!(
        out.join("head.safetensors").is_file() && out.join("adapter/adapter_config.json").is_file()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_parameter_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_training_node"))
        .args([
            "--ros-args",
            "-r",
            &format!("__node:=vlm3d_train_bad_{}", std::process::id()),
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config_file"), "{err}");
}
