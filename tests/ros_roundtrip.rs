//! Round trips between r2r (this crate's side) and rclpy (the real ROS 2 Python client, run as a peer
//! process from `tests/peers/peer.py`), over Fast DDS on loopback.
//!
//! Needs the environment of `env.sh` (scripts/setup.sh): the interface packages, `VLM3D_PYTHON` with rclpy.
//! Each direction compares every field: r2r → rclpy by comparing the JSON the peer prints with the serde
//! view of the sent message, rclpy → r2r by comparing the received message with the one the peer was
//! asked to publish.
#![cfg(feature = "ros")]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use r2r::builtin_interfaces::msg::Time;
use r2r::geometry_msgs::msg::{Point, Pose, Quaternion, Transform, TransformStamped, Vector3};
use r2r::sensor_msgs::msg::Image;
use r2r::std_msgs::msg::Header;
use r2r::tf2_msgs::msg::TFMessage;
use r2r::vlm3d::msg::{BoundingBox3D, BoundingBox3DArray};
use r2r::{Context, Node, QosProfile, WrappedTypesupport};
use serde::Serialize;
use vlm3d::ros::convert::to_detection3d_array;
use vlm3d::ros::wait::{wait_for_publishers, wait_for_subscribers};

const TIMEOUT: Duration = Duration::from_secs(40);

/// Kills the peer if the test fails before it exits.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("VLM3D_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn peer(args: &[&str]) -> Peer {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/peer.py");
    let child = Command::new(python())
        .arg(script)
        .args(args)
        .args(["--timeout", &TIMEOUT.as_secs().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the rclpy peer (is env.sh sourced? VLM3D_PYTHON)");
    Peer(child)
}

/// A topic of its own for each test, so that parallel tests and parallel runs do not cross.
fn topic(name: &str) -> String {
    format!("/vlm3d_test_{}/{name}", std::process::id())
}

fn node(name: &str) -> Node {
    let ctx = Context::create().expect("rcl context");
    Node::create(ctx, name, "").expect("node")
}

/// Publishes `msg` from r2r until an rclpy listener has printed the first message it got; returns that
/// message as JSON.
fn send_to_rclpy<T>(ros_type: &str, name: &str, msg: &T) -> serde_json::Value
where
    T: WrappedTypesupport + 'static,
{
    let topic = topic(name);
    let mut node = node(&format!("vlm3d_test_send_{name}"));
    let publisher = node
        .create_publisher::<T>(&topic, QosProfile::default())
        .unwrap();
    let mut listener = peer(&["listen", ros_type, &topic]);
    wait_for_subscribers(&mut node, &publisher, 1, TIMEOUT).expect("rclpy listener matched");
    // Keep publishing until the listener exits: matching on our side does not mean it matched us yet.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        publisher.publish(msg).unwrap();
        node.spin_once(Duration::from_millis(100));
        if let Some(status) = listener.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rclpy listener did not report a message on {topic}"
        );
    };
    let mut out = String::new();
    listener
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "rclpy listener failed ({status}): {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("listener output {out:?}: {e}"))
}

/// Has an rclpy talker publish `msg` (handed over as JSON) and returns the first message r2r receives.
fn receive_from_rclpy<T>(ros_type: &str, name: &str, msg: &T) -> T
where
    T: WrappedTypesupport + Serialize + 'static,
{
    let topic = topic(name);
    let mut node = node(&format!("vlm3d_test_receive_{name}"));
    let mut stream = node.subscribe::<T>(&topic, QosProfile::default()).unwrap();
    let json = serde_json::to_string(msg).unwrap();
    let mut talker = peer(&["talk", ros_type, &topic, &json]);
    wait_for_publishers(&mut node, &topic, 1, TIMEOUT).expect("rclpy talker seen");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        node.spin_once(Duration::from_millis(50));
        if let Some(Some(received)) = stream.next().now_or_never() {
            return received;
        }
        if let Some(status) = talker.0.try_wait().unwrap() {
            panic!("rclpy talker exited early ({status})");
        }
        assert!(
            Instant::now() < deadline,
            "nothing received from rclpy on {topic}"
        );
    }
}

fn header(frame: &str) -> Header {
    Header {
        stamp: Time {
            sec: 1_532_402_927,
            nanosec: 612_460_000,
        },
        frame_id: frame.to_string(),
    }
}

fn pose(x: f64, y: f64, z: f64, qz: f64, qw: f64) -> Pose {
    Pose {
        position: Point { x, y, z },
        orientation: Quaternion {
            x: 0.125,
            y: -0.0625,
            z: qz,
            w: qw,
        },
    }
}

/// Every field set to a value that is not its default; floats are exact in binary so that JSON printing
/// on either side cannot change them.
fn boxes() -> BoundingBox3DArray {
    BoundingBox3DArray {
        header: header("lidar_top"),
        prompt: "Find every pedestrian near the crosswalk — ünïcödé too".to_string(),
        boxes: vec![
            BoundingBox3D {
                center: pose(12.5, -3.25, 0.875, 0.375, 0.9375),
                size: Vector3 {
                    x: 4.5,
                    y: 1.875,
                    z: 1.625,
                },
                label: "car".to_string(),
                score: 0.8125,
                camera: "cam_front".to_string(),
                instance_id: "a1b2".to_string(),
            },
            BoundingBox3D {
                center: pose(-7.75, 20.0, -0.5, -0.5, 0.75),
                size: Vector3 {
                    x: 0.75,
                    y: 0.625,
                    z: 1.75,
                },
                label: "pedestrian".to_string(),
                score: 0.25,
                camera: "cam_back_left".to_string(),
                instance_id: String::new(),
            },
        ],
    }
}

#[test]
fn bounding_box_array_r2r_to_rclpy() {
    let sent = boxes();
    let got = send_to_rclpy("vlm3d/msg/BoundingBox3DArray", "boxes", &sent);
    assert_eq!(got, serde_json::to_value(&sent).unwrap());
}

#[test]
fn bounding_box_array_rclpy_to_r2r() {
    let sent = boxes();
    let got = receive_from_rclpy("vlm3d/msg/BoundingBox3DArray", "boxes_back", &sent);
    assert_eq!(got, sent);
}

#[test]
fn image_rclpy_to_r2r() {
    let (height, width) = (3u32, 4u32);
    let mut data: Vec<u8> = (0..height * width * 3)
        .map(|i| (i * 37 % 256) as u8)
        .collect();
    data[1] = 255;
    let sent = Image {
        header: header("cam_front"),
        height,
        width,
        encoding: "rgb8".to_string(),
        is_bigendian: 1,
        step: width * 3,
        data,
    };
    let got = receive_from_rclpy("sensor_msgs/msg/Image", "image", &sent);
    assert_eq!(got.header, sent.header);
    assert_eq!((got.height, got.width, got.step), (3, 4, 12));
    assert_eq!(got.encoding, "rgb8");
    assert_eq!(got.is_bigendian, 1);
    assert_eq!(got.data, sent.data);
    assert_eq!(got, sent);
}

#[test]
fn detection3d_array_r2r_to_rclpy() {
    let mut sent = to_detection3d_array(&boxes());
    // A covariance with distinct entries, to see that none is lost or reordered.
    for (i, c) in sent.detections[0].results[0]
        .pose
        .covariance
        .iter_mut()
        .enumerate()
    {
        *c = i as f64 * 0.5;
    }
    let got = send_to_rclpy("vision_msgs/msg/Detection3DArray", "detections", &sent);
    assert_eq!(got, serde_json::to_value(&sent).unwrap());
    assert_eq!(
        got["detections"][1]["results"][0]["hypothesis"]["class_id"],
        "pedestrian"
    );
}

#[test]
fn tf_message_rclpy_to_r2r() {
    let sent = TFMessage {
        transforms: vec![
            TransformStamped {
                header: header("base_link"),
                child_frame_id: "cam_front".to_string(),
                transform: Transform {
                    translation: Vector3 {
                        x: 1.5,
                        y: 0.0625,
                        z: 1.5,
                    },
                    rotation: Quaternion {
                        x: -0.5,
                        y: 0.5,
                        z: -0.5,
                        w: 0.5,
                    },
                },
            },
            TransformStamped {
                header: header("map"),
                child_frame_id: "base_link".to_string(),
                transform: Transform {
                    translation: Vector3 {
                        x: 411.25,
                        y: 1180.75,
                        z: 0.0,
                    },
                    rotation: Quaternion {
                        x: 0.0,
                        y: 0.0,
                        z: 0.6,
                        w: 0.8,
                    },
                },
            },
        ],
    };
    let got = receive_from_rclpy("tf2_msgs/msg/TFMessage", "tf", &sent);
    assert_eq!(got, sent);
}
