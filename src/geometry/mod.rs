//! Pure 3D geometry: boxes, the [`Frame`] a box is expressed in, rigid transforms, cameras, BEV intersection, exact
//! 3D IoU (with its gradient) and BEV NMS.
//!
//! Conventions are nuScenes': boxes are [x, y, z, l, w, h, yaw] with (x, y, z) the box centre, l along the
//! heading, w across it, h vertical, yaw about +z in radians; quaternions in tables are (w, x, y, z).
mod box3d;
mod camera;
mod frame;
mod iou;
mod nms;
mod transform;

pub use box3d::{Box3D, OrientedBox3D};
pub use camera::{PinholeCamera, ViewCamera, VisibilityRule};
pub use frame::Frame;
pub use iou::{bev_intersection_area, bev_iou, iou_3d, iou_3d_with_grad, Iou3dGrad};
pub use nms::bev_nms;
pub use transform::{isometry_from_nuscenes, quaternion_from_wxyz};
