//! Training-time augmentations that keep a view's image, its camera and its 3D boxes consistent: a horizontal
//! flip, a random crop rescaled to a chosen size, and colour jitter (image only). The trainer draws one
//! [`Augmentation`] per (view, epoch) from its seed ([`AugmentConfig::draw`]) and applies it to training examples
//! only; evaluation never augments.
//!
//! Pixel convention (the one of [`PinholeCamera::project`] and [`PinholeCamera::in_image`], the synthetic
//! renderer and `image`'s resampler): pixel column `i` covers `[i, i + 1)`, its centre at `i + ½`, and the image
//! spans `[0, W]`. Hence:
//!
//! * flip: pixel column `i` moves to `W − 1 − i`, a projected point `u` to `u' = W − u` (so `cx' = W − cx`), `v`
//!   unchanged. The camera-frame world is mirrored (`x → −x`); a box keeps its size, its centre's `x` changes sign
//!   and its heading `(cos yaw, 0, sin yaw)` becomes `(−cos yaw, 0, sin yaw)`: camera-frame yaw
//!   ([`OrientedBox3D::camera_params`]) `yaw' = π − yaw`. As a rotation, `R' = M·R·diag(1, −1, 1)` with
//!   `M = diag(−1, 1, 1)`: the box's width axis flips too so `R'` stays proper; corner `k` of the mirrored box is
//!   corner [`FLIPPED_CORNER`]`[k]` of the original, mirrored. The visibility rule's "strictly inside `(0, W)`"
//!   is symmetric under `u → W − u`, so a flip keeps exactly the boxes a view sees.
//! * crop and scale: the window `[x, x + w) × [y, y + h)` (whole pixels) resampled to `W' × H'` maps
//!   `u' = (u − x)·W'/w`, `v' = (v − y)·H'/h` (`fx' = fx·W'/w`, `cx' = (cx − x)·W'/w`, the same for y); boxes do
//!   not move in 3D but those the new view no longer sees (by the dataset's [`VisibilityRule`]) are dropped.
//! * colour jitter: brightness, contrast and saturation factors drawn from `[1 − j, 1 + j]` (torchvision's
//!   `ColorJitter` rules); the geometry is untouched.
use image::RgbImage;
use nalgebra::{Isometry3, Matrix3, UnitQuaternion};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::dataset::LabeledBox;
use crate::geometry::{Frame, OrientedBox3D, PinholeCamera, VisibilityRule};
use crate::{Error, Result};

/// Which corner of the original box (in [`OrientedBox3D::corners`] order) corner `k` of the flipped box is: the
/// flip swaps the box's left and right sides.
pub const FLIPPED_CORNER: [usize; 8] = [1, 0, 3, 2, 5, 4, 7, 6];

/// The training recipe's `augment` section; every key optional, everything off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Range of the crop window's side as a fraction of the image's (the same for width and height); the window
    /// is resampled back to the full image size. `[1, 1]`: no crop.
    pub crop_scale: [f64; 2],
    /// Strength `j` of the colour jitter: brightness, contrast and saturation factors in `[1 − j, 1 + j]`.
    pub color_jitter: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            flip: 0.0,
            crop_scale: [1.0, 1.0],
            color_jitter: 0.0,
        }
    }
}

/// A crop window (whole pixels) and the size it is resampled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// Left column of the window.
    pub x: u32,
    /// Top row of the window.
    pub y: u32,
    /// Window width, pixels.
    pub width: u32,
    /// Window height, pixels.
    pub height: u32,
    /// Width of the output image.
    pub out_width: u32,
    /// Height of the output image.
    pub out_height: u32,
}

/// Colour jitter factors (1 = unchanged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    /// Multiplies every channel.
    pub brightness: f32,
    /// Scales the distance to the image's mean grey.
    pub contrast: f32,
    /// Scales each pixel's distance to its own grey.
    pub saturation: f32,
}

/// One drawn augmentation of a view: crop (on the original image), then flip, then colour.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augmentation {
    /// Crop and rescale, if any.
    pub crop: Option<Crop>,
    /// Mirror left–right.
    pub flip: bool,
    /// Colour jitter, if any.
    pub color: Option<ColorJitter>,
}

impl Augmentation {
    /// Whether it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.crop.is_none() && !self.flip && self.color.is_none()
    }

    /// Whether it moves pixels (crop or flip), so the camera and the boxes change.
    pub fn is_geometric(&self) -> bool {
        self.crop.is_some() || self.flip
    }
}

impl AugmentConfig {
    /// Whether any augmentation can happen.
    pub fn is_active(&self) -> bool {
        self.flip > 0.0 || self.crop_scale[0] < 1.0 || self.color_jitter > 0.0
    }

    /// Checks the values; the error names the key (`augment.flip`, …).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| {
            Error::invalid(format!("training config key `augment.{key}`"), why)
        };
        if !(0.0..=1.0).contains(&self.flip) {
            return Err(bad("flip", format!("{} (a probability, 0..1)", self.flip)));
        }
        let [lo, hi] = self.crop_scale;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(bad(
                "crop_scale",
                format!("[{lo}, {hi}] (needs 0 < min ≤ max ≤ 1)"),
            ));
        }
        if !(0.0..1.0).contains(&self.color_jitter) {
            return Err(bad(
                "color_jitter",
                format!("{} (must be in [0, 1))", self.color_jitter),
            ));
        }
        Ok(())
    }

    /// Draws one augmentation for a `width × height` view. The draws happen in a fixed order whatever is enabled,
    /// so the same RNG state gives the same augmentation.
    pub fn draw(&self, rng: &mut impl Rng, width: u32, height: u32) -> Augmentation {
        let flip_u: f64 = rng.random();
        let scale_u: f64 = rng.random();
        let (x_u, y_u): (f64, f64) = (rng.random(), rng.random());
        let jitter_u: [f64; 3] = [rng.random(), rng.random(), rng.random()];
        let [lo, hi] = self.crop_scale;
        let s = lo + (hi - lo) * scale_u;
        let side = |n: u32| ((s * n as f64).round() as u32).clamp(1, n.max(1));
        let (w, h) = (side(width), side(height));
        let crop = (w < width || h < height).then(|| {
            let pick = |room: u32, u: f64| ((room + 1) as f64 * u).floor().min(room as f64) as u32;
            Crop {
                x: pick(width - w, x_u),
                y: pick(height - h, y_u),
                width: w,
                height: h,
                out_width: width,
                out_height: height,
            }
        });
        let j = self.color_jitter;
        let color = (j > 0.0).then(|| {
            let f = |u: f64| (1.0 - j + 2.0 * j * u) as f32;
            ColorJitter {
                brightness: f(jitter_u[0]),
                contrast: f(jitter_u[1]),
                saturation: f(jitter_u[2]),
            }
        });
        Augmentation {
            crop,
            flip: flip_u < self.flip,
            color,
        }
    }
}

fn camera_with(k: Matrix3<f64>, width: u32, height: u32) -> Result<PinholeCamera> {
    PinholeCamera::new(k, width, height)
}

/// The camera of the flipped image: `K' = F·K·M` with `F` the pixel mirror `u → W − u` and `M = diag(−1, 1, 1)`
/// the camera-frame mirror (`cx' = W − cx`; a skew term changes sign).
pub fn flip_camera(cam: &PinholeCamera) -> Result<PinholeCamera> {
    let w = cam.width() as f64;
    let f = Matrix3::new(-1.0, 0.0, w, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0);
    let m = Matrix3::from_diagonal(&nalgebra::Vector3::new(-1.0, 1.0, 1.0));
    camera_with(f * cam.k() * m, cam.width(), cam.height())
}

/// A camera-frame box mirrored by `x → −x` (see the module notes: `yaw' = π − yaw` in camera-frame parameters).
pub fn flip_box(b: &OrientedBox3D) -> OrientedBox3D {
    let m = Matrix3::from_diagonal(&nalgebra::Vector3::new(-1.0, 1.0, 1.0));
    let d = Matrix3::from_diagonal(&nalgebra::Vector3::new(1.0, -1.0, 1.0));
    let r = m * b.rotation.to_rotation_matrix().into_inner() * d;
    OrientedBox3D {
        center: nalgebra::Point3::new(-b.center.x, b.center.y, b.center.z),
        size: b.size,
        rotation: UnitQuaternion::from_rotation_matrix(
            &nalgebra::Rotation3::from_matrix_unchecked(r),
        ),
    }
}

/// The image mirrored left–right (pixel column `i` → `W − 1 − i`).
pub fn flip_image(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

fn check_crop(cam_w: u32, cam_h: u32, c: &Crop) -> Result<()> {
    if c.width == 0
        || c.height == 0
        || c.out_width == 0
        || c.out_height == 0
        || c.x as u64 + c.width as u64 > cam_w as u64
        || c.y as u64 + c.height as u64 > cam_h as u64
    {
        return Err(Error::invalid(
            "crop",
            format!("{c:?} does not fit a {cam_w}×{cam_h} image"),
        ));
    }
    Ok(())
}

/// The camera of the cropped and resampled image: `K' = A·K` with `A` mapping `u → (u − x)·W'/w`,
/// `v → (v − y)·H'/h`; the image size becomes `W' × H'`.
pub fn crop_camera(cam: &PinholeCamera, c: &Crop) -> Result<PinholeCamera> {
    check_crop(cam.width(), cam.height(), c)?;
    let sx = c.out_width as f64 / c.width as f64;
    let sy = c.out_height as f64 / c.height as f64;
    let a = Matrix3::new(
        sx,
        0.0,
        -(c.x as f64) * sx,
        0.0,
        sy,
        -(c.y as f64) * sy,
        0.0,
        0.0,
        1.0,
    );
    camera_with(a * cam.k(), c.out_width, c.out_height)
}

/// The window `c` of the image resampled to `c.out_width × c.out_height` (bilinear; `image`'s resampler maps
/// output pixel centres `j + ½` to input `x + (j + ½)·w/W'`, the same affine map as [`crop_camera`]).
pub fn crop_image(img: &RgbImage, c: &Crop) -> Result<RgbImage> {
    check_crop(img.width(), img.height(), c)?;
    let window = image::imageops::crop_imm(img, c.x, c.y, c.width, c.height).to_image();
    if (c.width, c.height) == (c.out_width, c.out_height) {
        return Ok(window);
    }
    Ok(image::imageops::resize(
        &window,
        c.out_width,
        c.out_height,
        image::imageops::FilterType::Triangle,
    ))
}

/// Colour jitter: brightness (scale), then contrast (about the image's mean grey), then saturation (about each
/// pixel's grey, ITU-R 601 weights), clamped to 0..255.
pub fn jitter_image(img: &RgbImage, j: &ColorJitter) -> RgbImage {
    let grey = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let bright: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| p.0.map(|v| (v as f32 * j.brightness).clamp(0.0, 255.0)))
        .collect();
    let mean = if bright.is_empty() {
        0.0
    } else {
        bright.iter().map(|&p| grey(p)).sum::<f32>() / bright.len() as f32
    };
    let mut out = RgbImage::new(img.width(), img.height());
    for (o, p) in out.pixels_mut().zip(bright) {
        let c = p.map(|v| ((v - mean) * j.contrast + mean).clamp(0.0, 255.0));
        let g = grey(c);
        o.0 = c.map(|v| ((v - g) * j.saturation + g).clamp(0.0, 255.0).round() as u8);
    }
    out
}

/// The augmented image.
pub fn apply_image(img: &RgbImage, a: &Augmentation) -> Result<RgbImage> {
    let mut out = match &a.crop {
        Some(c) => crop_image(img, c)?,
        None => img.clone(),
    };
    if a.flip {
        out = flip_image(&out);
    }
    if let Some(j) = &a.color {
        out = jitter_image(&out, j);
    }
    Ok(out)
}

/// The camera of the augmented image.
pub fn apply_camera(cam: &PinholeCamera, a: &Augmentation) -> Result<PinholeCamera> {
    let mut out = match &a.crop {
        Some(c) => crop_camera(cam, c)?,
        None => *cam,
    };
    if a.flip {
        out = flip_camera(&out)?;
    }
    Ok(out)
}

/// A view's boxes after the augmentation, each `None` when the augmented view no longer sees it under `rule`.
/// `frame` is the boxes' frame; `cam_to_lidar` the view's camera → LiDAR transform (used for LiDAR-frame
/// boxes, which are mirrored in the camera frame and moved back). `camera` is the *original* camera.
pub fn apply_boxes(
    boxes: &[LabeledBox],
    frame: Frame,
    cam_to_lidar: &Isometry3<f64>,
    camera: &PinholeCamera,
    a: &Augmentation,
    rule: VisibilityRule,
) -> Result<Vec<Option<LabeledBox>>> {
    let new_cam = apply_camera(camera, a)?;
    let to_cam = cam_to_lidar.inverse();
    Ok(boxes
        .iter()
        .map(|b| {
            let mut in_cam = match frame {
                Frame::Camera => b.oriented,
                Frame::Lidar => b.oriented.transform(&to_cam),
            };
            if a.flip {
                in_cam = flip_box(&in_cam);
            }
            if a.is_geometric() && !new_cam.sees_corners(&in_cam.corners(), rule) {
                return None;
            }
            let oriented = match frame {
                Frame::Camera => in_cam,
                Frame::Lidar if a.flip => in_cam.transform(cam_to_lidar),
                Frame::Lidar => b.oriented,
            };
            Some(LabeledBox {
                oriented,
                ..b.clone()
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn camera() -> PinholeCamera {
        PinholeCamera::from_rows(
            [[210.0, 0.0, 101.3], [0.0, 205.0, 57.8], [0.0, 0.0, 1.0]],
            224,
            126,
        )
        .unwrap()
    }

    fn boxes() -> Vec<LabeledBox> {
        [
            [-1.5, 0.4, 9.0, 4.5, 1.9, 1.6, 0.3],
            [2.0, 0.8, 14.0, 2.1, 0.7, 1.4, -2.2],
            [0.3, 0.2, 6.0, 0.7, 0.6, 1.8, 1.9],
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| LabeledBox {
            oriented: OrientedBox3D::from_camera_params(*p).unwrap(),
            category: "vehicle.car".into(),
            instance_id: format!("i{i}"),
        })
        .collect()
    }

    fn projected(cam: &PinholeCamera, b: &OrientedBox3D) -> Vec<nalgebra::Point2<f64>> {
        b.corners()
            .iter()
            .map(|c| cam.project(c).expect("in front"))
            .collect()
    }

    #[test]
    fn a_flip_mirrors_every_projected_corner() {
        let cam = camera();
        let a = Augmentation {
            flip: true,
            ..Default::default()
        };
        let flipped_cam = apply_camera(&cam, &a).unwrap();
        assert_eq!(flipped_cam.k()[(0, 2)], 224.0 - 101.3);
        let out = apply_boxes(
            &boxes(),
            Frame::Camera,
            &Isometry3::identity(),
            &cam,
            &a,
            VisibilityRule::AnyCorner,
        )
        .unwrap();
        let w = cam.width() as f64;
        for (b, f) in boxes().iter().zip(&out) {
            let f = f.as_ref().expect("a flip keeps what the view sees");
            let before = projected(&cam, &b.oriented);
            let after = projected(&flipped_cam, &f.oriented);
            for k in 0..8 {
                let (p, q) = (before[FLIPPED_CORNER[k]], after[k]);
                assert!(
                    (q.x - (w - p.x)).abs() <= 0.5 && (q.y - p.y).abs() <= 0.5,
                    "corner {k}: {p:?} → {q:?}"
                );
                assert!((q.x - (w - p.x)).abs() < 1e-9 && (q.y - p.y).abs() < 1e-9);
            }
            // The camera-frame parameters: x and yaw mirrored, the rest kept.
            let (p, q) = (b.oriented.camera_params(), f.oriented.camera_params());
            assert!((q[0] + p[0]).abs() < 1e-12 && (q[1] - p[1]).abs() < 1e-12);
            use std::f64::consts::{PI, TAU};
            let dyaw = (q[6] - (PI - p[6]) + PI).rem_euclid(TAU) - PI;
            assert!(dyaw.abs() < 1e-9, "{p:?} {q:?}");
            assert!((q[3..6].iter().zip(&p[3..6])).all(|(a, b)| (a - b).abs() < 1e-12));
            assert_eq!(f.category, b.category);
        }
    }

    #[test]
    fn a_flip_moves_pixels_by_the_same_rule() {
        // A bright pixel at a box centre's projection lands on the flipped box centre's projection.
        let cam = camera();
        let b = boxes()[0].oriented;
        let px = cam.project(&b.center).unwrap();
        let mut img = RgbImage::new(cam.width(), cam.height());
        img.put_pixel(
            px.x.floor() as u32,
            px.y.floor() as u32,
            image::Rgb([255, 255, 255]),
        );
        let a = Augmentation {
            flip: true,
            ..Default::default()
        };
        let out = apply_image(&img, &a).unwrap();
        let q = apply_camera(&cam, &a)
            .unwrap()
            .project(&flip_box(&b).center)
            .unwrap();
        assert_eq!(
            out.get_pixel(q.x.floor() as u32, q.y.floor() as u32).0,
            [255; 3]
        );
    }

    #[test]
    fn crop_and_scale_move_corners_by_the_offset_and_scale() {
        let cam = camera();
        let c = Crop {
            x: 30,
            y: 12,
            width: 180,
            height: 100,
            out_width: 300,
            out_height: 150,
        };
        let a = Augmentation {
            crop: Some(c),
            ..Default::default()
        };
        let new_cam = apply_camera(&cam, &a).unwrap();
        assert_eq!((new_cam.width(), new_cam.height()), (300, 150));
        let (sx, sy) = (300.0 / 180.0, 150.0 / 100.0);
        let out = apply_boxes(
            &boxes(),
            Frame::Camera,
            &Isometry3::identity(),
            &cam,
            &a,
            VisibilityRule::AnyCorner,
        )
        .unwrap();
        let mut kept = 0;
        for (b, f) in boxes().iter().zip(&out) {
            let before = projected(&cam, &b.oriented);
            let Some(f) = f else {
                assert!(
                    !new_cam.sees_corners(&b.oriented.corners(), VisibilityRule::AnyCorner),
                    "a box the crop still sees was dropped"
                );
                continue;
            };
            kept += 1;
            assert_eq!(f.oriented, b.oriented, "a crop does not move boxes in 3D");
            let after = projected(&new_cam, &f.oriented);
            for k in 0..8 {
                let (p, q) = (before[k], after[k]);
                let want = ((p.x - 30.0) * sx, (p.y - 12.0) * sy);
                assert!(
                    (q.x - want.0).abs() <= 0.5 && (q.y - want.1).abs() <= 0.5,
                    "corner {k}: {p:?} → {q:?}, want {want:?}"
                );
            }
        }
        assert!(kept >= 2, "the test boxes should mostly stay in view");
        // Flip after crop: the crop's mapping, then u → W' − u.
        let a = Augmentation {
            crop: Some(c),
            flip: true,
            color: None,
        };
        let both = apply_camera(&cam, &a).unwrap();
        let b = boxes()[0].oriented;
        let (p, q) = (projected(&cam, &b), projected(&both, &flip_box(&b)));
        for k in 0..8 {
            let want = (
                300.0 - (p[FLIPPED_CORNER[k]].x - 30.0) * sx,
                (p[FLIPPED_CORNER[k]].y - 12.0) * sy,
            );
            assert!((q[k].x - want.0).abs() <= 0.5 && (q[k].y - want.1).abs() <= 0.5);
        }
    }

    #[test]
    fn crops_drop_boxes_that_leave_the_view() {
        let cam = camera();
        // The box at x = +2 m, 14 m ahead projects right of centre; a window on the left half loses it.
        let a = Augmentation {
            crop: Some(Crop {
                x: 0,
                y: 0,
                width: 112,
                height: 126,
                out_width: 112,
                out_height: 126,
            }),
            ..Default::default()
        };
        let out = apply_boxes(
            &boxes(),
            Frame::Camera,
            &Isometry3::identity(),
            &cam,
            &a,
            VisibilityRule::AllCorners,
        )
        .unwrap();
        assert!(out[1].is_none(), "{:?}", out[1]);
        // A window that does not fit is an error.
        let bad = Crop {
            x: 200,
            ..a.crop.unwrap()
        };
        assert!(crop_camera(&cam, &bad).is_err());
    }

    #[test]
    fn lidar_frame_boxes_flip_through_the_camera() {
        let cam = camera();
        let cam_to_lidar = Isometry3::from_parts(
            nalgebra::Translation3::new(1.0, 0.2, 1.5),
            UnitQuaternion::from_euler_angles(-std::f64::consts::FRAC_PI_2, 0.0, -1.4),
        );
        let lidar: Vec<LabeledBox> = boxes()
            .into_iter()
            .map(|b| LabeledBox {
                oriented: b.oriented.transform(&cam_to_lidar),
                ..b
            })
            .collect();
        let a = Augmentation {
            flip: true,
            ..Default::default()
        };
        let out = apply_boxes(
            &lidar,
            Frame::Lidar,
            &cam_to_lidar,
            &cam,
            &a,
            VisibilityRule::AnyCorner,
        )
        .unwrap();
        let fc = apply_camera(&cam, &a).unwrap();
        for (b, f) in lidar.iter().zip(out) {
            let f = f.unwrap();
            let p = projected(&cam, &b.oriented.transform(&cam_to_lidar.inverse()));
            let q = projected(&fc, &f.oriented.transform(&cam_to_lidar.inverse()));
            for k in 0..8 {
                assert!((q[k].x - (224.0 - p[FLIPPED_CORNER[k]].x)).abs() < 1e-6);
                assert!((q[k].y - p[FLIPPED_CORNER[k]].y).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn color_jitter_changes_the_image_not_the_boxes() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 120]));
        let cfg = AugmentConfig {
            color_jitter: 0.4,
            ..Default::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let a = cfg.draw(&mut rng, 40, 30);
        assert!(!a.is_geometric() && a.color.is_some());
        let j = a.color.unwrap();
        for f in [j.brightness, j.contrast, j.saturation] {
            assert!((0.6..=1.4).contains(&f), "{f}");
        }
        let out = apply_image(&img, &a).unwrap();
        assert_eq!(out.dimensions(), img.dimensions());
        assert_ne!(out, img, "the jitter changed nothing");
        let cam = PinholeCamera::from_rows(
            [[30.0, 0.0, 20.0], [0.0, 30.0, 15.0], [0.0, 0.0, 1.0]],
            40,
            30,
        )
        .unwrap();
        assert_eq!(apply_camera(&cam, &a).unwrap(), cam);
        let bx = vec![LabeledBox {
            oriented: OrientedBox3D::from_camera_params([0.0, 0.0, 8.0, 1.0, 1.0, 1.0, 0.2])
                .unwrap(),
            category: "vehicle.car".into(),
            instance_id: "a".into(),
        }];
        let out = apply_boxes(
            &bx,
            Frame::Camera,
            &Isometry3::identity(),
            &cam,
            &a,
            VisibilityRule::AllCorners,
        )
        .unwrap();
        assert_eq!(out, vec![Some(bx[0].clone())]);
        // Known factors: brightness 1.5 on a grey pixel, contrast and saturation 1, doubles it (clamped).
        let grey = RgbImage::from_pixel(2, 2, image::Rgb([100, 100, 100]));
        let up = jitter_image(
            &grey,
            &ColorJitter {
                brightness: 1.5,
                contrast: 1.0,
                saturation: 1.0,
            },
        );
        assert_eq!(up.get_pixel(0, 0).0, [150; 3]);
        // Saturation 0 turns a colour grey.
        let red = RgbImage::from_pixel(1, 1, image::Rgb([200, 0, 0]));
        let g = jitter_image(
            &red,
            &ColorJitter {
                brightness: 1.0,
                contrast: 1.0,
                saturation: 0.0,
            },
        );
        let p = g.get_pixel(0, 0).0;
        assert!(p[0] == p[1] && p[1] == p[2], "{p:?}");
    }

    #[test]
    fn draws_are_seeded_and_bounded() {
        let cfg = AugmentConfig {
            flip: 0.5,
            crop_scale: [0.8, 1.0],
            color_jitter: 0.2,
        };
        cfg.validate().unwrap();
        let draw = |seed| cfg.draw(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed), 448, 252);
        assert_eq!(draw(3), draw(3));
        let all: Vec<Augmentation> = (0..200).map(draw).collect();
        let flips = all.iter().filter(|a| a.flip).count();
        assert!((60..140).contains(&flips), "{flips}");
        for a in &all {
            if let Some(c) = a.crop {
                assert!(
                    c.width >= 358 && c.x + c.width <= 448 && c.y + c.height <= 252,
                    "{c:?}"
                );
                assert_eq!((c.out_width, c.out_height), (448, 252));
            }
        }
        assert!(!AugmentConfig::default().is_active());
        assert!(AugmentConfig::default()
            .draw(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1), 10, 10)
            .is_identity());
        for (bad, key) in [
            (
                AugmentConfig {
                    flip: 1.5,
                    ..Default::default()
                },
                "augment.flip",
            ),
            (
                AugmentConfig {
                    crop_scale: [0.9, 0.8],
                    ..Default::default()
                },
                "augment.crop_scale",
            ),
            (
                AugmentConfig {
                    crop_scale: [0.0, 1.0],
                    ..Default::default()
                },
                "augment.crop_scale",
            ),
            (
                AugmentConfig {
                    color_jitter: -0.1,
                    ..Default::default()
                },
                "augment.color_jitter",
            ),
        ] {
            assert!(
                bad.validate().unwrap_err().to_string().contains(key),
                "{key}"
            );
        }
    }
}
