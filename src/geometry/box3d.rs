//! 3D boxes: the yaw-only [`Box3D`] the model publishes, and the fully oriented [`OrientedBox3D`] that
//! results from transforming a box into a frame whose z axis is not vertical (a camera frame).
use nalgebra::{Isometry3, Point3, UnitQuaternion, Vector3};

use super::transform::quaternion_from_wxyz;
use crate::{Error, Result};

/// Unit-cube corner signs in nuScenes' order (`Box.corners()` of the devkit): the four front corners
/// (+x, along the heading) first, then the four rear ones; within each, top-left, top-right, bottom-right,
/// bottom-left as seen from the front.
const CORNER_SIGNS: [[f64; 3]; 8] = [
    [1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0],
    [1.0, -1.0, -1.0],
    [1.0, 1.0, -1.0],
    [-1.0, 1.0, 1.0],
    [-1.0, -1.0, 1.0],
    [-1.0, -1.0, -1.0],
    [-1.0, 1.0, -1.0],
];

fn check_finite(what: &str, values: &[f64]) -> Result<()> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            what,
            format!("non-finite value in {values:?}"),
        ));
    }
    Ok(())
}

fn check_size(size: [f64; 3]) -> Result<()> {
    check_finite("box size", &size)?;
    if size.iter().any(|&s| s < 0.0) {
        return Err(Error::invalid(
            "box size",
            format!("negative dimension in (l, w, h) = {size:?}"),
        ));
    }
    Ok(())
}

/// A box [x, y, z, l, w, h, yaw]: centre (x, y, z), length l along the heading, width w, height h, and yaw
/// about +z in radians (0 = heading along +x). This is the paper's output parameterization, valid in any frame
/// whose z axis points up (LiDAR, ego, global).
///
/// Sizes may be zero (a degenerate box, whose IoU with anything is 0) but never negative; every value is finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Box3D {
    center: [f64; 3],
    size: [f64; 3],
    yaw: f64,
}

impl Box3D {
    /// Builds a box from its centre, its (l, w, h) size and its yaw; rejects NaN/∞ and negative sizes.
    pub fn new(center: [f64; 3], size_lwh: [f64; 3], yaw: f64) -> Result<Self> {
        check_finite("box centre", &center)?;
        check_size(size_lwh)?;
        check_finite("box yaw", &[yaw])?;
        Ok(Self {
            center,
            size: size_lwh,
            yaw,
        })
    }

    /// Builds a box from the paper's 7-vector [x, y, z, l, w, h, yaw].
    pub fn from_params(p: [f64; 7]) -> Result<Self> {
        Self::new([p[0], p[1], p[2]], [p[3], p[4], p[5]], p[6])
    }

    /// The paper's 7-vector [x, y, z, l, w, h, yaw].
    pub fn params(&self) -> [f64; 7] {
        let [x, y, z] = self.center;
        let [l, w, h] = self.size;
        [x, y, z, l, w, h, self.yaw]
    }

    /// Centre (x, y, z).
    pub fn center(&self) -> [f64; 3] {
        self.center
    }

    /// Size (l, w, h).
    pub fn size(&self) -> [f64; 3] {
        self.size
    }

    /// Yaw about +z, radians.
    pub fn yaw(&self) -> f64 {
        self.yaw
    }

    /// Volume l·w·h.
    pub fn volume(&self) -> f64 {
        self.size.iter().product()
    }

    /// The same box as an [`OrientedBox3D`] (rotation = yaw about +z).
    pub fn to_oriented(&self) -> OrientedBox3D {
        OrientedBox3D {
            center: Point3::from(self.center),
            size: self.size,
            rotation: UnitQuaternion::from_axis_angle(&Vector3::z_axis(), self.yaw),
        }
    }

    /// The eight corners in nuScenes' order (see the devkit's `Box.corners()`).
    pub fn corners(&self) -> [Point3<f64>; 8] {
        self.to_oriented().corners()
    }

    /// The four bird's-eye-view corners (x, y), counter-clockwise, starting front-left.
    pub fn bev_corners(&self) -> [[f64; 2]; 4] {
        let (s, c) = self.yaw.sin_cos();
        let (hl, hw) = (self.size[0] / 2.0, self.size[1] / 2.0);
        let local = [[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]];
        local.map(|[u, v]| {
            [
                self.center[0] + c * u - s * v,
                self.center[1] + s * u + c * v,
            ]
        })
    }

    /// Whether a point lies inside the box (boundary included).
    pub fn contains(&self, p: &Point3<f64>) -> bool {
        let (s, c) = self.yaw.sin_cos();
        let d = [
            p.x - self.center[0],
            p.y - self.center[1],
            p.z - self.center[2],
        ];
        let u = c * d[0] + s * d[1];
        let v = -s * d[0] + c * d[1];
        u.abs() <= self.size[0] / 2.0
            && v.abs() <= self.size[1] / 2.0
            && d[2].abs() <= self.size[2] / 2.0
    }

    /// Expresses the box in another frame: `t` maps points of this box's frame into the target frame.
    pub fn transform(&self, t: &Isometry3<f64>) -> OrientedBox3D {
        self.to_oriented().transform(t)
    }
}

/// A box with a full 3D orientation: centre, (l, w, h) size, and the rotation that takes the box's own axes
/// (x along its length, z up) into the frame it is expressed in. nuScenes' `sample_annotation` records are
/// of this kind (in the global frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrientedBox3D {
    /// Box centre.
    pub center: Point3<f64>,
    /// (l, w, h), metres.
    pub size: [f64; 3],
    /// Box axes → frame axes.
    pub rotation: UnitQuaternion<f64>,
}

impl OrientedBox3D {
    /// Builds a box from its parts, validating the size and centre.
    pub fn new(
        center: Point3<f64>,
        size_lwh: [f64; 3],
        rotation: UnitQuaternion<f64>,
    ) -> Result<Self> {
        check_finite("box centre", center.coords.as_slice())?;
        check_size(size_lwh)?;
        Ok(Self {
            center,
            size: size_lwh,
            rotation,
        })
    }

    /// Builds a box from a nuScenes annotation's fields: `translation`, `size` in nuScenes' **(w, l, h)**
    /// order, and `rotation` as (w, x, y, z).
    pub fn from_nuscenes(
        translation: [f64; 3],
        size_wlh: [f64; 3],
        rotation_wxyz: [f64; 4],
    ) -> Result<Self> {
        let rotation = quaternion_from_wxyz(rotation_wxyz)?;
        Self::new(
            Point3::from(translation),
            [size_wlh[1], size_wlh[0], size_wlh[2]],
            rotation,
        )
    }

    /// Expresses the box in another frame: `t` maps points of this box's frame into the target frame.
    pub fn transform(&self, t: &Isometry3<f64>) -> OrientedBox3D {
        OrientedBox3D {
            center: t * self.center,
            size: self.size,
            rotation: t.rotation * self.rotation,
        }
    }

    /// The eight corners in nuScenes' order (see the devkit's `Box.corners()`).
    pub fn corners(&self) -> [Point3<f64>; 8] {
        let half = Vector3::new(self.size[0], self.size[1], self.size[2]) / 2.0;
        CORNER_SIGNS.map(|s| {
            self.center + self.rotation * Vector3::new(s[0], s[1], s[2]).component_mul(&half)
        })
    }

    /// Yaw about +z of the box's heading: the angle of its x axis projected on the frame's xy plane.
    /// Meaningful in z-up frames (LiDAR, ego, global), where nuScenes boxes are level up to small tilts.
    pub fn yaw(&self) -> f64 {
        let heading = self.rotation * Vector3::x();
        heading.y.atan2(heading.x)
    }

    /// A level box in a camera's optical frame (x right, y down, z forward) from the 7-vector
    /// [x, y, z, l, w, h, yaw] whose yaw is the heading's angle about the camera's up axis (−y), measured from
    /// +x towards +z: heading = (cos yaw, 0, sin yaw), box up = −y. This is the camera-frame parameterization
    /// the dataset and the detector share.
    pub fn from_camera_params(p: [f64; 7]) -> Result<Self> {
        check_finite("camera-frame box", &p)?;
        let (s, c) = p[6].sin_cos();
        let m = nalgebra::Matrix3::new(c, -s, 0.0, 0.0, 0.0, -1.0, s, c, 0.0);
        let rotation =
            UnitQuaternion::from_rotation_matrix(&nalgebra::Rotation3::from_matrix_unchecked(m));
        Self::new(Point3::new(p[0], p[1], p[2]), [p[3], p[4], p[5]], rotation)
    }

    /// The camera-frame 7-vector of this box (see [`OrientedBox3D::from_camera_params`]).
    pub fn camera_params(&self) -> [f64; 7] {
        let heading = self.rotation * Vector3::x();
        let [l, w, h] = self.size;
        [
            self.center.x,
            self.center.y,
            self.center.z,
            l,
            w,
            h,
            heading.z.atan2(heading.x),
        ]
    }

    /// The yaw-only box of this one, dropping any roll and pitch (see [`OrientedBox3D::yaw`]).
    pub fn to_box3d(&self) -> Result<Box3D> {
        Box3D::new(self.center.coords.into(), self.size, self.yaw())
    }
}
