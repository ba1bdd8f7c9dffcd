/// The frame a box is expressed in: what the dataset's targets, the head's outputs and the nodes' inputs
/// agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Frame {
    /// The camera's optical frame: x right, y down, z forward; yaw is the heading's angle about the camera's
    /// up axis (−y). The default (the design's choice): it does not depend on where a camera is mounted, and
    /// the rig's extrinsics take the boxes to the LiDAR frame.
    #[default]
    Camera,
    /// The LiDAR frame (the paper's setting): boxes [x, y, z, l, w, h, yaw] with yaw about +z.
    Lidar,
}
