//! Pinhole camera model: projection of camera-frame points and the box visibility rule.
use nalgebra::{Isometry3, Matrix3, Point2, Point3, Vector2};

use crate::{Error, Result};

/// Which boxes count as seen by a camera. Both rules follow the nuScenes devkit's `box_in_image`: a corner is
/// *visible* when its depth exceeds 1 m and its projection falls strictly inside the image, and every corner
/// must be at least 0.1 m in front of the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisibilityRule {
    /// All eight corners visible: the paper's rule ("projected corners with positive depth inside the image").
    #[default]
    AllCorners,
    /// At least one corner visible (the devkit's `BoxVisibility.ANY`, its default).
    AnyCorner,
}

/// A pinhole camera: 3×3 intrinsic matrix K (no distortion, as in nuScenes' rectified images) and image size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PinholeCamera {
    k: Matrix3<f64>,
    /// K⁻¹, computed once: [`PinholeCamera::ray`] runs per image token.
    k_inv: Matrix3<f64>,
    width: u32,
    height: u32,
}

impl PinholeCamera {
    /// Builds a camera; K must be finite with positive focal lengths and the image non-empty.
    pub fn new(k: Matrix3<f64>, width: u32, height: u32) -> Result<Self> {
        if k.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("camera matrix", "non-finite entry"));
        }
        if k[(0, 0)] <= 0.0 || k[(1, 1)] <= 0.0 {
            return Err(Error::invalid(
                "camera matrix",
                format!(
                    "focal lengths must be positive, got fx={} fy={}",
                    k[(0, 0)],
                    k[(1, 1)]
                ),
            ));
        }
        if width == 0 || height == 0 {
            return Err(Error::invalid(
                "camera image size",
                format!("{width}x{height} is empty"),
            ));
        }
        let k_inv = k
            .try_inverse()
            .ok_or_else(|| Error::invalid("camera matrix", "singular (no inverse)"))?;
        Ok(Self {
            k,
            k_inv,
            width,
            height,
        })
    }

    /// Builds a camera from nuScenes' `camera_intrinsic` (row-major 3×3).
    pub fn from_rows(rows: [[f64; 3]; 3], width: u32, height: u32) -> Result<Self> {
        Self::new(Matrix3::from_fn(|r, c| rows[r][c]), width, height)
    }

    /// Intrinsic matrix K.
    pub fn k(&self) -> &Matrix3<f64> {
        &self.k
    }

    /// Image width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Image height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Projects a camera-frame point (x right, y down, z forward) to pixels; `None` when it is not in front
    /// of the camera (z ≤ 0), where the pinhole projection is meaningless.
    pub fn project(&self, p: &Point3<f64>) -> Option<Point2<f64>> {
        if p.z <= 0.0 {
            return None;
        }
        let q = self.k * p.coords;
        Some(Point2::new(q.x / q.z, q.y / q.z))
    }

    /// The viewing ray through a pixel as (x/z, y/z) in the camera frame: K⁻¹ applied to (u, v, 1). Points
    /// `z · (x/z, y/z, 1)` project back onto the pixel for every depth z > 0.
    pub fn ray(&self, px: &Point2<f64>) -> Vector2<f64> {
        let r = self.k_inv * nalgebra::Vector3::new(px.x, px.y, 1.0);
        Vector2::new(r.x / r.z, r.y / r.z)
    }

    /// Whether a pixel lies strictly inside the image.
    pub fn in_image(&self, px: &Point2<f64>) -> bool {
        px.x > 0.0 && px.x < self.width as f64 && px.y > 0.0 && px.y < self.height as f64
    }

    /// A nominal camera for an image of this size when no calibration is at hand: square pixels, principal point
    /// at the centre, fx = 0.79 × width (nuScenes' front cameras: fx ≈ 1266 at 1600 pixels, 64° across).
    pub fn nominal(width: u32, height: u32) -> Result<Self> {
        let f = 0.79 * f64::from(width);
        Self::new(
            Matrix3::new(
                f,
                0.0,
                f64::from(width) / 2.0,
                0.0,
                f,
                f64::from(height) / 2.0,
                0.0,
                0.0,
                1.0,
            ),
            width,
            height,
        )
    }

    /// Whether a box with these camera-frame corners is seen by the camera under `rule`.
    pub fn sees_corners(&self, corners: &[Point3<f64>], rule: VisibilityRule) -> bool {
        if corners.is_empty() || corners.iter().any(|c| c.z <= 0.1) {
            return false;
        }
        let visible =
            |c: &Point3<f64>| c.z > 1.0 && self.project(c).is_some_and(|px| self.in_image(&px));
        match rule {
            VisibilityRule::AllCorners => corners.iter().all(visible),
            VisibilityRule::AnyCorner => corners.iter().any(visible),
        }
    }
}

/// A camera of the rig as the detector needs it: its intrinsics (where each image position looks) and where it
/// sits (camera optical frame → LiDAR frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewCamera {
    /// Intrinsics at the size of the images the detector is given (or any size with the same field of view).
    pub camera: PinholeCamera,
    /// Camera optical frame → LiDAR frame.
    pub camera_to_lidar: Isometry3<f64>,
}

impl ViewCamera {
    /// A [`PinholeCamera::nominal`] camera at the LiDAR's origin looking forward, level (optical x → LiDAR −y,
    /// y → −z, z → +x): for images without calibration (benchmarks, `vlm3d detect` on plain files), whose boxes
    /// stay in the camera frame. The mount matters even there: the head's yaw is a LiDAR-frame heading.
    pub fn nominal(width: u32, height: u32) -> Result<Self> {
        let forward = nalgebra::Rotation3::from_matrix_unchecked(Matrix3::new(
            0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0,
        ));
        Ok(Self {
            camera: PinholeCamera::nominal(width, height)?,
            camera_to_lidar: Isometry3::from_parts(
                nalgebra::Translation3::identity(),
                nalgebra::UnitQuaternion::from_rotation_matrix(&forward),
            ),
        })
    }
}
