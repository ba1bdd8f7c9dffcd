//! The node demo's picture (`demo.png`), ROS-free: one frame's six camera views with the ground-truth and
//! predicted 3D boxes projected into them, and a bird's-eye view of the same boxes.
//!
//! Boxes are 7-vectors `[x, y, z, l, w, h, yaw]` in the LiDAR frame (`lidar_top`: x right, y forward, z up,
//! as in nuScenes). A box is drawn into a camera by moving its eight corners into the camera's optical frame
//! (the inverse of the view's camera → LiDAR transform), projecting them with the pinhole intrinsics and
//! drawing the twelve edges; an edge with a corner less than [`NEAR_M`] in front of the camera is skipped, and
//! the rest are clipped to the image. Text is rasterised from the DejaVu Sans bytes embedded in the binary
//! (`assets/fonts/DejaVuSans.ttf`, as `crate::eval::plots` does), so no system font is needed.
use std::path::Path;

use image::RgbImage;
use nalgebra::{Isometry3, Point3};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::geometry::{Box3D, PinholeCamera};
use crate::perception::markers::BOX_EDGES;
use crate::{Error, Result};

use crate::eval::plots::{ensure_font, save_png, FONT};

/// Corners closer than this in front of a camera (metres along its optical axis) are behind it for drawing.
pub const NEAR_M: f64 = 0.1;
/// Half the side of the bird's-eye view, metres.
pub const BEV_RANGE_M: f64 = 50.0;

/// Ground truth: green on the camera images, darker green on the white bird's-eye view.
const TRUE_ON_IMAGE: RGBColor = RGBColor(40, 230, 70);
const TRUE_ON_WHITE: RGBColor = RGBColor(0, 150, 40);
/// Predictions: red.
const PREDICTED_ON_IMAGE: RGBColor = RGBColor(255, 40, 40);
const PREDICTED_ON_WHITE: RGBColor = RGBColor(215, 25, 30);
/// Ground truth of categories no prompt asked for.
const OTHER_ON_IMAGE: RGBColor = RGBColor(215, 215, 215);
const OTHER_ON_WHITE: RGBColor = RGBColor(175, 175, 175);

/// Layout, pixels.
const MARGIN: i32 = 20;
const TITLE_H: i32 = 84;
const VIEW_W: u32 = 480;
const VIEW_H: u32 = 270;
const CAPTION_H: i32 = 26;
const GAP: i32 = 16;
const BEV_W: u32 = 654;
const BEV_H: u32 = 640;
const LEGEND_H: i32 = 40;

/// A box to draw: its LiDAR-frame 7-vector, category and (for predictions) score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DrawBox {
    /// `[x, y, z, l, w, h, yaw]`, LiDAR frame.
    pub params: [f64; 7],
    /// Category (prompt name).
    pub label: String,
    /// Confidence of a prediction; `None` for ground truth.
    pub score: Option<f32>,
}

/// One camera view of the frame.
#[derive(Debug, Clone)]
pub struct ViewPanel {
    /// nuScenes channel, the caption (`CAM_FRONT`).
    pub channel: String,
    /// The decoded image.
    pub image: RgbImage,
    /// Intrinsics and image size (the size the projections refer to).
    pub camera: PinholeCamera,
    /// Camera optical frame → LiDAR frame (the dataset's `cam_to_lidar`).
    pub cam_to_lidar: Isometry3<f64>,
}

/// Everything `demo.png` shows.
#[derive(Debug, Clone)]
pub struct DemoPicture {
    /// First title line (prompts, model).
    pub title: String,
    /// Second title line (frame, stamp, counts).
    pub subtitle: String,
    /// The views, in rig order.
    pub views: Vec<ViewPanel>,
    /// Ground truth of the prompted categories (green).
    pub truth: Vec<DrawBox>,
    /// Ground truth of other categories (grey).
    pub others: Vec<DrawBox>,
    /// Predictions (red).
    pub predicted: Vec<DrawBox>,
}

/// A camera-frame point (x right, y down, z forward) to pixels with the pinhole model:
/// `u = fx·x/z + s·y/z + cx`, `v = fy·y/z + cy`; `None` when it is less than [`NEAR_M`] in front of the camera.
pub fn project_point(camera: &PinholeCamera, p: &Point3<f64>) -> Option<[f64; 2]> {
    if p.z.is_nan() || p.z < NEAR_M {
        return None;
    }
    camera.project(p).map(|q| [q.x, q.y])
}

/// The twelve edges of a LiDAR-frame box as pixel segments in a camera, clipped to the image
/// (`[0, width] × [0, height]`). Edges with a corner behind the camera (closer than [`NEAR_M`]) and edges
/// wholly outside the image are left out; a box behind the camera gives no segment. `lidar_to_camera` is the
/// inverse of the view's camera → LiDAR transform.
pub fn project_box_edges(
    params: &[f64; 7],
    lidar_to_camera: &Isometry3<f64>,
    camera: &PinholeCamera,
) -> Result<Vec<[[f64; 2]; 2]>> {
    let corners = Box3D::from_params(*params)?
        .corners()
        .map(|c| lidar_to_camera * c);
    let (w, h) = (f64::from(camera.width()), f64::from(camera.height()));
    Ok(BOX_EDGES
        .iter()
        .filter_map(|&(a, b)| {
            let pa = project_point(camera, &corners[a])?;
            let pb = project_point(camera, &corners[b])?;
            clip_segment(pa, pb, w, h)
        })
        .collect())
}

/// Liang–Barsky: the part of segment `a`–`b` inside `[0, w] × [0, h]`, or `None`.
pub fn clip_segment(a: [f64; 2], b: [f64; 2], w: f64, h: f64) -> Option<[[f64; 2]; 2]> {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a[0]), (dx, w - a[0]), (-dy, a[1]), (dy, h - a[1])] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    if t0 > t1 || !t0.is_finite() || !t1.is_finite() {
        return None;
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            [a[0] + t * dx, a[1] + t * dy]
        }
    };
    Some([at(t0), at(t1)])
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Top-left pixel of view `k`'s image (its caption sits above it): three per row, rig order.
fn view_origin(k: usize) -> (i32, i32) {
    let col = (k % 3) as i32;
    let row = (k / 3) as i32;
    (
        MARGIN + col * (VIEW_W as i32 + GAP),
        TITLE_H + CAPTION_H + row * (VIEW_H as i32 + CAPTION_H + GAP),
    )
}

/// The picture's size for `views` camera views.
pub fn picture_size(views: usize) -> (u32, u32) {
    let rows = views.div_ceil(3).max(2) as i32;
    let views_h = rows * (VIEW_H as i32 + CAPTION_H + GAP) - GAP;
    let w = MARGIN + 3 * VIEW_W as i32 + 2 * GAP + 2 * MARGIN + BEV_W as i32 + MARGIN;
    let h = TITLE_H + (views_h + LEGEND_H).max(BEV_H as i32 + CAPTION_H) + MARGIN;
    (w as u32, h as u32)
}

/// Draws `picture` (see the module docs) and writes it to `path` as PNG (its folder created).
pub fn draw_demo_picture(path: &Path, picture: &DemoPicture) -> Result<()> {
    ensure_font()?;
    let (w, h) = picture_size(picture.views.len());
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    // Camera images first (scaled into their slots, letterboxed on dark grey); plotters draws on top.
    let mut placements = Vec::with_capacity(picture.views.len());
    for (k, v) in picture.views.iter().enumerate() {
        let (x0, y0) = view_origin(k);
        for y in 0..VIEW_H {
            for x in 0..VIEW_W {
                canvas.put_pixel(x0 as u32 + x, y0 as u32 + y, image::Rgb([40, 40, 44]));
            }
        }
        let (iw, ih) = (v.image.width().max(1), v.image.height().max(1));
        let scale = (f64::from(VIEW_W) / f64::from(iw)).min(f64::from(VIEW_H) / f64::from(ih));
        let (sw, sh) = (
            ((f64::from(iw) * scale).round() as u32).clamp(1, VIEW_W),
            ((f64::from(ih) * scale).round() as u32).clamp(1, VIEW_H),
        );
        let scaled =
            image::imageops::resize(&v.image, sw, sh, image::imageops::FilterType::Triangle);
        let (ox, oy) = (x0 + (VIEW_W - sw) as i32 / 2, y0 + (VIEW_H - sh) as i32 / 2);
        image::imageops::overlay(&mut canvas, &scaled, i64::from(ox), i64::from(oy));
        // Projections are in the camera's own pixel grid; the panel shows the decoded image scaled.
        let sx = f64::from(sw) / f64::from(v.camera.width());
        let sy = f64::from(sh) / f64::from(v.camera.height());
        placements.push((ox, oy, sx, sy));
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let drawn = draw_overlays(&root, picture, &placements, (w, h))
            .and_then(|()| root.present().map_err(Into::into));
        drawn.map_err(|e| Error::invalid("demo picture", format!("{}: {e}", path.display())))?;
    }
    save_png(path, (w, h), buf, "demo picture")
}

fn draw_overlays(
    root: &Area<'_>,
    picture: &DemoPicture,
    placements: &[(i32, i32, f64, f64)],
    (w, _h): (u32, u32),
) -> DrawResult {
    let text = |size: u32, color: &'static RGBColor| -> TextStyle<'static> {
        TextStyle::from((FONT, size).into_font()).color(color)
    };
    root.draw(&Text::new(
        picture.title.clone(),
        (MARGIN, 14),
        text(26, &BLACK),
    ))?;
    root.draw(&Text::new(
        picture.subtitle.clone(),
        (MARGIN, 50),
        text(17, &RGBColor(70, 70, 70)),
    ))?;

    // Camera views: caption, boxes (ground truth under predictions), frame.
    for (k, v) in picture.views.iter().enumerate() {
        let (x0, y0) = view_origin(k);
        let (ox, oy, sx, sy) = placements[k];
        let lidar_to_camera = v.cam_to_lidar.inverse();
        let mut counts = [0usize; 3];
        for (i, (boxes, color, width)) in [
            (&picture.others, OTHER_ON_IMAGE, 1),
            (&picture.truth, TRUE_ON_IMAGE, 2),
            (&picture.predicted, PREDICTED_ON_IMAGE, 2),
        ]
        .into_iter()
        .enumerate()
        {
            for b in boxes {
                let Ok(edges) = project_box_edges(&b.params, &lidar_to_camera, &v.camera) else {
                    continue;
                };
                if !edges.is_empty() {
                    counts[i] += 1;
                }
                for [a, z] in edges {
                    let px = |p: [f64; 2]| {
                        (
                            ox + (p[0] * sx).round() as i32,
                            oy + (p[1] * sy).round() as i32,
                        )
                    };
                    root.draw(&PathElement::new(
                        vec![px(a), px(z)],
                        color.stroke_width(width),
                    ))?;
                }
            }
        }
        root.draw(&Text::new(
            format!(
                "{}   ({} true, {} predicted in view)",
                v.channel, counts[1], counts[2]
            ),
            (x0, y0 - CAPTION_H + 3),
            text(17, &BLACK),
        ))?;
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + VIEW_W as i32, y0 + VIEW_H as i32)],
            RGBColor(120, 120, 120).stroke_width(1),
        ))?;
    }

    // Legend under the views.
    let rows = picture.views.len().div_ceil(3).max(2) as i32;
    let ly = TITLE_H + rows * (VIEW_H as i32 + CAPTION_H + GAP) + 8;
    let mut lx = MARGIN;
    for (label, color) in [
        ("true (ground truth)".to_string(), TRUE_ON_WHITE),
        (
            format!(
                "predicted ({} boxes in this frame)",
                picture.predicted.len()
            ),
            PREDICTED_ON_WHITE,
        ),
        (
            "other ground truth (categories not prompted)".to_string(),
            OTHER_ON_WHITE,
        ),
    ] {
        root.draw(&PathElement::new(
            vec![(lx, ly + 9), (lx + 34, ly + 9)],
            color.stroke_width(4),
        ))?;
        root.draw(&Text::new(label.clone(), (lx + 42, ly), text(17, &BLACK)))?;
        lx += 42 + 9 * label.chars().count() as i32 + 40;
    }

    // Bird's-eye view on the right.
    let bx = w as i32 - MARGIN - BEV_W as i32;
    root.draw(&Text::new(
        "Bird's-eye view, LiDAR frame (lidar_top), forward up; tick: heading",
        (bx + 10, TITLE_H),
        text(18, &BLACK),
    ))?;
    let area = root
        .clone()
        .shrink((bx, TITLE_H + CAPTION_H), (BEV_W, BEV_H));
    draw_bev(&area, picture)?;
    Ok(())
}

/// The bird's-eye-view chart: LiDAR x (right) across, y (forward) up, ±[`BEV_RANGE_M`].
fn draw_bev(area: &Area<'_>, picture: &DemoPicture) -> DrawResult {
    let r = BEV_RANGE_M;
    // Plot area 570 × 570 px: square metres on screen.
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(64)
        .build_cartesian_2d(-r..r, -r..r)?;
    let fmt = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .x_desc("x (right), m")
        .y_desc("y (forward), m")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()?;
    // Range rings every 10 m.
    for ring in (1..=5).map(|k| 10.0 * k as f64) {
        let pts: Vec<(f64, f64)> = (0..=120)
            .map(|i| {
                let a = i as f64 / 120.0 * std::f64::consts::TAU;
                (ring * a.cos(), ring * a.sin())
            })
            .collect();
        chart.draw_series(std::iter::once(PathElement::new(
            pts,
            RGBColor(215, 215, 230).stroke_width(1),
        )))?;
    }
    let outline = |b: &DrawBox| -> Option<Vec<(f64, f64)>> {
        let c = Box3D::from_params(b.params).ok()?.bev_corners();
        let mut pts: Vec<(f64, f64)> = c.iter().map(|p| (p[0], p[1])).collect();
        pts.push(pts[0]);
        // Heading tick: centre to the middle of the front edge (corners 0 and 3).
        pts.push(((c[0][0] + c[3][0]) / 2.0, (c[0][1] + c[3][1]) / 2.0));
        pts.push((b.params[0], b.params[1]));
        Some(pts)
    };
    let in_range = |b: &&DrawBox| b.params[0].abs() <= r && b.params[1].abs() <= r;
    for (boxes, color, width, label) in [
        (&picture.others, OTHER_ON_WHITE, 1, "other ground truth"),
        (&picture.truth, TRUE_ON_WHITE, 2, "true"),
        (&picture.predicted, PREDICTED_ON_WHITE, 2, "predicted"),
    ] {
        chart
            .draw_series(
                boxes
                    .iter()
                    .filter(in_range)
                    .filter_map(outline)
                    .map(|pts| PathElement::new(pts, color.stroke_width(width))),
            )?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    // The LiDAR at the origin, and the vehicle's heading.
    chart.draw_series(std::iter::once(Polygon::new(
        vec![(0.0, 2.2), (-1.2, -1.4), (1.2, -1.4)],
        BLACK.filled(),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        "ego",
        (1.8, -1.0),
        TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perception::Rig;

    fn camera() -> PinholeCamera {
        PinholeCamera::from_rows(
            [[500.0, 0.0, 320.0], [0.0, 500.0, 180.0], [0.0, 0.0, 1.0]],
            640,
            360,
        )
        .unwrap()
    }

    #[test]
    fn a_box_in_front_projects_at_the_pinhole_pixels_inside_the_image() {
        // LiDAR frame = camera frame: the box's corners are camera-frame points.
        let params = [0.5, -0.2, 10.0, 2.0, 1.0, 1.5, 0.3];
        let edges = project_box_edges(&params, &Isometry3::identity(), &camera()).unwrap();
        assert_eq!(edges.len(), 12);
        let corners = Box3D::from_params(params).unwrap().corners();
        let pinhole = |p: &Point3<f64>| [500.0 * p.x / p.z + 320.0, 500.0 * p.y / p.z + 180.0];
        for (k, &(a, b)) in BOX_EDGES.iter().enumerate() {
            for (got, corner) in [(edges[k][0], corners[a]), (edges[k][1], corners[b])] {
                let want = pinhole(&corner);
                assert!(
                    (got[0] - want[0]).abs() < 1e-9 && (got[1] - want[1]).abs() < 1e-9,
                    "edge {k}: {got:?} vs {want:?}"
                );
                assert!((0.0..=640.0).contains(&got[0]) && (0.0..=360.0).contains(&got[1]));
            }
        }
        // The centre lands at the formula's pixel, near the principal point.
        let c = project_point(&camera(), &Point3::new(0.5, -0.2, 10.0)).unwrap();
        assert!(
            (c[0] - 345.0).abs() < 1e-9 && (c[1] - 170.0).abs() < 1e-9,
            "{c:?}"
        );
    }

    #[test]
    fn a_box_behind_the_camera_is_skipped_and_one_straddling_it_loses_those_edges() {
        let cam = camera();
        let behind = [0.0, 0.0, -10.0, 2.0, 1.0, 1.5, 0.0];
        assert!(project_box_edges(&behind, &Isometry3::identity(), &cam)
            .unwrap()
            .is_empty());
        // Height runs along the camera's z here: corners at z = 0.7 ± 0.75. The four at z = -0.05 are behind,
        // which removes their face's four edges and the four edges joining the faces; the far face remains.
        let straddling = [0.0, 0.0, 0.7, 1.0, 1.0, 1.5, 0.0];
        let edges = project_box_edges(&straddling, &Isometry3::identity(), &cam).unwrap();
        assert_eq!(edges.len(), 4, "{edges:?}");
        assert!(edges
            .iter()
            .flatten()
            .all(|p| (0.0..=640.0).contains(&p[0]) && (0.0..=360.0).contains(&p[1])));
    }

    #[test]
    fn the_rig_front_camera_sees_a_box_ahead_of_the_lidar_and_not_one_behind() {
        let rig = Rig::nuscenes();
        let cam = rig.pinhole(0, 640, 360).unwrap();
        let to_cam = rig.camera_to_lidar(0).inverse();
        // LiDAR +y is forward in nuScenes.
        let ahead = [0.0, 15.0, -0.8, 4.5, 1.9, 1.6, 0.0];
        let edges = project_box_edges(&ahead, &to_cam, &cam).unwrap();
        assert_eq!(edges.len(), 12);
        let centre = to_cam * Point3::new(0.0, 15.0, -0.8);
        let k = cam.k();
        let px = project_point(&cam, &centre).unwrap();
        assert!((px[0] - (k[(0, 0)] * centre.x / centre.z + k[(0, 2)])).abs() < 1e-9);
        assert!((px[1] - (k[(1, 1)] * centre.y / centre.z + k[(1, 2)])).abs() < 1e-9);
        assert!((px[0] - 320.0).abs() < 40.0, "{px:?}");
        let behind = [0.0, -15.0, -0.8, 4.5, 1.9, 1.6, 0.0];
        assert!(project_box_edges(&behind, &to_cam, &cam)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn segments_are_clipped_to_the_image() {
        assert_eq!(
            clip_segment([-10.0, 5.0], [10.0, 5.0], 8.0, 8.0),
            Some([[0.0, 5.0], [8.0, 5.0]])
        );
        assert_eq!(clip_segment([-10.0, -5.0], [-1.0, 20.0], 8.0, 8.0), None);
        assert_eq!(
            clip_segment([1.0, 1.0], [2.0, 3.0], 8.0, 8.0),
            Some([[1.0, 1.0], [2.0, 3.0]])
        );
    }

    #[test]
    fn the_picture_is_drawn_with_views_and_bev() {
        let dir = std::env::temp_dir().join(format!("vlm3d-picture-{}", std::process::id()));
        let rig = Rig::nuscenes();
        let views = (0..6)
            .map(|i| ViewPanel {
                channel: rig.cameras[i].channel.clone(),
                image: RgbImage::from_pixel(640, 360, image::Rgb([90, 110, 130])),
                camera: rig.pinhole(i, 640, 360).unwrap(),
                cam_to_lidar: rig.camera_to_lidar(i),
            })
            .collect();
        let b = |p: [f64; 7], score| DrawBox {
            params: p,
            label: "car".into(),
            score,
        };
        let pic = DemoPicture {
            title: "title".into(),
            subtitle: "subtitle".into(),
            views,
            truth: vec![b([0.0, 15.0, -0.8, 4.5, 1.9, 1.6, 0.0], None)],
            others: vec![b([8.0, -20.0, -0.8, 0.6, 0.6, 1.7, 0.0], None)],
            predicted: vec![b([0.5, 14.0, -0.8, 4.0, 1.8, 1.5, 0.2], Some(0.6))],
        };
        let path = dir.join("demo.png");
        draw_demo_picture(&path, &pic).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), picture_size(6));
        // Green and red pixels in the front view (first slot).
        let (x0, y0) = view_origin(0);
        let slot = |f: &dyn Fn(&image::Rgb<u8>) -> bool| {
            (0..VIEW_H).any(|y| (0..VIEW_W).any(|x| f(img.get_pixel(x0 as u32 + x, y0 as u32 + y))))
        };
        assert!(slot(&|p| p.0 == [40, 230, 70]));
        assert!(slot(&|p| p.0 == [255, 40, 40]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
