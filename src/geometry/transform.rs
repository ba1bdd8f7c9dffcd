//! Rigid transforms between sensor, ego and global frames (nalgebra isometries).
use nalgebra::{Isometry3, Quaternion, Translation3, UnitQuaternion};

use crate::{Error, Result};

/// Builds a unit quaternion from nuScenes' (w, x, y, z) order.
///
/// Rejects non-finite and (near-)zero quaternions, which nuScenes tables should never contain but corrupt or
/// hand-edited ones do; non-unit quaternions are normalized.
pub fn quaternion_from_wxyz(q: [f64; 4]) -> Result<UnitQuaternion<f64>> {
    if q.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "quaternion",
            format!("non-finite component in {q:?}"),
        ));
    }
    let raw = Quaternion::new(q[0], q[1], q[2], q[3]);
    let norm = raw.norm();
    if norm < 1e-9 {
        return Err(Error::invalid(
            "quaternion",
            format!("zero quaternion {q:?} (w, x, y, z)"),
        ));
    }
    Ok(UnitQuaternion::new_normalize(raw))
}

/// The isometry that maps points of a child frame into its parent frame, from a nuScenes record's
/// `translation` and `rotation` (w, x, y, z) — as stored in `ego_pose` (ego → global) and
/// `calibrated_sensor` (sensor → ego).
pub fn isometry_from_nuscenes(
    translation: [f64; 3],
    rotation_wxyz: [f64; 4],
) -> Result<Isometry3<f64>> {
    if translation.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "translation",
            format!("non-finite component in {translation:?}"),
        ));
    }
    let rotation = quaternion_from_wxyz(rotation_wxyz)?;
    Ok(Isometry3::from_parts(
        Translation3::new(translation[0], translation[1], translation[2]),
        rotation,
    ))
}
