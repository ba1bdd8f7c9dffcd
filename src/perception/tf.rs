//! A static transform tree (what `/tf_static` carries), ROS-free: frames with one parent each, looked up between
//! any two connected frames.
use std::collections::HashMap;

use nalgebra::Isometry3;

/// Static transforms by child frame: `parent_from_child` maps points in the child frame into the parent frame
/// (a `geometry_msgs/TransformStamped` with header.frame_id = parent, child_frame_id = child).
#[derive(Debug, Clone, Default)]
pub struct TransformTree {
    edges: HashMap<String, (String, Isometry3<f64>)>,
}

impl TransformTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) the transform of `child` relative to `parent`. A frame that would become its own
    /// ancestor is refused (returns false) and the tree is left unchanged.
    pub fn set(&mut self, parent: &str, child: &str, parent_from_child: Isometry3<f64>) -> bool {
        let parent = parent.trim_start_matches('/');
        let child = child.trim_start_matches('/');
        if parent == child || self.chain(parent).iter().any(|(f, _)| f == child) {
            return false;
        }
        self.edges
            .insert(child.to_string(), (parent.to_string(), parent_from_child));
        true
    }

    /// Number of transforms held.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether the tree holds no transform.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// From `frame` up to its root: each ancestor with the transform root-ward so far (`ancestor_from_frame`),
    /// `frame` itself first with the identity.
    fn chain(&self, frame: &str) -> Vec<(String, Isometry3<f64>)> {
        let mut out = vec![(frame.to_string(), Isometry3::identity())];
        let mut acc = Isometry3::identity();
        let mut cur = frame.to_string();
        // Bounded by the number of edges: `set` keeps the graph a forest.
        while let Some((parent, t)) = self.edges.get(&cur) {
            acc = t * acc;
            out.push((parent.clone(), acc));
            cur = parent.clone();
            if out.len() > self.edges.len() + 1 {
                break;
            }
        }
        out
    }

    /// The transform mapping points in `source` into `target` (`target_from_source`), when both frames are in
    /// one tree.
    pub fn lookup(&self, target: &str, source: &str) -> Option<Isometry3<f64>> {
        let target = target.trim_start_matches('/');
        let source = source.trim_start_matches('/');
        let up_source = self.chain(source);
        let up_target = self.chain(target);
        // The lowest common ancestor: the first of source's chain that is also in target's.
        up_source.iter().find_map(|(frame, anc_from_source)| {
            up_target
                .iter()
                .find(|(f, _)| f == frame)
                .map(|(_, anc_from_target)| anc_from_target.inverse() * anc_from_source)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{Point3, Translation3, UnitQuaternion, Vector3};

    fn iso(t: [f64; 3], yaw: f64) -> Isometry3<f64> {
        Isometry3::from_parts(
            Translation3::new(t[0], t[1], t[2]),
            UnitQuaternion::from_axis_angle(&Vector3::z_axis(), yaw),
        )
    }

    #[test]
    fn sibling_lookup_equals_the_composed_transforms() {
        let base_from_lidar = iso([0.9, 0.0, 1.8], -1.57);
        let base_from_cam = iso([1.7, 0.01, 1.5], 0.3);
        let mut tree = TransformTree::new();
        assert!(tree.set("base_link", "lidar_top", base_from_lidar));
        assert!(tree.set("/base_link", "cam_front", base_from_cam));
        let lidar_from_cam = tree.lookup("lidar_top", "cam_front").unwrap();
        let p = Point3::new(1.0, -2.0, 7.0);
        let direct = base_from_lidar.inverse() * (base_from_cam * p);
        assert!((lidar_from_cam * p - direct).norm() < 1e-12);
        // And back.
        let cam_from_lidar = tree.lookup("cam_front", "lidar_top").unwrap();
        assert!((cam_from_lidar * (lidar_from_cam * p) - p).norm() < 1e-12);
        assert!(tree.lookup("cam_front", "cam_front").is_some());
    }

    #[test]
    fn chains_compose_and_unknown_frames_are_absent() {
        let mut tree = TransformTree::new();
        tree.set("map", "base_link", iso([10.0, 5.0, 0.0], 1.0));
        tree.set("base_link", "lidar", iso([1.0, 0.0, 2.0], 0.0));
        let m = tree.lookup("map", "lidar").unwrap();
        let p = Point3::origin();
        let expect = iso([10.0, 5.0, 0.0], 1.0) * iso([1.0, 0.0, 2.0], 0.0) * p;
        assert!((m * p - expect).norm() < 1e-12);
        assert!(tree.lookup("map", "nowhere").is_none());
        tree.set("odom", "other", iso([0.0; 3], 0.0));
        assert!(tree.lookup("map", "other").is_none());
    }

    #[test]
    fn cycles_are_refused() {
        let mut tree = TransformTree::new();
        assert!(tree.set("a", "b", Isometry3::identity()));
        assert!(tree.set("b", "c", Isometry3::identity()));
        assert!(!tree.set("c", "a", Isometry3::identity()));
        assert!(!tree.set("a", "a", Isometry3::identity()));
        assert_eq!(tree.len(), 2);
    }
}
