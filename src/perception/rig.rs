//! The camera rig, from `config/nuscenes_rig.yaml` (embedded as the default, or a user's file of the same
//! shape): camera order, channels, topics, frames, and each sensor's nominal mounting and intrinsics.
use std::f64::consts::FRAC_PI_2;
use std::path::Path;
use std::sync::OnceLock;

use nalgebra::{Isometry3, Translation3, UnitQuaternion, Vector3};
use serde::Deserialize;

use crate::geometry::PinholeCamera;
use crate::{Error, Result};

/// The package's rig file, compiled in: the one definition of the nuScenes rig.
pub const NUSCENES_RIG_YAML: &str = include_str!("../../config/nuscenes_rig.yaml");

/// Pinhole intrinsics with square pixels, at the rig's image size.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intrinsics {
    /// Focal length in pixels (fx = fy).
    pub fx: f64,
    /// Principal point, pixels.
    pub cx: f64,
    /// Principal point, pixels.
    pub cy: f64,
}

/// One camera of the rig.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigCamera {
    /// nuScenes channel (`CAM_FRONT`).
    pub channel: String,
    /// ROS frame id of the camera's optical frame.
    pub frame_id: String,
    /// Image topic (`sensor_msgs/CompressedImage` or `sensor_msgs/Image`).
    pub image_topic: String,
    /// `sensor_msgs/CameraInfo` topic.
    pub camera_info_topic: String,
    /// Position in the ego frame (x forward, y left, z up), metres.
    pub translation: [f64; 3],
    /// Heading of the optical axis about ego +z, degrees.
    pub yaw_deg: f64,
    /// Nominal intrinsics at the rig's image size.
    pub intrinsics: Intrinsics,
}

/// The LiDAR of the rig (its frame is [`Rig::lidar_frame`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigLidar {
    /// nuScenes channel (`LIDAR_TOP`).
    pub channel: String,
    /// `sensor_msgs/PointCloud2` topic.
    pub topic: String,
    /// Position in the ego frame, metres.
    pub translation: [f64; 3],
    /// Heading of the LiDAR's forward (+y) axis about ego +z, degrees.
    pub yaw_deg: f64,
}

/// A camera rig: the cameras in the order their views are fed to the model, and the LiDAR whose frame the
/// detections are published in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    /// Rig name.
    pub name: String,
    /// Frame id of the LiDAR (the output frame).
    pub lidar_frame: String,
    /// Frame id of the vehicle.
    pub base_frame: String,
    /// Frame id of the world.
    pub map_frame: String,
    /// Image width the intrinsics refer to.
    pub image_width: u32,
    /// Image height the intrinsics refer to.
    pub image_height: u32,
    /// The cameras, in model input order.
    pub cameras: Vec<RigCamera>,
    /// The LiDAR.
    pub lidar: RigLidar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RigFile {
    rig: Rig,
}

/// One sensor's nominal mounting, cameras and LiDAR alike (what the synthetic generator places).
#[derive(Debug, Clone, PartialEq)]
pub struct RigSensor {
    /// nuScenes channel.
    pub channel: String,
    /// Position in the ego frame, metres.
    pub translation: [f64; 3],
    /// Heading of the sensor's forward axis about ego +z, radians.
    pub yaw: f64,
    /// Intrinsics for cameras, `None` for the LiDAR.
    pub intrinsics: Option<Intrinsics>,
}

impl Rig {
    /// The nuScenes rig of `config/nuscenes_rig.yaml` (compiled in).
    pub fn nuscenes() -> &'static Rig {
        static RIG: OnceLock<Rig> = OnceLock::new();
        RIG.get_or_init(|| {
            Rig::from_yaml(NUSCENES_RIG_YAML, Path::new("config/nuscenes_rig.yaml"))
                .expect("the compiled-in rig file is valid (tested)")
        })
    }

    /// Reads a rig file (the shape of `config/nuscenes_rig.yaml`).
    pub fn load(path: &Path) -> Result<Rig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Rig::from_yaml(&text, path)
    }

    /// Parses and validates rig YAML; `path` names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Rig> {
        let file: RigFile = serde_yaml::from_str(text)
            .map_err(|e| Error::format(path, Some("rig".into()), e.to_string()))?;
        let rig = file.rig;
        rig.validate()
            .map_err(|why| Error::format(path, Some("rig".into()), why))?;
        Ok(rig)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.cameras.is_empty() {
            return Err("no cameras".into());
        }
        if self.image_width == 0 || self.image_height == 0 {
            return Err(format!(
                "image size {}×{}",
                self.image_width, self.image_height
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.cameras {
            if !seen.insert(c.channel.as_str()) {
                return Err(format!("camera {} listed twice", c.channel));
            }
            let k = c.intrinsics;
            let finite = c
                .translation
                .iter()
                .chain([&c.yaw_deg, &k.fx, &k.cx, &k.cy]);
            if finite.into_iter().any(|v| !v.is_finite()) || k.fx <= 0.0 {
                return Err(format!("camera {}: non-finite pose or fx ≤ 0", c.channel));
            }
        }
        if self
            .lidar
            .translation
            .iter()
            .chain([&self.lidar.yaw_deg])
            .any(|v| !v.is_finite())
        {
            return Err("lidar: non-finite pose".into());
        }
        Ok(())
    }

    /// The camera channels in model input order.
    pub fn camera_channels(&self) -> Vec<&str> {
        self.cameras.iter().map(|c| c.channel.as_str()).collect()
    }

    /// Position of a channel in the camera order (`None` for channels not in the rig).
    pub fn camera_index(&self, channel: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.channel == channel)
    }

    /// The camera whose optical frame is `frame_id`.
    pub fn camera_by_frame(&self, frame_id: &str) -> Option<&RigCamera> {
        self.cameras.iter().find(|c| c.frame_id == frame_id)
    }

    /// Every sensor, cameras in order then the LiDAR.
    pub fn sensors(&self) -> Vec<RigSensor> {
        let mut v: Vec<RigSensor> = self
            .cameras
            .iter()
            .map(|c| RigSensor {
                channel: c.channel.clone(),
                translation: c.translation,
                yaw: c.yaw_deg.to_radians(),
                intrinsics: Some(c.intrinsics),
            })
            .collect();
        v.push(RigSensor {
            channel: self.lidar.channel.clone(),
            translation: self.lidar.translation,
            yaw: self.lidar.yaw_deg.to_radians(),
            intrinsics: None,
        });
        v
    }

    /// Camera `i`'s optical frame → ego (nominal mounting).
    pub fn camera_to_ego(&self, i: usize) -> Isometry3<f64> {
        let c = &self.cameras[i];
        let [x, y, z] = c.translation;
        Isometry3::from_parts(
            Translation3::new(x, y, z),
            camera_rotation(c.yaw_deg.to_radians(), 0.0, 0.0),
        )
    }

    /// LiDAR frame → ego (nominal mounting).
    pub fn lidar_to_ego(&self) -> Isometry3<f64> {
        let [x, y, z] = self.lidar.translation;
        Isometry3::from_parts(
            Translation3::new(x, y, z),
            lidar_rotation(self.lidar.yaw_deg.to_radians()),
        )
    }

    /// Camera `i`'s optical frame → LiDAR frame, from the nominal mounting (the fallback when no `/tf_static`).
    pub fn camera_to_lidar(&self, i: usize) -> Isometry3<f64> {
        self.lidar_to_ego().inverse() * self.camera_to_ego(i)
    }

    /// Camera `i`'s nominal pinhole model, scaled to a `width`×`height` image.
    pub fn pinhole(&self, i: usize, width: u32, height: u32) -> Result<PinholeCamera> {
        let k = self.cameras[i].intrinsics;
        let (sx, sy) = (
            f64::from(width) / f64::from(self.image_width),
            f64::from(height) / f64::from(self.image_height),
        );
        PinholeCamera::from_rows(
            [
                [k.fx * sx, 0.0, k.cx * sx],
                [0.0, k.fx * sy, k.cy * sy],
                [0.0, 0.0, 1.0],
            ],
            width,
            height,
        )
    }
}

/// The sensor → ego rotation of a camera looking along `yaw` (camera axes x right, y down, z forward), tilted
/// by small `pitch` and `roll` (radians).
pub fn camera_rotation(yaw: f64, pitch: f64, roll: f64) -> UnitQuaternion<f64> {
    // Camera axes in the ego frame for yaw 0: x_c = -y_e, y_c = -z_e, z_c = +x_e.
    let base = UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(0.5, -0.5, 0.5, -0.5));
    UnitQuaternion::from_axis_angle(&Vector3::z_axis(), yaw)
        * UnitQuaternion::from_axis_angle(&Vector3::y_axis(), pitch)
        * UnitQuaternion::from_axis_angle(&Vector3::x_axis(), roll)
        * base
}

/// The sensor → ego rotation of a LiDAR whose forward (+y) axis looks along `yaw_forward` about ego +z
/// (nuScenes: 0, i.e. the LiDAR frame is the ego frame turned by -90°: x right, y forward, z up).
pub fn lidar_rotation(yaw_forward: f64) -> UnitQuaternion<f64> {
    UnitQuaternion::from_axis_angle(&Vector3::z_axis(), yaw_forward - FRAC_PI_2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::Point3;

    #[test]
    fn compiled_in_rig_is_valid_and_points_its_cameras_where_it_says() {
        let rig = Rig::nuscenes();
        assert_eq!(rig.cameras.len(), 6);
        for (i, c) in rig.cameras.iter().enumerate() {
            // The optical axis (+z) in the ego frame is the documented heading, level.
            let axis = rig.camera_to_ego(i) * Vector3::z();
            let yaw = c.yaw_deg.to_radians();
            assert!(
                (axis - Vector3::new(yaw.cos(), yaw.sin(), 0.0)).norm() < 1e-12,
                "{}",
                c.channel
            );
            // Image down (+y) is ego down.
            assert!((rig.camera_to_ego(i) * Vector3::y() + Vector3::z()).norm() < 1e-12);
            // The camera's origin seen from the LiDAR is the difference of the mounts, in LiDAR axes
            // (x right = −y_ego, y forward = x_ego for yaw 0).
            let p = rig.camera_to_lidar(i) * Point3::origin();
            let d: Vector3<f64> =
                Vector3::from(c.translation) - Vector3::from(rig.lidar.translation);
            assert!((p.coords - Vector3::new(-d.y, d.x, d.z)).norm() < 1e-12);
        }
    }

    #[test]
    fn bad_rig_files_are_refused_with_their_name() {
        let bad = NUSCENES_RIG_YAML.replace("fx: 1266.4", "fx: -1.0");
        let e = Rig::from_yaml(&bad, Path::new("my_rig.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("my_rig.yaml") && e.contains("CAM_FRONT"), "{e}");
        let unknown =
            NUSCENES_RIG_YAML.replace("  map_frame: map", "  map_frame: map\n  colour: red");
        let e = Rig::from_yaml(&unknown, Path::new("r.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let twice = NUSCENES_RIG_YAML.replace("channel: CAM_BACK_LEFT", "channel: CAM_BACK");
        assert!(Rig::from_yaml(&twice, Path::new("r.yaml")).is_err());
    }

    #[test]
    fn pinhole_scales_with_the_image() {
        let rig = Rig::nuscenes();
        let half = rig.pinhole(0, 800, 450).unwrap();
        let full = rig.pinhole(0, 1600, 900).unwrap();
        let p = Point3::new(1.0, -0.5, 10.0);
        let (a, b) = (half.project(&p).unwrap(), full.project(&p).unwrap());
        assert!((a.x * 2.0 - b.x).abs() < 1e-9 && (a.y * 2.0 - b.y).abs() < 1e-9);
    }
}
