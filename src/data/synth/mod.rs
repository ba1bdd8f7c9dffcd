//! The synthetic nuScenes-format generator behind `vlm3d synth`: scenes of a moving ego vehicle with a
//! nuScenes-like rig (six cameras, LIDAR_TOP) in a flat world of boxes of nuScenes categories, written in the
//! nuScenes v1.0 layout (`<out>/<version>/*.json`, `<out>/samples/CAM_*/*.jpg`,
//! `<out>/samples/LIDAR_TOP/*.pcd.bin`) that the devkit and [`crate::data::nuscenes::NuScenes`] read.
//!
//! Everything is drawn from one seeded ChaCha RNG, so a seed gives identical bytes on every run and machine.
//! The tables are written last (`scene.json` the very last, and an old one is removed first): an interrupted
//! run leaves no `scene.json`, which the reader rejects.
pub mod render;

use std::f64::consts::PI;
use std::path::Path;

use nalgebra::{Isometry3, Point3, Translation3, UnitQuaternion, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::nuscenes::{
    Attribute, CalibratedSensor, Category, EgoPose, Instance, Log, Map, Sample, SampleAnnotation,
    SampleData, Scene, Sensor, Tables, Visibility,
};
use crate::geometry::{OrientedBox3D, PinholeCamera};
use crate::perception::rig::{camera_rotation, lidar_rotation, Intrinsics, Rig};
use crate::{Error, Result};
use render::{cast_lidar, pcd_bin, render_camera, Coverage, LidarSpec, Solid, Style};

/// Options of the generator (the `vlm3d synth` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of scenes.
    pub scenes: usize,
    /// RNG seed: the same seed gives the same bytes.
    pub seed: u64,
    /// Image width, pixels (nuScenes: 1600).
    pub width: u32,
    /// Image height, pixels (nuScenes: 900).
    pub height: u32,
    /// Key frames per scene (2 Hz; nuScenes has about 40).
    pub samples_per_scene: usize,
    /// Objects placed per scene.
    pub objects_per_scene: usize,
    /// Table folder name, e.g. `v1.0-mini`.
    pub version: String,
    /// The LiDAR simulated for LIDAR_TOP.
    pub lidar: LidarSpec,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
    /// Also write non-key frames (`sweeps/`): cameras at 12 Hz, the LiDAR at 20 Hz between key frames.
    pub sweeps: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Give trailers, construction vehicles and bicycles surface patterns of their own (by default they share
    /// the car's and the motorcycle's patterns and differ by colour and shape only; off keeps every existing
    /// seed's bytes). The open-set recipe's held-out categories then each look unlike any trained one.
    pub distinct_looks: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            scenes: 2,
            seed: 0,
            width: 1600,
            height: 900,
            samples_per_scene: 10,
            objects_per_scene: 16,
            version: "v1.0-mini".into(),
            lidar: LidarSpec::default(),
            jpeg_quality: 90,
            sweeps: false,
            progress: false,
            distinct_looks: false,
        }
    }
}

/// What a run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynthSummary {
    /// Scenes written.
    pub scenes: usize,
    /// Samples (key frames) written.
    pub samples: usize,
    /// Annotations written.
    pub annotations: usize,
    /// Camera images written.
    pub images: usize,
    /// LiDAR points written in all `.pcd.bin` files.
    pub lidar_points: usize,
}

/// A spawnable category: nuScenes name, mean size (w, l, h), motion, look.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    size_wlh: [f64; 3],
    /// Relative spawn frequency.
    weight: f64,
    /// Speed range when moving, m/s; (0, 0) for things that never move.
    speed: (f64, f64),
    color: [f64; 3],
    reflectivity: f32,
    /// Attribute names (moving, static); "" for none.
    attrs: (&'static str, &'static str),
}

const KINDS: [Kind; 12] = [
    Kind {
        name: "vehicle.car",
        size_wlh: [1.95, 4.62, 1.73],
        weight: 5.0,
        speed: (2.0, 11.0),
        color: [0.75, 0.12, 0.10],
        reflectivity: 40.0,
        attrs: ("vehicle.moving", "vehicle.parked"),
    },
    Kind {
        name: "vehicle.truck",
        size_wlh: [2.52, 6.94, 2.84],
        weight: 1.0,
        speed: (2.0, 9.0),
        color: [0.15, 0.35, 0.75],
        reflectivity: 45.0,
        attrs: ("vehicle.moving", "vehicle.parked"),
    },
    Kind {
        name: "vehicle.bus.rigid",
        size_wlh: [2.95, 11.19, 3.49],
        weight: 0.5,
        speed: (2.0, 8.0),
        color: [0.95, 0.75, 0.10],
        reflectivity: 50.0,
        attrs: ("vehicle.moving", "vehicle.stopped"),
    },
    Kind {
        name: "vehicle.trailer",
        size_wlh: [2.90, 12.28, 3.87],
        weight: 0.3,
        speed: (0.0, 0.0),
        color: [0.55, 0.55, 0.58],
        reflectivity: 35.0,
        attrs: ("vehicle.moving", "vehicle.parked"),
    },
    Kind {
        name: "vehicle.construction",
        size_wlh: [2.82, 6.37, 3.19],
        weight: 0.3,
        speed: (0.0, 0.0),
        color: [0.98, 0.55, 0.05],
        reflectivity: 55.0,
        attrs: ("vehicle.moving", "vehicle.parked"),
    },
    Kind {
        name: "vehicle.motorcycle",
        size_wlh: [0.77, 2.11, 1.47],
        weight: 0.6,
        speed: (2.0, 9.0),
        color: [0.45, 0.10, 0.55],
        reflectivity: 30.0,
        attrs: ("cycle.with_rider", "cycle.without_rider"),
    },
    Kind {
        name: "vehicle.bicycle",
        size_wlh: [0.60, 1.70, 1.28],
        weight: 0.7,
        speed: (1.5, 5.0),
        color: [0.10, 0.60, 0.60],
        reflectivity: 20.0,
        attrs: ("cycle.with_rider", "cycle.without_rider"),
    },
    Kind {
        name: "human.pedestrian.adult",
        size_wlh: [0.67, 0.73, 1.77],
        weight: 3.0,
        speed: (0.8, 1.8),
        color: [0.20, 0.75, 0.20],
        reflectivity: 15.0,
        attrs: ("pedestrian.moving", "pedestrian.standing"),
    },
    Kind {
        name: "human.pedestrian.child",
        size_wlh: [0.51, 0.53, 1.38],
        weight: 0.4,
        speed: (0.6, 1.5),
        color: [0.60, 0.90, 0.30],
        reflectivity: 15.0,
        attrs: ("pedestrian.moving", "pedestrian.standing"),
    },
    Kind {
        name: "human.pedestrian.construction_worker",
        size_wlh: [0.68, 0.73, 1.79],
        weight: 0.4,
        speed: (0.5, 1.2),
        color: [0.85, 0.95, 0.10],
        reflectivity: 60.0,
        attrs: ("pedestrian.moving", "pedestrian.standing"),
    },
    Kind {
        name: "movable_object.trafficcone",
        size_wlh: [0.41, 0.41, 1.07],
        weight: 2.0,
        speed: (0.0, 0.0),
        color: [1.00, 0.40, 0.05],
        reflectivity: 70.0,
        attrs: ("", ""),
    },
    Kind {
        name: "movable_object.barrier",
        size_wlh: [2.53, 0.50, 0.98],
        weight: 2.0,
        speed: (0.0, 0.0),
        color: [0.90, 0.90, 0.88],
        reflectivity: 65.0,
        attrs: ("", ""),
    },
];

/// The surface pattern of a category; `distinct` gives trailers, construction vehicles and bicycles their own.
fn style_of(category: &str, distinct: bool) -> Style {
    match category {
        "vehicle.trailer" if distinct => Style::Trailer,
        "vehicle.construction" if distinct => Style::Construction,
        "vehicle.bicycle" if distinct => Style::Bicycle,
        "vehicle.motorcycle" | "vehicle.bicycle" => Style::Cycle,
        c if c.starts_with("vehicle.") => Style::Vehicle,
        c if c.starts_with("human.") => Style::Pedestrian,
        "movable_object.trafficcone" => Style::Cone,
        "movable_object.barrier" => Style::Barrier,
        _ => Style::Plain,
    }
}

/// nuScenes' 23 annotation categories with short descriptions (our wording).
const CATEGORIES: [(&str, &str); 23] = [
    ("human.pedestrian.adult", "Adult walking or standing."),
    ("human.pedestrian.child", "Child walking or standing."),
    ("human.pedestrian.wheelchair", "Person in a wheelchair."),
    (
        "human.pedestrian.stroller",
        "Stroller, with or without a child.",
    ),
    (
        "human.pedestrian.personal_mobility",
        "Person on a scooter, skateboard or similar.",
    ),
    ("human.pedestrian.police_officer", "Police officer on foot."),
    (
        "human.pedestrian.construction_worker",
        "Worker in a construction zone.",
    ),
    ("animal", "Animal of any size."),
    ("vehicle.car", "Passenger car, van, SUV or pick-up."),
    (
        "vehicle.motorcycle",
        "Motorcycle or moped, with or without rider.",
    ),
    ("vehicle.bicycle", "Bicycle, with or without rider."),
    ("vehicle.bus.bendy", "Articulated bus."),
    ("vehicle.bus.rigid", "Rigid bus."),
    ("vehicle.truck", "Vehicle built to carry cargo."),
    ("vehicle.construction", "Vehicle for construction work."),
    ("vehicle.emergency.ambulance", "Ambulance."),
    ("vehicle.emergency.police", "Police vehicle."),
    ("vehicle.trailer", "Trailer towed by another vehicle."),
    (
        "movable_object.barrier",
        "Temporary barrier delimiting traffic.",
    ),
    ("movable_object.trafficcone", "Traffic cone."),
    (
        "movable_object.pushable_pullable",
        "Cart, dolly or bin that people push or pull.",
    ),
    ("movable_object.debris", "Debris on the road."),
    ("static_object.bicycle_rack", "Rack for parking bicycles."),
];

/// nuScenes' eight attributes.
const ATTRIBUTES: [(&str, &str); 8] = [
    ("vehicle.moving", "Vehicle in motion."),
    (
        "vehicle.stopped",
        "Vehicle with a driver, standing still (at a light, in traffic).",
    ),
    (
        "vehicle.parked",
        "Vehicle parked, no driver expected to move it soon.",
    ),
    ("cycle.with_rider", "Bicycle or motorcycle with a rider."),
    (
        "cycle.without_rider",
        "Bicycle or motorcycle without a rider.",
    ),
    (
        "pedestrian.sitting_lying_down",
        "Pedestrian sitting or lying down.",
    ),
    ("pedestrian.standing", "Pedestrian standing still."),
    ("pedestrian.moving", "Pedestrian walking or running."),
];

/// nuScenes' four visibility bins (tokens "1".."4"): the visible fraction of an annotation over all images.
const VISIBILITIES: [(&str, &str, &str); 4] = [
    (
        "1",
        "v0-40",
        "0-40% of the object is visible in the images.",
    ),
    (
        "2",
        "v40-60",
        "40-60% of the object is visible in the images.",
    ),
    (
        "3",
        "v60-80",
        "60-80% of the object is visible in the images.",
    ),
    (
        "4",
        "v80-100",
        "80-100% of the object is visible in the images.",
    ),
];

const LOCATIONS: [&str; 4] = [
    "singapore-onenorth",
    "boston-seaport",
    "singapore-queenstown",
    "singapore-hollandvillage",
];

fn wxyz(q: &UnitQuaternion<f64>) -> [f64; 4] {
    let q = q.quaternion();
    // Keep w ≥ 0 (nuScenes' convention for its tables) so a rotation has one spelling.
    if q.w < 0.0 {
        [-q.w, -q.i, -q.j, -q.k]
    } else {
        [q.w, q.i, q.j, q.k]
    }
}

/// Planar motion with constant speed and turn rate from a start pose.
#[derive(Debug, Clone, Copy)]
struct Track {
    start: [f64; 2],
    heading: f64,
    speed: f64,
    turn_rate: f64,
}

impl Track {
    /// (x, y, heading) after `t` seconds.
    fn at(&self, t: f64) -> (f64, f64, f64) {
        let h = self.heading + self.turn_rate * t;
        let (x, y) = if self.turn_rate.abs() < 1e-9 {
            (
                self.start[0] + self.speed * t * self.heading.cos(),
                self.start[1] + self.speed * t * self.heading.sin(),
            )
        } else {
            let r = self.speed / self.turn_rate;
            (
                self.start[0] + r * (h.sin() - self.heading.sin()),
                self.start[1] - r * (h.cos() - self.heading.cos()),
            )
        };
        (x, y, h)
    }
}

struct Object {
    kind: &'static Kind,
    size_lwh: [f64; 3],
    track: Track,
    moving: bool,
}

impl Object {
    fn bbox(&self, t: f64) -> OrientedBox3D {
        let (x, y, h) = self.track.at(t);
        OrientedBox3D {
            center: Point3::new(x, y, self.size_lwh[2] / 2.0),
            size: self.size_lwh,
            rotation: UnitQuaternion::from_axis_angle(&Vector3::z_axis(), h),
        }
    }

    fn radius(&self) -> f64 {
        0.5 * self.size_lwh[0].hypot(self.size_lwh[1])
    }
}

/// Deterministic 32-hex-digit tokens like nuScenes'.
struct Tokens(ChaCha8Rng);

impl Tokens {
    fn next(&mut self) -> String {
        format!("{:032x}", self.0.random::<u128>())
    }
}

const SAMPLE_PERIOD_US: i64 = 500_000;
const EGO_RADIUS: f64 = 2.6;

fn pick_kind(rng: &mut ChaCha8Rng) -> &'static Kind {
    let total: f64 = KINDS.iter().map(|k| k.weight).sum();
    let mut r = rng.random::<f64>() * total;
    for k in &KINDS {
        if r < k.weight {
            return k;
        }
        r -= k.weight;
    }
    &KINDS[0]
}

fn place_objects(rng: &mut ChaCha8Rng, ego: &Track, times: &[f64], n: usize) -> Vec<Object> {
    let mut objects: Vec<Object> = Vec::new();
    let mut attempts = 0;
    while objects.len() < n && attempts < n * 200 {
        attempts += 1;
        let kind = pick_kind(rng);
        let scale = rng.random_range(0.9..1.1);
        let [w, l, h] = kind.size_wlh;
        let size_lwh = [l * scale, w * scale, h * rng.random_range(0.95..1.05)];
        let moving = kind.speed.1 > 0.0 && rng.random_bool(0.5);
        let (ex, ey, eh) = ego.at(times[rng.random_range(0..times.len())]);
        let r = rng.random_range(5.0..45.0);
        let bearing = rng.random_range(-PI..PI);
        let start = [ex + r * bearing.cos(), ey + r * bearing.sin()];
        let heading = if moving && kind.name.starts_with("vehicle") {
            eh + if rng.random_bool(0.5) { 0.0 } else { PI } + rng.random_range(-0.2..0.2)
        } else {
            rng.random_range(-PI..PI)
        };
        let (speed, turn_rate) = if moving {
            (
                rng.random_range(kind.speed.0..kind.speed.1),
                rng.random_range(-0.1..0.1),
            )
        } else {
            (0.0, 0.0)
        };
        // Place the track so that it passes `start` at the middle of the scene.
        let mid = times[times.len() / 2];
        let probe = Track {
            start: [0.0, 0.0],
            heading,
            speed,
            turn_rate,
        };
        let (dx, dy, _) = probe.at(mid);
        let track = Track {
            start: [start[0] - dx, start[1] - dy],
            heading,
            speed,
            turn_rate,
        };
        let candidate = Object {
            kind,
            size_lwh,
            track,
            moving,
        };
        let clear = times.iter().all(|&t| {
            let (x, y, _) = candidate.track.at(t);
            let (ex, ey, _) = ego.at(t);
            let ok_ego = (x - ex).hypot(y - ey) > candidate.radius() + EGO_RADIUS + 1.0;
            ok_ego
                && objects.iter().all(|o| {
                    let (ox, oy, _) = o.track.at(t);
                    (x - ox).hypot(y - oy) > candidate.radius() + o.radius() + 0.3
                })
        });
        if clear {
            objects.push(candidate);
        }
    }
    objects
}

/// Calibration of one sensor for one scene (small per-log jitter around the rig's nominal mounting).
struct Calib {
    sensor: usize,
    to_ego: Isometry3<f64>,
    camera: Option<PinholeCamera>,
    token: String,
}

fn calibrate(rng: &mut ChaCha8Rng, cfg: &SynthConfig, tokens: &mut Tokens) -> Result<Vec<Calib>> {
    let (sx, sy) = (cfg.width as f64 / 1600.0, cfg.height as f64 / 900.0);
    let mut out = Vec::new();
    for (i, s) in Rig::nuscenes().sensors().iter().enumerate() {
        let mut j = |a: f64| rng.random_range(-a..a);
        let t = Translation3::new(
            s.translation[0] + j(0.02),
            s.translation[1] + j(0.02),
            s.translation[2] + j(0.02),
        );
        let (dyaw, dpitch, droll) = (j(0.01), j(0.01), j(0.005));
        let (rotation, camera) = match s.intrinsics {
            Some(Intrinsics { fx: f, cx, cy }) => {
                let f = f * (1.0 + j(0.01));
                let k = [
                    [f * sx, 0.0, cx * sx],
                    [0.0, f * sy, cy * sy],
                    [0.0, 0.0, 1.0],
                ];
                (
                    camera_rotation(s.yaw + dyaw, dpitch, droll),
                    Some(PinholeCamera::from_rows(k, cfg.width, cfg.height)?),
                )
            }
            None => (
                lidar_rotation(s.yaw + dyaw)
                    * UnitQuaternion::from_euler_angles(droll, dpitch, 0.0),
                None,
            ),
        };
        out.push(Calib {
            sensor: i,
            to_ego: Isometry3::from_parts(t, rotation),
            camera,
            token: tokens.next(),
        });
    }
    Ok(out)
}

fn visibility_token(cov: &[Coverage]) -> &'static str {
    let covered: u64 = cov.iter().map(|c| c.covered).sum();
    let visible: u64 = cov.iter().map(|c| c.visible).sum();
    if covered == 0 {
        return "1";
    }
    match visible as f64 / covered as f64 {
        f if f < 0.4 => "1",
        f if f < 0.6 => "2",
        f if f < 0.8 => "3",
        _ => "4",
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn encode_jpeg(img: &image::RgbImage, quality: u8, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(img)
        .map_err(|e| Error::format(path, None, format!("JPEG encoding failed: {e}")))?;
    Ok(buf)
}

/// Generates a synthetic dataset under `out` (created if needed) and returns what it wrote.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    if cfg.scenes == 0 || cfg.samples_per_scene == 0 {
        return Err(Error::invalid(
            "synth config",
            "need at least one scene and one sample per scene",
        ));
    }
    if cfg.width < 16 || cfg.height < 16 {
        return Err(Error::invalid(
            "synth image size",
            format!("{}x{} is too small (min 16x16)", cfg.width, cfg.height),
        ));
    }
    if cfg.version.is_empty() || cfg.version.contains(['/', '\\']) || cfg.version.starts_with('.') {
        return Err(Error::invalid(
            "synth version",
            format!("`{}` is not a plain folder name", cfg.version),
        ));
    }
    if !(1..=100).contains(&cfg.jpeg_quality) {
        return Err(Error::invalid(
            "jpeg quality",
            format!("{} is not in 1..=100", cfg.jpeg_quality),
        ));
    }
    // A dataset already at `out` stops being one until this run completes (scene.json is written last).
    let old_scene = out.join(&cfg.version).join("scene.json");
    if old_scene.exists() {
        std::fs::remove_file(&old_scene).map_err(|e| Error::io(&old_scene, e))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut tokens = Tokens(ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15));
    let mut t = Tables::default();
    let mut summary = SynthSummary::default();

    for (name, description) in CATEGORIES {
        t.category.push(Category {
            token: tokens.next(),
            name: name.into(),
            description: description.into(),
            index: None,
        });
    }
    for (name, description) in ATTRIBUTES {
        t.attribute.push(Attribute {
            token: tokens.next(),
            name: name.into(),
            description: description.into(),
        });
    }
    for (token, level, description) in VISIBILITIES {
        t.visibility.push(Visibility {
            token: token.into(),
            level: level.into(),
            description: description.into(),
        });
    }
    for s in &Rig::nuscenes().sensors() {
        let modality = if s.intrinsics.is_some() {
            "camera"
        } else {
            "lidar"
        };
        t.sensor.push(Sensor {
            token: tokens.next(),
            channel: s.channel.clone(),
            modality: modality.into(),
        });
    }
    let category_token = |name: &str, t: &Tables| {
        t.category
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.token.clone())
    };
    let attribute_token = |name: &str, t: &Tables| {
        t.attribute
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.token.clone())
    };

    let bar = crate::data::progress_bar(
        cfg.progress,
        (cfg.scenes * cfg.samples_per_scene) as u64,
        "{spinner} synth [{elapsed_precise}] {wide_bar} {pos}/{len} samples ({per_sec}, eta {eta})",
    );

    let base_time: i64 = 1_600_000_000_000_000 + (cfg.seed % 1000) as i64 * 86_400_000_000;
    for scene_i in 0..cfg.scenes {
        let location = LOCATIONS[rng.random_range(0..LOCATIONS.len())];
        let log = Log {
            token: tokens.next(),
            logfile: format!("synth-s{}-{scene_i:04}", cfg.seed),
            vehicle: "synth".into(),
            date_captured: "2026-11-25".into(),
            location: location.into(),
        };
        let calibs = calibrate(&mut rng, cfg, &mut tokens)?;
        for c in &calibs {
            let camera_intrinsic = c
                .camera
                .map(|cam| {
                    (0..3)
                        .map(|r| (0..3).map(|col| cam.k()[(r, col)]).collect())
                        .collect()
                })
                .unwrap_or_default();
            t.calibrated_sensor.push(CalibratedSensor {
                token: c.token.clone(),
                sensor_token: t.sensor[c.sensor].token.clone(),
                translation: c.to_ego.translation.vector.into(),
                rotation: wxyz(&c.to_ego.rotation),
                camera_intrinsic,
            });
        }
        let ego = Track {
            start: [
                rng.random_range(300.0..1700.0),
                rng.random_range(300.0..1700.0),
            ],
            heading: rng.random_range(-PI..PI),
            speed: if rng.random_bool(0.15) {
                0.0
            } else {
                rng.random_range(2.0..10.0)
            },
            turn_rate: rng.random_range(-0.06..0.06),
        };
        let times: Vec<f64> = (0..cfg.samples_per_scene)
            .map(|k| k as f64 * SAMPLE_PERIOD_US as f64 * 1e-6)
            .collect();
        let objects = place_objects(&mut rng, &ego, &times, cfg.objects_per_scene);
        let scene_start = base_time
            + scene_i as i64 * (cfg.samples_per_scene as i64 * SAMPLE_PERIOD_US + 30_000_000);
        let scene_token = tokens.next();
        let sample_tokens: Vec<String> =
            (0..cfg.samples_per_scene).map(|_| tokens.next()).collect();
        let instance_tokens: Vec<String> = objects.iter().map(|_| tokens.next()).collect();
        let ann_tokens: Vec<Vec<String>> = (0..cfg.samples_per_scene)
            .map(|_| objects.iter().map(|_| tokens.next()).collect())
            .collect();
        let sd_first = t.sample_data.len();

        for (k, &time) in times.iter().enumerate() {
            let timestamp = scene_start + k as i64 * SAMPLE_PERIOD_US;
            let all: Vec<&Calib> = calibs.iter().collect();
            let cap = capture(
                out,
                cfg,
                &log.logfile,
                "samples",
                &all,
                &objects,
                &ego,
                time,
                timestamp,
            )?;
            let boxes: Vec<OrientedBox3D> = objects.iter().map(|o| o.bbox(time)).collect();
            summary.images += cap.images;
            summary.lidar_points += cap.points;
            for (c, filename) in &cap.files {
                push_sample_data(
                    &mut t,
                    &mut tokens,
                    c,
                    &sample_tokens[k],
                    timestamp,
                    &cap.ego_to_global,
                    filename,
                    true,
                    cfg,
                );
            }
            let coverage = cap.coverage;
            let lidar_hits = cap.lidar_hits.unwrap_or_else(|| vec![0; objects.len()]);
            // Sweeps (non-key frames) up to the next key frame, which they belong to as in nuScenes.
            if cfg.sweeps && k + 1 < times.len() {
                for (offset_us, cameras) in sweep_schedule() {
                    let sensors: Vec<&Calib> = calibs
                        .iter()
                        .filter(|c| c.camera.is_some() == cameras)
                        .collect();
                    let ts = timestamp + offset_us;
                    let tt = time + offset_us as f64 * 1e-6;
                    let sweep = capture(
                        out,
                        cfg,
                        &log.logfile,
                        "sweeps",
                        &sensors,
                        &objects,
                        &ego,
                        tt,
                        ts,
                    )?;
                    summary.images += sweep.images;
                    summary.lidar_points += sweep.points;
                    for (c, filename) in &sweep.files {
                        push_sample_data(
                            &mut t,
                            &mut tokens,
                            c,
                            &sample_tokens[k + 1],
                            ts,
                            &sweep.ego_to_global,
                            filename,
                            false,
                            cfg,
                        );
                    }
                }
            }

            t.sample.push(Sample {
                token: sample_tokens[k].clone(),
                timestamp,
                prev: if k == 0 {
                    String::new()
                } else {
                    sample_tokens[k - 1].clone()
                },
                next: sample_tokens.get(k + 1).cloned().unwrap_or_default(),
                scene_token: scene_token.clone(),
            });
            for (i, (o, b)) in objects.iter().zip(&boxes).enumerate() {
                let attr = if o.moving {
                    o.kind.attrs.0
                } else {
                    o.kind.attrs.1
                };
                t.sample_annotation.push(SampleAnnotation {
                    token: ann_tokens[k][i].clone(),
                    sample_token: sample_tokens[k].clone(),
                    instance_token: instance_tokens[i].clone(),
                    visibility_token: visibility_token(&coverage[i]).into(),
                    attribute_tokens: attribute_token(attr, &t).into_iter().collect(),
                    translation: b.center.coords.into(),
                    size: [b.size[1], b.size[0], b.size[2]],
                    rotation: wxyz(&b.rotation),
                    prev: if k == 0 {
                        String::new()
                    } else {
                        ann_tokens[k - 1][i].clone()
                    },
                    next: ann_tokens
                        .get(k + 1)
                        .map(|a| a[i].clone())
                        .unwrap_or_default(),
                    num_lidar_pts: lidar_hits[i] as i64,
                    num_radar_pts: 0,
                });
                summary.annotations += 1;
            }
            summary.samples += 1;
            bar.inc(1);
        }
        link_sample_data(&mut t.sample_data[sd_first..]);
        for (i, o) in objects.iter().enumerate() {
            t.instance.push(Instance {
                token: instance_tokens[i].clone(),
                category_token: category_token(o.kind.name, &t).unwrap_or_default(),
                nbr_annotations: cfg.samples_per_scene as u32,
                first_annotation_token: ann_tokens[0][i].clone(),
                last_annotation_token: ann_tokens[cfg.samples_per_scene - 1][i].clone(),
            });
        }
        t.scene.push(Scene {
            token: scene_token,
            log_token: log.token.clone(),
            nbr_samples: cfg.samples_per_scene as u32,
            first_sample_token: sample_tokens[0].clone(),
            last_sample_token: sample_tokens[cfg.samples_per_scene - 1].clone(),
            name: format!("scene-{:04}", scene_i + 1),
            description: format!(
                "Synthetic (seed {}), {} objects, ego {:.1} m/s, {location}",
                cfg.seed,
                objects.len(),
                ego.speed
            ),
        });
        t.log.push(log);
        summary.scenes += 1;
    }
    for location in LOCATIONS {
        // The devkit opens a semantic-prior mask per map record at load; ours is a small all-drivable
        // placeholder (255 = drivable) since the synthetic world is an open plane.
        let filename = format!("maps/synth-{location}.png");
        let mut png = Vec::new();
        image::GrayImage::from_pixel(256, 256, image::Luma([255u8]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| {
                Error::format(
                    out.join(&filename),
                    None,
                    format!("PNG encoding failed: {e}"),
                )
            })?;
        write_file(&out.join(&filename), &png)?;
        t.map.push(Map {
            token: tokens.next(),
            log_tokens: t
                .log
                .iter()
                .filter(|l| l.location == location)
                .map(|l| l.token.clone())
                .collect(),
            category: "semantic_prior".into(),
            filename,
        });
    }
    t.write(&out.join(&cfg.version))?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Offsets (µs after a key frame) and sensor kind (cameras or not) of the sweeps before the next key frame:
/// cameras at 12 Hz and the LiDAR at 20 Hz, like nuScenes.
fn sweep_schedule() -> Vec<(i64, bool)> {
    let mut v: Vec<(i64, bool)> = (1..6).map(|j| (j * SAMPLE_PERIOD_US / 6, true)).collect();
    v.extend((1..10).map(|j| (j * SAMPLE_PERIOD_US / 10, false)));
    v.sort();
    v
}

/// What one capture of some sensors at one instant wrote.
struct Capture<'a> {
    ego_to_global: Isometry3<f64>,
    /// Sensor and the file written for it (relative to the dataroot).
    files: Vec<(&'a Calib, String)>,
    /// Per object, its coverage in each camera captured.
    coverage: Vec<Vec<Coverage>>,
    /// Per object, LiDAR returns on it (when the LiDAR was captured).
    lidar_hits: Option<Vec<u32>>,
    images: usize,
    points: usize,
}

/// Renders the cameras (in parallel, one thread each) and casts the LiDAR among `sensors` at time `time` (s),
/// writing `<dir>/<CHANNEL>/<log>__<CHANNEL>__<timestamp>.{jpg,pcd.bin}`.
#[allow(clippy::too_many_arguments)]
fn capture<'a>(
    out: &Path,
    cfg: &SynthConfig,
    logfile: &str,
    dir: &str,
    sensors: &[&'a Calib],
    objects: &[Object],
    ego: &Track,
    time: f64,
    timestamp: i64,
) -> Result<Capture<'a>> {
    let (ex, ey, eh) = ego.at(time);
    let ego_to_global = Isometry3::from_parts(
        Translation3::new(ex, ey, 0.0),
        UnitQuaternion::from_axis_angle(&Vector3::z_axis(), eh),
    );
    let solids: Vec<Solid> = objects
        .iter()
        .map(|o| Solid {
            bbox: o.bbox(time),
            color: o.kind.color,
            style: style_of(o.kind.name, cfg.distinct_looks),
            reflectivity: o.kind.reflectivity,
        })
        .collect();
    let cams: Vec<(&Calib, Isometry3<f64>)> = sensors
        .iter()
        .filter(|c| c.camera.is_some())
        .map(|c| (*c, ego_to_global * c.to_ego))
        .collect();
    let lidar = sensors.iter().find(|c| c.camera.is_none());
    let (rendered, lidar_out) = std::thread::scope(|sc| {
        let handles: Vec<_> = cams
            .iter()
            .map(|(c, pose)| {
                let solids = &solids;
                sc.spawn(move || {
                    let cam = c.camera.as_ref().expect("filtered to cameras");
                    render_camera(cam, pose, solids)
                })
            })
            .collect();
        let lidar_out = lidar.map(|c| cast_lidar(&(ego_to_global * c.to_ego), &solids, &cfg.lidar));
        let rendered: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("render thread panicked"))
            .collect();
        (rendered, lidar_out)
    });
    let mut cap = Capture {
        ego_to_global,
        files: Vec::new(),
        coverage: vec![Vec::new(); objects.len()],
        lidar_hits: None,
        images: 0,
        points: 0,
    };
    for ((c, _), (img, cov)) in cams.iter().zip(rendered) {
        let channel = &Rig::nuscenes().sensors()[c.sensor].channel;
        let filename = format!("{dir}/{channel}/{logfile}__{channel}__{timestamp}.jpg");
        let path = out.join(&filename);
        let bytes = encode_jpeg(&img, cfg.jpeg_quality, &path)?;
        write_file(&path, &bytes)?;
        cap.images += 1;
        for (i, cv) in cov.into_iter().enumerate() {
            cap.coverage[i].push(cv);
        }
        cap.files.push((c, filename));
    }
    if let (Some(c), Some((points, hits))) = (lidar, lidar_out) {
        let channel = &Rig::nuscenes().sensors()[c.sensor].channel;
        let filename = format!("{dir}/{channel}/{logfile}__{channel}__{timestamp}.pcd.bin");
        write_file(&out.join(&filename), &pcd_bin(&points))?;
        cap.points += points.len();
        cap.lidar_hits = Some(hits);
        cap.files.push((c, filename));
    }
    Ok(cap)
}

#[allow(clippy::too_many_arguments)]
fn push_sample_data(
    t: &mut Tables,
    tokens: &mut Tokens,
    c: &Calib,
    sample_token: &str,
    timestamp: i64,
    ego_to_global: &Isometry3<f64>,
    filename: &str,
    is_key_frame: bool,
    cfg: &SynthConfig,
) {
    // One ego_pose per sample_data, as in nuScenes.
    let pose = EgoPose {
        token: tokens.next(),
        timestamp,
        rotation: wxyz(&ego_to_global.rotation),
        translation: ego_to_global.translation.vector.into(),
    };
    let camera = c.camera.is_some();
    t.sample_data.push(SampleData {
        token: tokens.next(),
        sample_token: sample_token.into(),
        ego_pose_token: pose.token.clone(),
        calibrated_sensor_token: c.token.clone(),
        timestamp,
        fileformat: if camera { "jpg" } else { "pcd" }.into(),
        is_key_frame,
        height: if camera { cfg.height } else { 0 },
        width: if camera { cfg.width } else { 0 },
        filename: filename.into(),
        prev: String::new(),
        next: String::new(),
    });
    t.ego_pose.push(pose);
}

/// Fills prev/next of one scene's sample_data: a chain per calibrated sensor in time order.
fn link_sample_data(sds: &mut [SampleData]) {
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for i in 0..sds.len() {
        if let Some(&j) = last.get(&sds[i].calibrated_sensor_token) {
            sds[i].prev = sds[j].token.clone();
            sds[j].next = sds[i].token.clone();
        }
        last.insert(sds[i].calibrated_sensor_token.clone(), i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rig_rotations_match_nuscenes_axes() {
        // CAM_FRONT: nuScenes' rotation is about (0.5, -0.5, 0.5, -0.5).
        let q = wxyz(&camera_rotation(0.0, 0.0, 0.0));
        for (a, b) in q.iter().zip([0.5, -0.5, 0.5, -0.5]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        // Camera z (forward) of CAM_BACK_LEFT points back-left; camera y points down.
        let r = camera_rotation(110f64.to_radians(), 0.0, 0.0);
        let fwd = r * Vector3::z();
        assert!((fwd.x - 110f64.to_radians().cos()).abs() < 1e-12 && fwd.y > 0.9);
        assert!(((r * Vector3::y()) - Vector3::new(0.0, 0.0, -1.0)).norm() < 1e-12);
        // LiDAR: x right (-y ego), y forward (+x ego).
        let l = lidar_rotation(0.0);
        assert!(((l * Vector3::x()) - Vector3::new(0.0, -1.0, 0.0)).norm() < 1e-12);
        assert!(((l * Vector3::y()) - Vector3::new(1.0, 0.0, 0.0)).norm() < 1e-12);
        let q = wxyz(&l);
        assert!(
            (q[0] - 0.5f64.sqrt()).abs() < 1e-12 && (q[3] + 0.5f64.sqrt()).abs() < 1e-12,
            "{q:?}"
        );
    }

    #[test]
    fn track_is_continuous_and_turns() {
        let tr = Track {
            start: [1.0, 2.0],
            heading: 0.3,
            speed: 5.0,
            turn_rate: 0.1,
        };
        let straight = Track {
            turn_rate: 0.0,
            ..tr
        };
        let (x0, y0, _) = tr.at(0.0);
        assert!((x0 - 1.0).abs() < 1e-12 && (y0 - 2.0).abs() < 1e-12);
        // Arc length equals speed × time.
        let (mut px, mut py, mut len) = (x0, y0, 0.0);
        for i in 1..=1000 {
            let (x, y, _) = tr.at(i as f64 * 0.01);
            len += (x - px).hypot(y - py);
            (px, py) = (x, y);
        }
        assert!((len - 50.0).abs() < 1e-3, "{len}");
        let (xs, ys, hs) = straight.at(2.0);
        assert!(
            (xs - (1.0 + 10.0 * 0.3f64.cos())).abs() < 1e-12
                && (ys - (2.0 + 10.0 * 0.3f64.sin())).abs() < 1e-12
        );
        assert_eq!(hs, 0.3);
    }

    #[test]
    fn visibility_bins() {
        let c = |covered, visible| Coverage { covered, visible };
        assert_eq!(visibility_token(&[]), "1");
        assert_eq!(visibility_token(&[c(100, 10)]), "1");
        assert_eq!(visibility_token(&[c(50, 25), c(50, 25)]), "2");
        assert_eq!(visibility_token(&[c(100, 70)]), "3");
        assert_eq!(visibility_token(&[c(100, 100), c(0, 0)]), "4");
    }

    #[test]
    fn distinct_looks_are_opt_in_and_unlike_the_trained_patterns() {
        // Off: every category keeps its old pattern (existing seeds' bytes do not change).
        for k in &KINDS {
            let old = match k.name {
                "vehicle.motorcycle" | "vehicle.bicycle" => Style::Cycle,
                c if c.starts_with("vehicle.") => Style::Vehicle,
                c if c.starts_with("human.") => Style::Pedestrian,
                "movable_object.trafficcone" => Style::Cone,
                "movable_object.barrier" => Style::Barrier,
                _ => Style::Plain,
            };
            assert_eq!(style_of(k.name, false), old, "{}", k.name);
        }
        // On: the held-out categories of config/train_holdout.yaml each have a pattern no other category has.
        for held in [
            "vehicle.trailer",
            "vehicle.construction",
            "vehicle.bicycle",
            "movable_object.barrier",
        ] {
            let s = style_of(held, true);
            for k in KINDS.iter().filter(|k| k.name != held) {
                assert_ne!(style_of(k.name, true), s, "{held} looks like {}", k.name);
            }
        }
    }
}
