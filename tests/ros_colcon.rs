//! The README's colcon path ("Building in a colcon workspace"), step by step as a user runs it:
//!
//! * colcon from the package registry, pinned, in a venv under `.venv-peers/colcon` (on `PATH` after the ROS 2
//!   environment, as a system install's `/usr/bin/colcon` would be);
//! * the repository linked into a temporary workspace's `src/`, and `colcon build --packages-select vlm3d` with
//!   the ROS 2 prefix sourced (`env.sh`, in place of `/opt/ros/jazzy/setup.bash`);
//! * with `install/setup.bash` sourced: the installed `perception_node` with the installed parameter file, which
//!   finds the installed demo model by itself, and an rclpy peer (importing the workspace's `vlm3d.msg`) that
//!   publishes a synthetic bag's cameras and gets boxes.
//!
//! cargo reuses this suite's target directory (`-DVLM3D_CARGO_TARGET_DIR`, profile `dev`): in the environment of
//! `env.sh` the colcon build's cargo finds everything built (`scripts/cargo_install.cmake` keeps r2r's keys).
#![cfg(feature = "ros")]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vlm3d::data::bag::msgs::{CompressedImage, RosMessage};
use vlm3d::data::bag::rosbag::BagReader;
use vlm3d::perception::Rig;

/// colcon and the extensions the README's commands need (`--packages-select`, ament_cmake packages,
/// `install/setup.bash`), with every package the install pulls in, at the versions this test was run with.
const COLCON_PINS: &[&str] = &[
    "colcon-core==0.21.3",
    "colcon-cmake==0.2.30",
    "colcon-ros==0.5.0",
    "colcon-bash==0.5.0",
    "colcon-package-selection==0.2.10",
    "colcon-library-path==0.2.1",
    "colcon-pkg-config==0.1.0",
    "colcon-python-setup-py==0.2.9",
    "colcon-recursive-crawl==0.2.3",
    "colcon-test-result==0.3.8",
    "catkin-pkg==1.1.1",
    "coverage==7.18.0",
    "distlib==0.4.4",
    "docutils==0.23.1",
    "empy==4.2.1",
    "iniconfig==2.3.1",
    "packaging==26.4",
    "pluggy==1.7.0",
    "Pygments==2.21.0",
    "pyparsing==3.3.3",
    "pytest==9.2.0",
    "pytest-cov==7.1.0",
    "pytest-repeat==0.9.4",
    "pytest-rerunfailures==16.7",
    "python-dateutil==4.0.0",
    "tzdata==2026.6",
];

/// Kills a child process when the test ends.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a bash script; on failure panics with the tail of its output (also kept in `log`).
fn bash(script: &str, envs: &[(&str, &Path)], log: &Path) {
    let out = std::fs::File::create(log).unwrap();
    let status = Command::new("bash")
        .args(["-c", script])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .expect("run bash");
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        panic!(
            "{script}\nfailed ({status}); last lines of {}:\n{}",
            log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

/// The environment a shell has after running `script` (e.g. sourcing setup files).
fn sourced_env(script: &str) -> Vec<(OsString, OsString)> {
    let out =
        common::run(Command::new("bash").args(["-c", &format!("{script} && env -0")])).unwrap();
    out.stdout
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.into(), v.into()))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bag's `/tf_static`, each camera's first `camera_info`, and its image sets (rig order, stamp of the first
/// camera).
struct Frames {
    tf_static: Vec<u8>,
    infos: Vec<Vec<u8>>,
    sets: Vec<(Vec<Vec<u8>>, i64)>,
}

fn frames(bag: &Path) -> Frames {
    let rig = Rig::nuscenes();
    let n = rig.cameras.len();
    let (mut tf_static, mut infos) = (None, vec![None; n]);
    let mut current: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut sets = Vec::new();
    for m in BagReader::open(bag).unwrap().messages() {
        let m = m.unwrap();
        if &*m.topic == "/tf_static" && tf_static.is_none() {
            tf_static = Some(m.data.clone());
        }
        for (i, c) in rig.cameras.iter().enumerate() {
            if *m.topic == *c.camera_info_topic && infos[i].is_none() {
                infos[i] = Some(m.data.clone());
            }
            if *m.topic == *c.image_topic {
                current[i] = Some(m.data.clone());
            }
        }
        if current.iter().all(Option::is_some) {
            let images: Vec<Vec<u8>> = current.iter_mut().map(|c| c.take().unwrap()).collect();
            let stamp = CompressedImage::from_cdr(&images[0])
                .unwrap()
                .header
                .stamp
                .to_nanos() as i64;
            sets.push((images, stamp));
        }
    }
    Frames {
        tf_static: tf_static.expect("/tf_static in the bag"),
        infos: infos.into_iter().map(|i| i.expect("camera_info")).collect(),
        sets,
    }
}

/// `tests/peers/stream_peer.py`: commands in, received messages out.
struct Peer {
    _kid: Kid,
    stdin: ChildStdin,
    lines: Receiver<Value>,
    got: BTreeMap<String, Vec<Value>>,
}

impl Peer {
    fn start(env: &[(OsString, OsString)]) -> Peer {
        let py = env
            .iter()
            .find(|(k, _)| k == "VLM3D_PYTHON")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "python3".into());
        let mut child = Command::new(py)
            .arg(common::repo().join("tests/peers/stream_peer.py"))
            .args(["--timeout", "300"])
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the rclpy peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Peer {
            _kid: Kid(child),
            stdin,
            lines: rx,
            got: BTreeMap::new(),
        }
    }

    /// Files a received message; returns the other lines.
    fn take(&mut self, v: Value) -> Option<Value> {
        if let (Some(t), Some(m)) = (v.get("topic").and_then(Value::as_str), v.get("msg")) {
            self.got.entry(t.to_string()).or_default().push(m.clone());
            None
        } else {
            Some(v)
        }
    }

    /// Sends a command and waits for its acknowledgement; returns the other lines seen on the way.
    fn cmd(&mut self, c: Value) -> Vec<Value> {
        let name = c["cmd"].as_str().unwrap().to_string();
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    if let Some(v) = self.take(v) {
                        if v.get("done").and_then(Value::as_str) == Some(name.as_str()) {
                            return other;
                        }
                        other.push(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("peer did not finish {name}"),
                Err(RecvTimeoutError::Disconnected) => panic!("peer exited during {name}"),
            }
        }
    }

    /// Collects messages until `done` holds or the timeout passes; returns whether it held.
    fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&BTreeMap<String, Vec<Value>>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.got) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(v) => {
                    self.take(v);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("peer exited"),
            }
        }
        true
    }
}

fn stamp_ns(msg: &Value) -> i64 {
    msg["header"]["stamp"]["sec"].as_i64().unwrap() * 1_000_000_000
        + msg["header"]["stamp"]["nanosec"].as_i64().unwrap()
}

#[test]
fn colcon_build_installs_a_node_that_publishes_boxes() {
    let repo = common::repo();
    let env_sh = repo.join("env.sh");
    if !env_sh.is_file() {
        eprintln!("SKIPPED colcon_build_installs_a_node_that_publishes_boxes: no env.sh (run scripts/setup.sh)");
        return;
    }
    // The check reads the colcon packages' versions only: env.sh's PYTHONPATH (the ROS 2 prefix's packages, ahead
    // of the venv's own) supplies others, such as empy 3, at run time.
    let pins: String = COLCON_PINS
        .iter()
        .filter(|p| p.starts_with("colcon-"))
        .map(|p| {
            let (name, version) = p.split_once("==").unwrap();
            format!("({name:?}, {version:?}), ")
        })
        .collect();
    let check = format!(
        "import importlib.metadata as m\nfor n, v in [{pins}]:\n    assert m.version(n) == v, (n, m.version(n), v)"
    );
    let venv = common::PeerVenv {
        name: "colcon",
        packages: COLCON_PINS,
        check: &check,
        no_deps_fallback: None,
    };
    let Some(_python) = venv.python_or_skip("colcon_build_installs_a_node_that_publishes_boxes")
    else {
        return;
    };

    // The README's commands, with the suite's cargo target and profile.
    let dir = common::scratch("ros_colcon");
    let ws = dir.join("ws");
    let build_log = dir.join("colcon_build.log");
    let t = Instant::now();
    bash(
        r#"set -e
source "$REPO/env.sh"
export PATH="$PATH:$COLCON_BIN"
mkdir -p "$WS/src" && ln -s "$REPO" "$WS/src/vlm3d" && cd "$WS"
colcon build --packages-select vlm3d \
  --cmake-args -DVLM3D_CARGO_PROFILE=dev -DVLM3D_CARGO_TARGET_DIR="$REPO/target""#,
        &[
            ("REPO", &repo),
            ("WS", &ws),
            ("COLCON_BIN", &venv.dir().join("bin")),
        ],
        &build_log,
    );
    let build_s = t.elapsed().as_secs_f64();
    // With one package colcon prints its output (CMake's, cargo's) as it comes.
    let text = std::fs::read_to_string(&build_log).unwrap();
    assert!(text.contains("vlm3d: cargo build --profile dev"), "{text}");
    let compiled = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Compiling "))
        .filter(|rest| !rest.starts_with('\'')) // Python's compileall
        .count();
    let waited = if text.contains("Blocking waiting for file lock") {
        ", waited for another cargo's lock on the target directory"
    } else {
        ""
    };
    eprintln!(
        "colcon build: {build_s:.1} s, cargo compiled {compiled} crate(s){waited} (log: {})",
        build_log.display()
    );

    let prefix = ws.join("install/vlm3d");
    let share = prefix.join("share/vlm3d");
    for f in [
        "lib/vlm3d/perception_node",
        "lib/vlm3d/training_node",
        "lib/vlm3d/vlm3d",
        "share/vlm3d/config/perception_node.param.yaml",
        "share/vlm3d/launch/perception.launch.xml",
        "share/vlm3d/models/demo/head.safetensors",
        "share/vlm3d/models/demo/adapter/adapter_model.safetensors",
        "share/ament_index/resource_index/packages/vlm3d",
    ] {
        assert!(prefix.join(f).is_file(), "not installed: {f}");
    }
    for f in [
        "model.safetensors",
        "head.safetensors",
        "adapter/adapter_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(share.join("models/demo").join(f)).unwrap(),
            std::fs::read(repo.join("models/demo").join(f)).unwrap(),
            "installed demo model file {f}"
        );
    }

    // Sourced as the README says; the workspace's interfaces come first.
    let domain = (10 + std::process::id() % 90).to_string();
    let mut env = sourced_env(&format!(
        "source '{}' && source '{}'",
        env_sh.display(),
        ws.join("install/setup.bash").display()
    ));
    env.retain(|(k, _)| k != "ROS_DOMAIN_ID");
    env.push(("ROS_DOMAIN_ID".into(), domain.into()));
    let ament = env
        .iter()
        .find(|(k, _)| k == "AMENT_PREFIX_PATH")
        .map(|(_, v)| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        ament.starts_with(&prefix.display().to_string()),
        "AMENT_PREFIX_PATH={ament}"
    );
    let py = env
        .iter()
        .find(|(k, _)| k == "VLM3D_PYTHON")
        .map(|(_, v)| v.clone())
        .expect("VLM3D_PYTHON in env.sh");
    let msg_module = common::run(
        Command::new(&py)
            .args(["-c", "import vlm3d.msg; print(vlm3d.msg.__file__)"])
            .env_clear()
            .envs(env.iter().cloned()),
    )
    .unwrap();
    let msg_module = String::from_utf8_lossy(&msg_module.stdout);
    assert!(
        msg_module.starts_with(&prefix.display().to_string()),
        "rclpy imports vlm3d.msg from {msg_module}"
    );

    // The installed node with the installed parameters (model_path "": the demo model).
    let ns = format!("/vlm3d_colcon_{}", std::process::id());
    let node_log = dir.join("node.log");
    let mut node = Kid(Command::new(prefix.join("lib/vlm3d/perception_node"))
        .args(["--ros-args", "--params-file"])
        .arg(share.join("config/perception_node.param.yaml"))
        .args(["-r", &format!("__ns:={ns}")])
        .env_clear()
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&node_log).unwrap())
        .spawn()
        .expect("start the installed perception_node"));
    let topic = |private: &str| format!("{ns}/perception_node/{private}");
    let node_text = || std::fs::read_to_string(&node_log).unwrap_or_default();

    let bag = common::small_bag(&dir);
    let f = frames(&bag);
    assert!(!f.sets.is_empty());
    let mut peer = Peer::start(&env);
    let rig = Rig::nuscenes();
    for (i, c) in rig.cameras.iter().enumerate() {
        peer.cmd(json!({"cmd": "publisher", "name": format!("img{i}"),
            "topic": topic(&format!("input/{}/image", c.frame_id)),
            "type": "sensor_msgs/msg/CompressedImage", "latched": false}));
        peer.cmd(json!({"cmd": "publisher", "name": format!("info{i}"),
            "topic": topic(&format!("input/{}/camera_info", c.frame_id)),
            "type": "sensor_msgs/msg/CameraInfo", "latched": false}));
    }
    peer.cmd(
        json!({"cmd": "publisher", "name": "tf", "topic": "/tf_static",
        "type": "tf2_msgs/msg/TFMessage", "latched": true}),
    );
    let boxes = topic("output/boxes");
    peer.cmd(json!({"cmd": "subscribe", "topic": boxes, "type": "vlm3d/msg/BoundingBox3DArray"}));
    let names: Vec<String> = (0..rig.cameras.len()).map(|i| format!("img{i}")).collect();
    let r = peer.cmd(json!({"cmd": "wait_matched", "names": names, "timeout": 120.0}));
    assert_eq!(
        r.last().and_then(|v| v.get("matched")),
        Some(&json!(true)),
        "the installed node never subscribed; its log:\n{}",
        node_text()
    );
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "node exited:\n{}",
        node_text()
    );
    peer.cmd(json!({"cmd": "publish", "name": "tf", "cdr": hex(&f.tf_static)}));
    for (i, b) in f.infos.iter().enumerate() {
        peer.cmd(json!({"cmd": "publish", "name": format!("info{i}"), "cdr": hex(b)}));
    }

    // The bag's frames one at a time, each answered before the next, until one has boxes.
    let params: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(share.join("config/perception_node.param.yaml")).unwrap(),
    )
    .unwrap();
    let p = &params["/**"]["ros__parameters"];
    let prompt = p["prompts"][0].as_str().unwrap().to_string();
    let threshold = p["score_threshold"].as_f64().unwrap();
    let mut found = None;
    for (images, stamp) in &f.sets {
        let cdrs: Vec<String> = images.iter().map(|b| hex(b)).collect();
        peer.cmd(json!({"cmd": "publish_set", "names": names, "cdrs": cdrs,
            "stamps_ns": vec![*stamp; images.len()]}));
        let at = |g: &BTreeMap<String, Vec<Value>>| {
            g.get(&boxes)
                .and_then(|v| v.iter().find(|m| stamp_ns(m) == *stamp).cloned())
        };
        assert!(
            peer.until(Duration::from_secs(120), |g| at(g).is_some()),
            "no boxes message for the frame at {stamp}; node log:\n{}",
            node_text()
        );
        let msg = at(&peer.got).unwrap();
        if !msg["boxes"].as_array().unwrap().is_empty() {
            found = Some(msg);
            break;
        }
    }
    let msg = found.unwrap_or_else(|| {
        panic!(
            "none of {} frames gave a box scoring >= {threshold}; node log:\n{}",
            f.sets.len(),
            node_text()
        )
    });
    assert_eq!(msg["prompt"], prompt.as_str(), "{msg}");
    assert_eq!(msg["header"]["frame_id"], "lidar_top", "{msg}");
    for b in msg["boxes"].as_array().unwrap() {
        assert_eq!(b["label"], "car", "{b}");
        assert!(b["score"].as_f64().unwrap() >= threshold - 1e-6, "{b}");
        for k in ["x", "y", "z"] {
            assert!(
                b["center"]["position"][k].as_f64().unwrap().is_finite(),
                "{b}"
            );
            assert!(b["size"][k].as_f64().unwrap() > 0.0, "{b}");
        }
    }
    // It ran the installed copy of the demo model, found without a model_path.
    let text = node_text();
    let want = format!("model {} on cpu", share.join("models/demo").display());
    assert!(text.contains(&want), "node log lacks {want:?}:\n{text}");
    assert!(node.0.try_wait().unwrap().is_none(), "node exited:\n{text}");
    eprintln!(
        "installed perception_node: {} box(es) for {:?} (log: {})",
        msg["boxes"].as_array().unwrap().len(),
        prompt,
        node_log.display()
    );
    drop(peer);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
