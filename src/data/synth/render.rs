//! A small software renderer and LiDAR simulator for the synthetic generator: boxes in a flat world (ground
//! plane z = 0 in the global frame), drawn by a pinhole camera with a z-buffer and flat shading, and hit by the
//! beams of a spinning multi-ring LiDAR.
use image::RgbImage;
use nalgebra::{Isometry3, Point3, Vector3};

use crate::geometry::{OrientedBox3D, PinholeCamera};

/// Near clipping distance of the renderer, metres (camera z).
const NEAR: f64 = 0.05;

/// A box to draw: its pose in the global frame and its base colour (linear RGB in 0..1).
#[derive(Debug, Clone, Copy)]
pub struct Solid {
    /// The box, global frame.
    pub bbox: OrientedBox3D,
    /// Base colour.
    pub color: [f64; 3],
    /// Surface pattern drawn on the box's faces.
    pub style: Style,
    /// LiDAR reflectivity (written as the point's intensity, 0..255).
    pub reflectivity: f32,
}

/// Surface patterns that make the categories look different beyond their colour and proportions. Patterns
/// depend on the position on the box in its own normalized axes (x along the length, z up, each in −½..½).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// The base colour everywhere.
    #[default]
    Plain,
    /// Dark wheel band at the bottom, windows in the upper part of the sides.
    Vehicle,
    /// Dark frame and wheels in the lower half, the rider above.
    Cycle,
    /// Legs, torso in the base colour, head.
    Pedestrian,
    /// Traffic cone: dark foot, a white reflective band.
    Cone,
    /// Red and white stripes across the barrier's long side.
    Barrier,
    /// Trailer: no windows, dark wheel band, vertical panel ribs along its length (`SynthConfig::distinct_looks`).
    Trailer,
    /// Construction vehicle: dark wheel band, black diagonal hazard stripes on the lower body, windows only in a
    /// cab at the front (`SynthConfig::distinct_looks`).
    Construction,
    /// Bicycle: two dark wheels at the ends of the lower half, a thin frame in the base colour between them and
    /// a dark saddle and handlebar strip on top (`SynthConfig::distinct_looks`).
    Bicycle,
}

impl Style {
    /// The surface colour at normalized box coordinates `l` on the face with outward normal `n` (box axes).
    fn color(self, base: [f64; 3], l: [f64; 3], n: [f64; 3]) -> [f64; 3] {
        let top = n[2] > 0.5;
        match self {
            Style::Plain => base,
            Style::Vehicle if !top && l[2] < -0.22 => [0.08, 0.08, 0.09],
            Style::Vehicle if !top && l[2] > 0.12 && l[2] < 0.42 => [0.16, 0.21, 0.28],
            Style::Cycle if l[2] < 0.0 => [0.10, 0.10, 0.11],
            Style::Pedestrian if l[2] < -0.05 => [0.15, 0.17, 0.35],
            Style::Pedestrian if l[2] > 0.36 => [0.86, 0.68, 0.55],
            Style::Cone if l[2] < -0.44 => [0.10, 0.10, 0.10],
            Style::Cone if !top && (l[2] - 0.05).abs() < 0.1 => [0.95, 0.95, 0.95],
            Style::Barrier if ((l[1] + 0.5) * 6.0).floor() as i64 % 2 == 1 => [0.80, 0.10, 0.08],
            Style::Trailer if !top && l[2] < -0.32 => [0.08, 0.08, 0.09],
            Style::Trailer if ((l[0] + 0.5) * 12.0).floor() as i64 % 2 == 1 => {
                base.map(|c| c * 0.72)
            }
            Style::Construction if !top && l[2] < -0.3 => [0.08, 0.08, 0.09],
            Style::Construction
                if !top && l[2] < 0.0 && ((l[0] + l[2] + 2.0) * 7.0).floor() as i64 % 2 == 1 =>
            {
                [0.05, 0.05, 0.05]
            }
            Style::Construction if !top && l[0] > 0.2 && l[2] > 0.1 && l[2] < 0.4 => {
                [0.16, 0.21, 0.28]
            }
            Style::Bicycle if l[2] < 0.0 && l[0].abs() > 0.22 => [0.06, 0.06, 0.07],
            Style::Bicycle if l[2] > 0.38 => [0.12, 0.12, 0.12],
            _ => base,
        }
    }
}

/// Per-solid pixel counts of one rendered image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Pixels the solid covers when drawn alone.
    pub covered: u64,
    /// Pixels where it is the nearest surface.
    pub visible: u64,
}

/// Faces of a box by corner index (nuScenes corner order, see [`OrientedBox3D::corners`]) with the outward
/// normal in the box's own axes.
const FACES: [([usize; 4], [f64; 3]); 6] = [
    ([0, 1, 2, 3], [1.0, 0.0, 0.0]),
    ([4, 5, 6, 7], [-1.0, 0.0, 0.0]),
    ([0, 3, 7, 4], [0.0, 1.0, 0.0]),
    ([1, 5, 6, 2], [0.0, -1.0, 0.0]),
    ([0, 4, 5, 1], [0.0, 0.0, 1.0]),
    ([3, 2, 6, 7], [0.0, 0.0, -1.0]),
];

fn sun() -> Vector3<f64> {
    Vector3::new(0.35, 0.25, 0.9).normalize()
}

fn horizon_color() -> [f64; 3] {
    [0.78, 0.84, 0.90]
}

fn sky_color(dir: &Vector3<f64>) -> [f64; 3] {
    let e = (dir.z / dir.norm()).clamp(0.0, 1.0).sqrt();
    let zenith = [0.25, 0.45, 0.80];
    let h = horizon_color();
    [0, 1, 2].map(|i| h[i] + (zenith[i] - h[i]) * e)
}

/// Whether a ground point lies on a painted line (a 20 m grid of 15 cm lines).
fn on_marking(x: f64, y: f64) -> bool {
    let m = |v: f64| (v / 20.0 - (v / 20.0).floor()) * 20.0 < 0.15;
    m(x) || m(y)
}

fn ground_color(x: f64, y: f64) -> [f64; 3] {
    if on_marking(x, y) {
        return [0.85, 0.85, 0.80];
    }
    let checker = ((x / 4.0).floor() as i64 + (y / 4.0).floor() as i64).rem_euclid(2) as f64;
    let g = 0.33 + 0.04 * checker;
    [g, g, g * 1.02]
}

fn fog(c: [f64; 3], dist: f64) -> [f64; 3] {
    let f = 1.0 - (-dist / 250.0).exp();
    let h = horizon_color();
    [0, 1, 2].map(|i| c[i] + (h[i] - c[i]) * f)
}

fn to_u8(c: [f64; 3]) -> [u8; 3] {
    c.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// Clips a convex polygon (camera-frame points, each with box coordinates) to z ≥ NEAR.
fn clip_near(poly: &[(Point3<f64>, Vector3<f64>)]) -> Vec<(Point3<f64>, Vector3<f64>)> {
    let mut out = Vec::with_capacity(poly.len() + 2);
    for i in 0..poly.len() {
        let a = poly[i];
        let b = poly[(i + 1) % poly.len()];
        let (ina, inb) = (a.0.z >= NEAR, b.0.z >= NEAR);
        if ina {
            out.push(a);
        }
        if ina != inb {
            let t = (NEAR - a.0.z) / (b.0.z - a.0.z);
            out.push((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
        }
    }
    out
}

/// Renders `solids` seen by `cam` placed at `cam_to_global`: sky and textured ground behind, the solids
/// flat-shaded by face normal with a z-buffer. Returns the image and, per solid, its coverage.
pub fn render_camera(
    cam: &PinholeCamera,
    cam_to_global: &Isometry3<f64>,
    solids: &[Solid],
) -> (RgbImage, Vec<Coverage>) {
    let (w, h) = (cam.width() as usize, cam.height() as usize);
    let k = cam.k();
    let k_inv = k.try_inverse().unwrap_or_else(nalgebra::Matrix3::identity);
    let rot = cam_to_global.rotation;
    let origin = cam_to_global.translation.vector;
    let mut rgb = vec![[0u8; 3]; w * h];

    // Background: per-pixel ray against the ground plane z = 0. The global ray direction of pixel (u, v) is
    // M·(u, v, 1) with M = R·K⁻¹, unrolled into plain arithmetic (this loop is the renderer's hot spot).
    let m = rot.to_rotation_matrix().into_inner() * k_inv;
    let col = |j: usize| [m[(0, j)], m[(1, j)], m[(2, j)]];
    let (mu, mv, m1) = (col(0), col(1), col(2));
    for v in 0..h {
        let fv = v as f64 + 0.5;
        let row = [0, 1, 2].map(|i| mv[i] * fv + m1[i]);
        for u in 0..w {
            let fu = u as f64 + 0.5;
            let d = [
                row[0] + mu[0] * fu,
                row[1] + mu[1] * fu,
                row[2] + mu[2] * fu,
            ];
            let c = if d[2] < -1e-9 && origin.z > 0.0 {
                let t = -origin.z / d[2];
                let (x, y) = (origin.x + d[0] * t, origin.y + d[1] * t);
                let dist = t * (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                fog(ground_color(x, y), dist)
            } else {
                sky_color(&Vector3::new(d[0], d[1], d[2]))
            };
            rgb[v * w + u] = to_u8(c);
        }
    }

    let mut depth = vec![f64::INFINITY; w * h];
    let mut owner = vec![u32::MAX; w * h];
    let mut stamp = vec![u32::MAX; w * h];
    let mut coverage = vec![Coverage::default(); solids.len()];
    let global_to_cam = cam_to_global.inverse();
    let light = sun();

    for (id, s) in solids.iter().enumerate() {
        let corners_global = s.bbox.corners();
        let inv = s.bbox.rotation.inverse();
        let local = corners_global.map(|c| {
            let v = inv * (c - s.bbox.center);
            Vector3::from_fn(|i, _| {
                if s.bbox.size[i] > 0.0 {
                    v[i] / s.bbox.size[i]
                } else {
                    0.0
                }
            })
        });
        let corners = corners_global.map(|c| global_to_cam * c);
        for (idx, n_box) in FACES {
            let n_global = s.bbox.rotation * Vector3::from(n_box);
            let n_cam = global_to_cam.rotation * n_global;
            let centre = idx
                .iter()
                .fold(Vector3::zeros(), |acc, &i| acc + corners[i].coords)
                / 4.0;
            if n_cam.dot(&centre) >= 0.0 {
                continue; // back face
            }
            let shade = 0.35 + 0.65 * n_global.dot(&light).max(0.0);
            let dist = centre.norm();
            let poly = clip_near(&idx.map(|i| (corners[i], local[i])));
            if poly.len() < 3 {
                continue;
            }
            let proj: Vec<(f64, f64, f64)> = poly
                .iter()
                .map(|(p, _)| {
                    let q = k * p.coords;
                    (q.x / q.z, q.y / q.z, 1.0 / p.z)
                })
                .collect();
            for t in 1..proj.len() - 1 {
                let tri = [0, t, t + 1];
                raster_triangle(tri.map(|i| proj[i]), w, h, |pix, bary| {
                    if stamp[pix] != id as u32 {
                        stamp[pix] = id as u32;
                        coverage[id].covered += 1;
                    }
                    let inv_z: f64 = (0..3).map(|j| bary[j] * proj[tri[j]].2).sum();
                    let z = 1.0 / inv_z;
                    if z < depth[pix] {
                        depth[pix] = z;
                        owner[pix] = id as u32;
                        // Perspective-correct box coordinates of the pixel.
                        let l = (0..3).fold(Vector3::zeros(), |acc, j| {
                            acc + poly[tri[j]].1 * (bary[j] * proj[tri[j]].2)
                        }) * z;
                        let base = s.style.color(s.color, [l.x, l.y, l.z], n_box);
                        rgb[pix] = to_u8(fog(base.map(|c| c * shade), dist));
                    }
                });
            }
        }
    }
    for &o in &owner {
        if o != u32::MAX {
            coverage[o as usize].visible += 1;
        }
    }
    let mut img = RgbImage::new(w as u32, h as u32);
    for (px, c) in img.pixels_mut().zip(rgb) {
        px.0 = c;
    }
    (img, coverage)
}

/// Scan-converts one screen-space triangle (u, v, 1/z), calling `plot(pixel index, barycentric weights of the
/// three vertices in the order given)` for each pixel whose centre lies inside (top-left fill rule, so
/// triangles sharing an edge never both claim a pixel).
fn raster_triangle(
    tri: [(f64, f64, f64); 3],
    w: usize,
    h: usize,
    mut plot: impl FnMut(usize, [f64; 3]),
) {
    let [a, b, c] = tri;
    let area = (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
    if !area.is_finite() || area.abs() < 1e-12 {
        return;
    }
    // Orient one way so edge functions are non-negative inside; remember the swap to report weights in order.
    let flipped = area < 0.0;
    let (a, b, c, area) = if flipped {
        (a, c, b, -area)
    } else {
        (a, b, c, area)
    };
    let min_u = a.0.min(b.0).min(c.0).floor().max(0.0);
    let max_u = a.0.max(b.0).max(c.0).ceil().min(w as f64);
    let min_v = a.1.min(b.1).min(c.1).floor().max(0.0);
    let max_v = a.1.max(b.1).max(c.1).ceil().min(h as f64);
    if min_u >= max_u || min_v >= max_v {
        return;
    }
    let edge = |p: (f64, f64, f64), q: (f64, f64, f64), x: f64, y: f64| {
        (q.0 - p.0) * (y - p.1) - (q.1 - p.1) * (x - p.0)
    };
    // Top-left rule for a counter-clockwise triangle in a y-down raster: a pixel exactly on an edge belongs to
    // the triangle only for "left" or "top" edges.
    let owns = |p: (f64, f64, f64), q: (f64, f64, f64)| {
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        dy < 0.0 || (dy == 0.0 && dx > 0.0)
    };
    let (own_a, own_b, own_c) = (owns(b, c), owns(c, a), owns(a, b));
    for y in min_v as usize..max_v as usize {
        let py = y as f64 + 0.5;
        for x in min_u as usize..max_u as usize {
            let px = x as f64 + 0.5;
            let wa = edge(b, c, px, py);
            let wb = edge(c, a, px, py);
            let wc = edge(a, b, px, py);
            let inside = |wv: f64, own: bool| wv > 0.0 || (wv == 0.0 && own);
            if inside(wa, own_a) && inside(wb, own_b) && inside(wc, own_c) {
                let (wa, wb, wc) = (wa / area, wb / area, wc / area);
                plot(y * w + x, if flipped { [wa, wc, wb] } else { [wa, wb, wc] });
            }
        }
    }
}

/// A spinning multi-ring LiDAR (nuScenes' is a 32-beam Velodyne HDL-32E).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LidarSpec {
    /// Number of rings (beams), evenly spread in elevation.
    pub rings: u32,
    /// Elevation of the lowest ring, degrees.
    pub min_elevation_deg: f64,
    /// Elevation of the highest ring, degrees.
    pub max_elevation_deg: f64,
    /// Firings per revolution.
    pub azimuth_steps: u32,
    /// Returns farther than this are dropped, metres.
    pub max_range: f64,
}

impl Default for LidarSpec {
    fn default() -> Self {
        Self {
            rings: 32,
            min_elevation_deg: -30.67,
            max_elevation_deg: 10.67,
            azimuth_steps: 1080,
            max_range: 70.0,
        }
    }
}

/// One LiDAR return in the sensor frame: x, y, z, intensity, ring (nuScenes' `.pcd.bin` row).
pub type LidarPoint = [f32; 5];

/// Entry and exit distances of a ray with a box (slab method), `None` when it misses.
pub fn ray_box(origin: &Point3<f64>, dir: &Vector3<f64>, b: &OrientedBox3D) -> Option<(f64, f64)> {
    let inv = b.rotation.inverse();
    let o = inv * (origin - b.center);
    let d = inv * dir;
    let (mut t0, mut t1) = (f64::NEG_INFINITY, f64::INFINITY);
    for i in 0..3 {
        let half = b.size[i] / 2.0;
        if d[i].abs() < 1e-15 {
            if o[i].abs() > half {
                return None;
            }
            continue;
        }
        let (mut a, mut c) = ((-half - o[i]) / d[i], (half - o[i]) / d[i]);
        if a > c {
            std::mem::swap(&mut a, &mut c);
        }
        t0 = t0.max(a);
        t1 = t1.min(c);
        if t0 > t1 {
            return None;
        }
    }
    Some((t0, t1))
}

/// Casts every beam of `spec` from a LiDAR at `lidar_to_global` (axes x right, y forward, z up, azimuth 0
/// along +x) into the world of `solids` and the ground plane. Returns the returns in the LiDAR frame and, per
/// solid, how many returns hit it.
pub fn cast_lidar(
    lidar_to_global: &Isometry3<f64>,
    solids: &[Solid],
    spec: &LidarSpec,
) -> (Vec<LidarPoint>, Vec<u32>) {
    let origin = Point3::from(lidar_to_global.translation.vector);
    let mut points = Vec::new();
    let mut hits = vec![0u32; solids.len()];
    let spheres: Vec<(Point3<f64>, f64)> = solids
        .iter()
        .map(|s| {
            (
                s.bbox.center,
                s.bbox.size.iter().map(|v| v * v / 4.0).sum::<f64>(),
            )
        })
        .collect();
    let r = lidar_to_global.rotation.to_rotation_matrix().into_inner();
    let (o, oz) = ([origin.x, origin.y, origin.z], origin.z);
    let spheres: Vec<([f64; 3], f64, f64)> = spheres
        .iter()
        .map(|(c, r2)| {
            let v = [c.x - o[0], c.y - o[1], c.z - o[2]];
            (v, v[0] * v[0] + v[1] * v[1] + v[2] * v[2], *r2)
        })
        .collect();
    let azimuths: Vec<(f64, f64)> = (0..spec.azimuth_steps)
        .map(|step| (step as f64 / spec.azimuth_steps as f64 * std::f64::consts::TAU).sin_cos())
        .collect();
    for ring in 0..spec.rings {
        let f = if spec.rings > 1 {
            ring as f64 / (spec.rings - 1) as f64
        } else {
            0.5
        };
        let el = (spec.min_elevation_deg + f * (spec.max_elevation_deg - spec.min_elevation_deg))
            .to_radians();
        let (se, ce) = el.sin_cos();
        for &(sa, ca) in &azimuths {
            let dl = [ce * ca, ce * sa, se];
            let d = [0, 1, 2].map(|i| r[(i, 0)] * dl[0] + r[(i, 1)] * dl[1] + r[(i, 2)] * dl[2]);
            let mut best = spec.max_range;
            let mut what: Option<usize> = None;
            let mut ground = false;
            if d[2] < -1e-9 {
                let t = -oz / d[2];
                if t > 0.0 && t < best {
                    best = t;
                    ground = true;
                }
            }
            for (i, s) in solids.iter().enumerate() {
                // Bounding-sphere rejection first: most beams miss most boxes.
                let (v, v2, r2) = spheres[i];
                let tca = v[0] * d[0] + v[1] * d[1] + v[2] * d[2];
                let rad = r2.sqrt();
                if tca + rad < 0.0 || v2 - tca * tca > r2 || tca - rad > best {
                    continue;
                }
                if let Some((t0, _)) = ray_box(&origin, &Vector3::from(d), &s.bbox) {
                    if t0 > 0.0 && t0 < best {
                        best = t0;
                        what = Some(i);
                        ground = false;
                    }
                }
            }
            let intensity = match what {
                Some(i) => {
                    hits[i] += 1;
                    solids[i].reflectivity
                }
                None if ground => {
                    if on_marking(o[0] + d[0] * best, o[1] + d[1] * best) {
                        90.0
                    } else {
                        8.0
                    }
                }
                None => continue,
            };
            let p = dl.map(|c| (c * best) as f32);
            points.push([p[0], p[1], p[2], intensity, ring as f32]);
        }
    }
    (points, hits)
}

/// Serializes points in nuScenes' `.pcd.bin` layout: little-endian float32, 5 per point.
pub fn pcd_bin(points: &[LidarPoint]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 20);
    for p in points {
        for v in p {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Parses a `.pcd.bin` (5 little-endian float32 per point); `None` when the length is not a multiple of 20.
pub fn parse_pcd_bin(bytes: &[u8]) -> Option<Vec<LidarPoint>> {
    if !bytes.len().is_multiple_of(20) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(20)
            .map(|c| {
                std::array::from_fn(|i| {
                    f32::from_le_bytes([c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]])
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{Translation3, UnitQuaternion};

    fn front_camera() -> (PinholeCamera, Isometry3<f64>) {
        let cam = PinholeCamera::from_rows(
            [[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]],
            160,
            90,
        )
        .unwrap();
        // Camera 1.5 m up looking along +x (x right = -y, y down = -z, z forward = +x).
        let q = crate::geometry::quaternion_from_wxyz([0.5, -0.5, 0.5, -0.5]).unwrap();
        (
            cam,
            Isometry3::from_parts(Translation3::new(0.0, 0.0, 1.5), q),
        )
    }

    fn cube(x: f64, y: f64, s: f64) -> Solid {
        Solid {
            bbox: OrientedBox3D::new(
                Point3::new(x, y, s / 2.0),
                [s, s, s],
                UnitQuaternion::identity(),
            )
            .unwrap(),
            color: [1.0, 0.0, 0.0],
            style: Style::Plain,
            reflectivity: 50.0,
        }
    }

    #[test]
    fn near_box_occludes_far_box() {
        let (cam, pose) = front_camera();
        let near = cube(10.0, 0.0, 2.0);
        let far = cube(20.0, 0.0, 2.0);
        let (_, cov) = render_camera(&cam, &pose, &[far, near]);
        assert!(
            cov[1].visible > 0 && cov[1].visible == cov[1].covered,
            "{cov:?}"
        );
        assert!(
            cov[0].covered > 0 && cov[0].visible == 0,
            "far box fully hidden: {cov:?}"
        );
        // Drawing order does not matter.
        let (_, cov2) = render_camera(&cam, &pose, &[near, far]);
        assert_eq!(cov2[0], cov[1]);
        assert_eq!(cov2[1], cov[0]);
    }

    #[test]
    fn box_behind_camera_is_not_drawn_and_straddling_box_is_clipped() {
        let (cam, pose) = front_camera();
        let (_, cov) = render_camera(&cam, &pose, &[cube(-10.0, 0.0, 2.0)]);
        assert_eq!(cov[0].covered, 0);
        // A box beside the camera reaching behind it: its inner face straddles the near plane and is clipped.
        let (_, cov) = render_camera(&cam, &pose, &[cube(1.0, 2.0, 3.0)]);
        assert!(cov[0].covered > 0);
    }

    #[test]
    fn projected_area_matches_pinhole() {
        let (cam, pose) = front_camera();
        // A 2 m cube 11 m ahead: front face 10 m from the camera, 20 px wide and high.
        let (_, cov) = render_camera(&cam, &pose, &[cube(11.0, 0.0, 2.0)]);
        // Front face exactly 400 px; the top face is seen from 0.5 m above (a thin sliver).
        assert!(cov[0].covered >= 400 && cov[0].covered < 440, "{cov:?}");
    }

    #[test]
    fn styles_paint_category_patterns() {
        let base = [1.0, 0.0, 0.0];
        let side = [0.0, 1.0, 0.0];
        let top = [0.0, 0.0, 1.0];
        assert_eq!(Style::Plain.color(base, [0.0, 0.0, -0.4], side), base);
        // Vehicles: dark wheel band below, windows above, body colour between and on the roof.
        assert!(Style::Vehicle.color(base, [0.0, 0.5, -0.4], side)[0] < 0.2);
        assert!(
            Style::Vehicle.color(base, [0.0, 0.5, 0.3], side)[2]
                > Style::Vehicle.color(base, [0.0, 0.5, 0.3], side)[0]
        );
        assert_eq!(Style::Vehicle.color(base, [0.0, 0.5, 0.0], side), base);
        assert_eq!(Style::Vehicle.color(base, [0.0, 0.0, 0.5], top), base);
        // Pedestrians: legs, torso, head.
        let (legs, torso, head) = (
            Style::Pedestrian.color(base, [0.0, 0.0, -0.3], side),
            Style::Pedestrian.color(base, [0.0, 0.0, 0.2], side),
            Style::Pedestrian.color(base, [0.0, 0.0, 0.45], side),
        );
        assert!(legs != torso && torso == base && head != torso);
        // Cones: white band; barriers: alternating stripes across their width.
        assert_eq!(
            Style::Cone.color(base, [0.0, 0.0, 0.05], side),
            [0.95, 0.95, 0.95]
        );
        let stripes: Vec<_> = (0..6)
            .map(|i| Style::Barrier.color(base, [0.0, -0.5 + (i as f64 + 0.5) / 6.0, 0.0], side))
            .collect();
        assert!(stripes.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn lidar_hits_ground_and_box_surfaces() {
        let pose = Isometry3::from_parts(
            Translation3::new(0.0, 0.0, 1.8),
            UnitQuaternion::from_axis_angle(&Vector3::z_axis(), -std::f64::consts::FRAC_PI_2),
        );
        let solids = [cube(8.0, 0.0, 2.0)];
        let (pts, hits) = cast_lidar(&pose, &solids, &LidarSpec::default());
        assert!(hits[0] > 50, "{hits:?}");
        let mut on_box = 0;
        for p in &pts {
            let g = pose * Point3::new(p[0] as f64, p[1] as f64, p[2] as f64);
            let b = &solids[0].bbox;
            let local = g - b.center;
            let inside = local.iter().all(|v| v.abs() <= 1.0 + 1e-4);
            let on_face = local.iter().any(|v| (v.abs() - 1.0).abs() < 1e-4);
            if inside && on_face {
                on_box += 1;
            } else {
                assert!(
                    g.z.abs() < 1e-4,
                    "point neither on ground nor on the box: {g:?}"
                );
            }
        }
        assert!(on_box as u32 >= hits[0]);
        let bytes = pcd_bin(&pts);
        assert_eq!(parse_pcd_bin(&bytes).unwrap(), pts);
        assert!(parse_pcd_bin(&bytes[1..]).is_none());
    }
}
