//! The nuScenes v1.0 tables: serde records with the field names of nuScenes' JSON, a loader that indexes and
//! validates them ([`NuScenes::load`]), the look-ups a converter needs (scenes, samples in time order,
//! key-frame sample_data per channel, poses and calibrations as isometries, annotation boxes), and a writer
//! ([`Tables::write`]) used by the synthetic generator.
//!
//! Every failure names the table file and, when known, the record token (`sample_annotation.json (token …):
//! zero quaternion`); nothing here panics on bad input.
pub mod scene_split;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nalgebra::Isometry3;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::geometry::{isometry_from_nuscenes, OrientedBox3D, PinholeCamera};
use crate::{Error, Result};

/// A table record: its token and the table (file stem) it lives in.
pub trait Record: Serialize + DeserializeOwned {
    /// The table name, i.e. the JSON file stem (`sample_annotation` for `sample_annotation.json`).
    const TABLE: &'static str;
    /// The record's unique token.
    fn token(&self) -> &str;
}

macro_rules! record {
    ($ty:ident, $table:literal) => {
        impl Record for $ty {
            const TABLE: &'static str = $table;
            fn token(&self) -> &str {
                &self.token
            }
        }
    };
}

/// `scene.json`: a 20 s sequence of one log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Unique token.
    pub token: String,
    /// The log it was taken from.
    pub log_token: String,
    /// Number of samples (key frames).
    pub nbr_samples: u32,
    /// First sample of the scene.
    pub first_sample_token: String,
    /// Last sample of the scene.
    pub last_sample_token: String,
    /// Name such as `scene-0061`.
    pub name: String,
    /// Free-text description.
    pub description: String,
}
record!(Scene, "scene");

/// `sample.json`: a key frame (annotated at about 2 Hz).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unique token.
    pub token: String,
    /// Microseconds since the Unix epoch.
    pub timestamp: i64,
    /// Previous sample of the scene, `""` for the first.
    pub prev: String,
    /// Next sample of the scene, `""` for the last.
    pub next: String,
    /// The scene it belongs to.
    pub scene_token: String,
}
record!(Sample, "sample");

/// `sample_data.json`: one sensor reading (an image or a point cloud file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleData {
    /// Unique token.
    pub token: String,
    /// The sample it belongs to (the closest key frame for non-key frames).
    pub sample_token: String,
    /// The ego pose at its timestamp.
    pub ego_pose_token: String,
    /// The calibration of its sensor.
    pub calibrated_sensor_token: String,
    /// Microseconds since the Unix epoch.
    pub timestamp: i64,
    /// `jpg`, `pcd`, …
    pub fileformat: String,
    /// Whether it is the key frame of its sample.
    pub is_key_frame: bool,
    /// Image height in pixels (0 for non-images).
    pub height: u32,
    /// Image width in pixels (0 for non-images).
    pub width: u32,
    /// Path relative to the dataroot, e.g. `samples/CAM_FRONT/….jpg`.
    pub filename: String,
    /// Previous reading of the same sensor, `""` for the first.
    pub prev: String,
    /// Next reading of the same sensor, `""` for the last.
    pub next: String,
}
record!(SampleData, "sample_data");

/// `ego_pose.json`: the vehicle's pose in the global (map) frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgoPose {
    /// Unique token.
    pub token: String,
    /// Microseconds since the Unix epoch.
    pub timestamp: i64,
    /// Ego → global rotation, (w, x, y, z).
    pub rotation: [f64; 4],
    /// Ego origin in the global frame, metres.
    pub translation: [f64; 3],
}
record!(EgoPose, "ego_pose");

/// `calibrated_sensor.json`: a sensor's extrinsics (sensor → ego) and, for cameras, intrinsics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedSensor {
    /// Unique token.
    pub token: String,
    /// The sensor calibrated.
    pub sensor_token: String,
    /// Sensor origin in the ego frame, metres.
    pub translation: [f64; 3],
    /// Sensor → ego rotation, (w, x, y, z).
    pub rotation: [f64; 4],
    /// Row-major 3×3 intrinsic matrix for cameras; empty for other sensors.
    pub camera_intrinsic: Vec<Vec<f64>>,
}
record!(CalibratedSensor, "calibrated_sensor");

/// `sensor.json`: a sensor of the rig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    /// Unique token.
    pub token: String,
    /// Channel name such as `CAM_FRONT` or `LIDAR_TOP`.
    pub channel: String,
    /// `camera`, `lidar` or `radar`.
    pub modality: String,
}
record!(Sensor, "sensor");

/// `sample_annotation.json`: one 3D box of one object instance at one sample, in the global frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleAnnotation {
    /// Unique token.
    pub token: String,
    /// The sample annotated.
    pub sample_token: String,
    /// The object instance.
    pub instance_token: String,
    /// Visibility level token (`"1"` … `"4"` in nuScenes).
    pub visibility_token: String,
    /// Attribute tokens.
    pub attribute_tokens: Vec<String>,
    /// Box centre in the global frame, metres.
    pub translation: [f64; 3],
    /// Box size in nuScenes' **(w, l, h)** order, metres.
    pub size: [f64; 3],
    /// Box → global rotation, (w, x, y, z).
    pub rotation: [f64; 4],
    /// Previous annotation of the same instance, `""` for the first.
    pub prev: String,
    /// Next annotation of the same instance, `""` for the last.
    pub next: String,
    /// Number of LiDAR points inside the box.
    pub num_lidar_pts: i64,
    /// Number of radar points inside the box.
    pub num_radar_pts: i64,
}
record!(SampleAnnotation, "sample_annotation");

/// `instance.json`: an object tracked across samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique token.
    pub token: String,
    /// Its category.
    pub category_token: String,
    /// Number of annotations.
    pub nbr_annotations: u32,
    /// First annotation of the track.
    pub first_annotation_token: String,
    /// Last annotation of the track.
    pub last_annotation_token: String,
}
record!(Instance, "instance");

/// `category.json`: an object category such as `vehicle.car`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// Unique token.
    pub token: String,
    /// Dotted name, e.g. `human.pedestrian.adult`.
    pub name: String,
    /// Free-text description.
    pub description: String,
    /// lidarseg class index (present in newer releases of the tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}
record!(Category, "category");

/// `attribute.json`: a property of an instance that can change over time (`vehicle.moving`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    /// Unique token.
    pub token: String,
    /// Dotted name.
    pub name: String,
    /// Free-text description.
    pub description: String,
}
record!(Attribute, "attribute");

/// `visibility.json`: the fraction of an annotation visible in the six images, in four bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visibility {
    /// Unique token (`"1"` … `"4"` in nuScenes).
    pub token: String,
    /// Bin such as `v80-100`.
    pub level: String,
    /// Free-text description.
    pub description: String,
}
record!(Visibility, "visibility");

/// `log.json`: a recording session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Unique token.
    pub token: String,
    /// Log file name.
    pub logfile: String,
    /// Vehicle name.
    pub vehicle: String,
    /// Date, `YYYY-MM-DD`.
    pub date_captured: String,
    /// Location such as `singapore-onenorth`.
    pub location: String,
}
record!(Log, "log");

/// `map.json`: a semantic map raster and the logs recorded on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Map {
    /// Unique token.
    pub token: String,
    /// Logs recorded on this map.
    pub log_tokens: Vec<String>,
    /// Map category, e.g. `semantic_prior`.
    pub category: String,
    /// Raster path relative to the dataroot.
    pub filename: String,
}
record!(Map, "map");

/// All tables of a nuScenes version, as plain vectors in file order. Build one in memory and [`Tables::write`]
/// it, or read one with [`Tables::read`].
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct Tables {
    pub scene: Vec<Scene>,
    pub sample: Vec<Sample>,
    pub sample_data: Vec<SampleData>,
    pub ego_pose: Vec<EgoPose>,
    pub calibrated_sensor: Vec<CalibratedSensor>,
    pub sensor: Vec<Sensor>,
    pub sample_annotation: Vec<SampleAnnotation>,
    pub instance: Vec<Instance>,
    pub category: Vec<Category>,
    pub attribute: Vec<Attribute>,
    pub visibility: Vec<Visibility>,
    pub log: Vec<Log>,
    /// Optional on reading (an absent `map.json` reads as empty); the devkit needs it.
    pub map: Vec<Map>,
}

/// Opens `<dir>/<table>.json`; `None` for an absent optional table, an error naming the table otherwise.
pub(crate) fn open_table<T: Record>(
    dir: &Path,
    optional: bool,
) -> Result<Option<(PathBuf, std::fs::File)>> {
    let path = table_path::<T>(dir);
    match std::fs::File::open(&path) {
        Ok(f) => Ok(Some((path, f))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if optional {
                return Ok(None);
            }
            Err(Error::format(
                path,
                None,
                format!("missing table `{}`", T::TABLE),
            ))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn read_table<T: Record>(dir: &Path, optional: bool) -> Result<Vec<T>> {
    use std::io::Read;
    let Some((path, mut file)) = open_table::<T>(dir, optional)? else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, None, format!("not a {} table: {e}", T::TABLE)))
}

/// `<dataroot>/<version>`, or an error when there is no such folder.
pub(crate) fn version_dir(dataroot: &Path, version: &str) -> Result<PathBuf> {
    let table_dir = dataroot.join(version);
    if !table_dir.is_dir() {
        return Err(Error::format(
            &table_dir,
            None,
            format!(
                "no table folder for version `{version}` under {}",
                dataroot.display()
            ),
        ));
    }
    Ok(table_dir)
}

fn write_table<T: Record>(dir: &Path, records: &[T]) -> Result<()> {
    use std::io::Write;
    let path = dir.join(format!("{}.json", T::TABLE));
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut w = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, records)
        .map_err(|e| Error::format(&path, None, format!("cannot serialize: {e}")))?;
    w.write_all(b"\n")
        .and_then(|_| w.flush())
        .map_err(|e| Error::io(&path, e))
}

impl Tables {
    /// Reads every table from `table_dir` (`<dataroot>/<version>`). A missing table other than `map` is an error.
    pub fn read(table_dir: &Path) -> Result<Self> {
        Ok(Self {
            scene: read_table(table_dir, false)?,
            sample: read_table(table_dir, false)?,
            sample_data: read_table(table_dir, false)?,
            ego_pose: read_table(table_dir, false)?,
            calibrated_sensor: read_table(table_dir, false)?,
            sensor: read_table(table_dir, false)?,
            sample_annotation: read_table(table_dir, false)?,
            instance: read_table(table_dir, false)?,
            category: read_table(table_dir, false)?,
            attribute: read_table(table_dir, false)?,
            visibility: read_table(table_dir, false)?,
            log: read_table(table_dir, false)?,
            map: read_table(table_dir, true)?,
        })
    }

    /// Writes every table as `<table_dir>/<table>.json` (pretty-printed JSON arrays), creating the folder.
    /// `scene.json` is written last, so an interrupted write leaves no scene table and never reads as whole.
    pub fn write(&self, table_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(table_dir).map_err(|e| Error::io(table_dir, e))?;
        let scene = table_path::<Scene>(table_dir);
        if scene.exists() {
            std::fs::remove_file(&scene).map_err(|e| Error::io(&scene, e))?;
        }
        write_table(table_dir, &self.sample)?;
        write_table(table_dir, &self.sample_data)?;
        write_table(table_dir, &self.ego_pose)?;
        write_table(table_dir, &self.calibrated_sensor)?;
        write_table(table_dir, &self.sensor)?;
        write_table(table_dir, &self.sample_annotation)?;
        write_table(table_dir, &self.instance)?;
        write_table(table_dir, &self.category)?;
        write_table(table_dir, &self.attribute)?;
        write_table(table_dir, &self.visibility)?;
        write_table(table_dir, &self.log)?;
        write_table(table_dir, &self.map)?;
        write_table(table_dir, &self.scene)?;
        Ok(())
    }
}

/// Token → position index of one table.
#[derive(Debug, Clone, Default)]
struct Index(HashMap<String, usize>);

impl Index {
    fn build<T: Record>(dir: &Path, records: &[T]) -> Result<Self> {
        let mut map = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if map.insert(r.token().to_owned(), i).is_some() {
                return Err(Error::format(
                    table_path::<T>(dir),
                    Some(format!("token {}", r.token())),
                    "duplicate token",
                ));
            }
        }
        Ok(Self(map))
    }

    fn get(&self, token: &str) -> Option<usize> {
        self.0.get(token).copied()
    }
}

pub(crate) fn table_path<T: Record>(dir: &Path) -> PathBuf {
    dir.join(format!("{}.json", T::TABLE))
}

/// An annotation box together with its record, as returned by [`NuScenes::boxes_in_sensor`].
#[derive(Debug, Clone)]
pub struct AnnotatedBox<'a> {
    /// The annotation record.
    pub annotation: &'a SampleAnnotation,
    /// Its category name (`vehicle.car`, …).
    pub category: &'a str,
    /// The box in the requested frame.
    pub bbox: OrientedBox3D,
}

/// A loaded, validated, indexed nuScenes version.
#[derive(Debug, Clone)]
pub struct NuScenes {
    dataroot: PathBuf,
    version: String,
    table_dir: PathBuf,
    tables: Tables,
    scene_idx: Index,
    sample_idx: Index,
    sample_data_idx: Index,
    ego_pose_idx: Index,
    calibrated_sensor_idx: Index,
    sensor_idx: Index,
    sample_annotation_idx: Index,
    instance_idx: Index,
    category_idx: Index,
    attribute_idx: Index,
    visibility_idx: Index,
    log_idx: Index,
    /// sample index → key-frame sample_data indices (file order).
    key_frames: Vec<Vec<usize>>,
    /// sample index → annotation indices (file order, as the devkit's `sample['anns']`).
    sample_anns: Vec<Vec<usize>>,
}

impl NuScenes {
    /// Loads `<dataroot>/<version>/*.json`, indexes every table and checks every reference (a dangling token,
    /// a duplicate token or a zero quaternion is an error naming the file and the record).
    pub fn load(dataroot: impl AsRef<Path>, version: &str) -> Result<Self> {
        let dataroot = dataroot.as_ref().to_path_buf();
        let table_dir = version_dir(&dataroot, version)?;
        let tables = Tables::read(&table_dir)?;
        Self::from_tables(dataroot, version, tables)
    }

    /// Indexes and validates tables already in memory; `dataroot`/`version` name the files in errors and
    /// resolve `filename`s.
    pub fn from_tables(dataroot: impl AsRef<Path>, version: &str, tables: Tables) -> Result<Self> {
        let dataroot = dataroot.as_ref().to_path_buf();
        let dir = dataroot.join(version);
        let mut n = Self {
            scene_idx: Index::build(&dir, &tables.scene)?,
            sample_idx: Index::build(&dir, &tables.sample)?,
            sample_data_idx: Index::build(&dir, &tables.sample_data)?,
            ego_pose_idx: Index::build(&dir, &tables.ego_pose)?,
            calibrated_sensor_idx: Index::build(&dir, &tables.calibrated_sensor)?,
            sensor_idx: Index::build(&dir, &tables.sensor)?,
            sample_annotation_idx: Index::build(&dir, &tables.sample_annotation)?,
            instance_idx: Index::build(&dir, &tables.instance)?,
            category_idx: Index::build(&dir, &tables.category)?,
            attribute_idx: Index::build(&dir, &tables.attribute)?,
            visibility_idx: Index::build(&dir, &tables.visibility)?,
            log_idx: Index::build(&dir, &tables.log)?,
            key_frames: vec![Vec::new(); tables.sample.len()],
            sample_anns: vec![Vec::new(); tables.sample.len()],
            dataroot,
            version: version.to_owned(),
            table_dir: dir,
            tables,
        };
        n.validate()?;
        for (i, sd) in n.tables.sample_data.iter().enumerate() {
            if sd.is_key_frame {
                if let Some(s) = n.sample_idx.get(&sd.sample_token) {
                    n.key_frames[s].push(i);
                }
            }
        }
        for (i, a) in n.tables.sample_annotation.iter().enumerate() {
            if let Some(s) = n.sample_idx.get(&a.sample_token) {
                n.sample_anns[s].push(i);
            }
        }
        Ok(n)
    }

    fn err<T: Record>(&self, token: &str, why: impl Into<String>) -> Error {
        Error::format(
            table_path::<T>(&self.table_dir),
            Some(format!("token {token}")),
            why,
        )
    }

    fn check_ref<T: Record, U: Record>(
        &self,
        rec: &T,
        field: &str,
        target: &Index,
        token: &str,
    ) -> Result<()> {
        if target.get(token).is_none() {
            return Err(self.err::<T>(
                rec.token(),
                format!(
                    "dangling {field} `{token}`: no such record in {}.json",
                    U::TABLE
                ),
            ));
        }
        Ok(())
    }

    /// Like `check_ref`, but `""` (nuScenes' "none") is allowed.
    fn check_link<T: Record, U: Record>(
        &self,
        rec: &T,
        field: &str,
        target: &Index,
        token: &str,
    ) -> Result<()> {
        if token.is_empty() {
            return Ok(());
        }
        self.check_ref::<T, U>(rec, field, target, token)
    }

    fn validate(&self) -> Result<()> {
        let t = &self.tables;
        for r in &t.scene {
            self.check_ref::<_, Log>(r, "log_token", &self.log_idx, &r.log_token)?;
            self.check_ref::<_, Sample>(
                r,
                "first_sample_token",
                &self.sample_idx,
                &r.first_sample_token,
            )?;
            self.check_ref::<_, Sample>(
                r,
                "last_sample_token",
                &self.sample_idx,
                &r.last_sample_token,
            )?;
        }
        for r in &t.sample {
            self.check_ref::<_, Scene>(r, "scene_token", &self.scene_idx, &r.scene_token)?;
            self.check_link::<_, Sample>(r, "prev", &self.sample_idx, &r.prev)?;
            self.check_link::<_, Sample>(r, "next", &self.sample_idx, &r.next)?;
        }
        for r in &t.sample_data {
            self.check_ref::<_, Sample>(r, "sample_token", &self.sample_idx, &r.sample_token)?;
            self.check_ref::<_, EgoPose>(
                r,
                "ego_pose_token",
                &self.ego_pose_idx,
                &r.ego_pose_token,
            )?;
            self.check_ref::<_, CalibratedSensor>(
                r,
                "calibrated_sensor_token",
                &self.calibrated_sensor_idx,
                &r.calibrated_sensor_token,
            )?;
            self.check_link::<_, SampleData>(r, "prev", &self.sample_data_idx, &r.prev)?;
            self.check_link::<_, SampleData>(r, "next", &self.sample_data_idx, &r.next)?;
        }
        for r in &t.ego_pose {
            isometry_from_nuscenes(r.translation, r.rotation)
                .map_err(|e| self.err::<EgoPose>(&r.token, why(e)))?;
        }
        for r in &t.calibrated_sensor {
            self.check_ref::<_, Sensor>(r, "sensor_token", &self.sensor_idx, &r.sensor_token)?;
            isometry_from_nuscenes(r.translation, r.rotation)
                .map_err(|e| self.err::<CalibratedSensor>(&r.token, why(e)))?;
            if !r.camera_intrinsic.is_empty()
                && (r.camera_intrinsic.len() != 3
                    || r.camera_intrinsic.iter().any(|row| row.len() != 3))
            {
                return Err(
                    self.err::<CalibratedSensor>(&r.token, "camera_intrinsic is not a 3×3 matrix")
                );
            }
        }
        for r in &t.sample_annotation {
            self.check_ref::<_, Sample>(r, "sample_token", &self.sample_idx, &r.sample_token)?;
            self.check_ref::<_, Instance>(
                r,
                "instance_token",
                &self.instance_idx,
                &r.instance_token,
            )?;
            self.check_link::<_, Visibility>(
                r,
                "visibility_token",
                &self.visibility_idx,
                &r.visibility_token,
            )?;
            for a in &r.attribute_tokens {
                self.check_ref::<_, Attribute>(r, "attribute token", &self.attribute_idx, a)?;
            }
            self.check_link::<_, SampleAnnotation>(
                r,
                "prev",
                &self.sample_annotation_idx,
                &r.prev,
            )?;
            self.check_link::<_, SampleAnnotation>(
                r,
                "next",
                &self.sample_annotation_idx,
                &r.next,
            )?;
            OrientedBox3D::from_nuscenes(r.translation, r.size, r.rotation)
                .map_err(|e| self.err::<SampleAnnotation>(&r.token, why(e)))?;
        }
        for r in &t.instance {
            self.check_ref::<_, Category>(
                r,
                "category_token",
                &self.category_idx,
                &r.category_token,
            )?;
            self.check_link::<_, SampleAnnotation>(
                r,
                "first_annotation_token",
                &self.sample_annotation_idx,
                &r.first_annotation_token,
            )?;
            self.check_link::<_, SampleAnnotation>(
                r,
                "last_annotation_token",
                &self.sample_annotation_idx,
                &r.last_annotation_token,
            )?;
        }
        for r in &t.map {
            for l in &r.log_tokens {
                self.check_ref::<_, Log>(r, "log token", &self.log_idx, l)?;
            }
        }
        Ok(())
    }

    /// The dataroot the tables were loaded from.
    pub fn dataroot(&self) -> &Path {
        &self.dataroot
    }

    /// The version (table folder name), e.g. `v1.0-mini`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The folder of the JSON tables, `<dataroot>/<version>`.
    pub fn table_dir(&self) -> &Path {
        &self.table_dir
    }

    /// All tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Scenes in file order.
    pub fn scenes(&self) -> &[Scene] {
        &self.tables.scene
    }

    fn lookup<'a, T: Record>(&self, records: &'a [T], index: &Index, token: &str) -> Result<&'a T> {
        index.get(token).map(|i| &records[i]).ok_or_else(|| {
            Error::format(
                table_path::<T>(&self.table_dir),
                Some(format!("token {token}")),
                "no such record",
            )
        })
    }

    /// The scene with this token.
    pub fn scene(&self, token: &str) -> Result<&Scene> {
        self.lookup(&self.tables.scene, &self.scene_idx, token)
    }

    /// The sample with this token.
    pub fn sample(&self, token: &str) -> Result<&Sample> {
        self.lookup(&self.tables.sample, &self.sample_idx, token)
    }

    /// The sample_data with this token.
    pub fn sample_data(&self, token: &str) -> Result<&SampleData> {
        self.lookup(&self.tables.sample_data, &self.sample_data_idx, token)
    }

    /// The ego pose with this token.
    pub fn ego_pose(&self, token: &str) -> Result<&EgoPose> {
        self.lookup(&self.tables.ego_pose, &self.ego_pose_idx, token)
    }

    /// The calibrated sensor with this token.
    pub fn calibrated_sensor(&self, token: &str) -> Result<&CalibratedSensor> {
        self.lookup(
            &self.tables.calibrated_sensor,
            &self.calibrated_sensor_idx,
            token,
        )
    }

    /// The sensor with this token.
    pub fn sensor(&self, token: &str) -> Result<&Sensor> {
        self.lookup(&self.tables.sensor, &self.sensor_idx, token)
    }

    /// The annotation with this token.
    pub fn sample_annotation(&self, token: &str) -> Result<&SampleAnnotation> {
        self.lookup(
            &self.tables.sample_annotation,
            &self.sample_annotation_idx,
            token,
        )
    }

    /// The instance with this token.
    pub fn instance(&self, token: &str) -> Result<&Instance> {
        self.lookup(&self.tables.instance, &self.instance_idx, token)
    }

    /// The category with this token.
    pub fn category(&self, token: &str) -> Result<&Category> {
        self.lookup(&self.tables.category, &self.category_idx, token)
    }

    /// The attribute with this token.
    pub fn attribute(&self, token: &str) -> Result<&Attribute> {
        self.lookup(&self.tables.attribute, &self.attribute_idx, token)
    }

    /// The visibility level with this token.
    pub fn visibility(&self, token: &str) -> Result<&Visibility> {
        self.lookup(&self.tables.visibility, &self.visibility_idx, token)
    }

    /// The log with this token.
    pub fn log(&self, token: &str) -> Result<&Log> {
        self.lookup(&self.tables.log, &self.log_idx, token)
    }

    /// The samples of a scene in time order, following `first_sample_token` and `next`. A broken chain
    /// (a cycle, a sample of another scene) is an error naming the sample.
    pub fn scene_samples(&self, scene: &Scene) -> Result<Vec<&Sample>> {
        let mut out = Vec::with_capacity(scene.nbr_samples as usize);
        let mut token = scene.first_sample_token.as_str();
        while !token.is_empty() {
            let s = self.sample(token)?;
            if s.scene_token != scene.token {
                return Err(self.err::<Sample>(
                    token,
                    format!(
                        "reached from scene {} but belongs to scene {}",
                        scene.token, s.scene_token
                    ),
                ));
            }
            if out.len() >= self.tables.sample.len() {
                return Err(self.err::<Sample>(
                    token,
                    format!("cycle in the sample chain of scene {}", scene.token),
                ));
            }
            out.push(s);
            token = &s.next;
        }
        Ok(out)
    }

    /// The key-frame sample_data records of a sample, in file order.
    pub fn key_frames(&self, sample: &Sample) -> Vec<&SampleData> {
        self.sample_idx
            .get(&sample.token)
            .map(|i| {
                self.key_frames[i]
                    .iter()
                    .map(|&j| &self.tables.sample_data[j])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sensor (channel, modality) of a sample_data record.
    pub fn sensor_of(&self, sd: &SampleData) -> Result<&Sensor> {
        let cs = self.calibrated_sensor(&sd.calibrated_sensor_token)?;
        self.sensor(&cs.sensor_token)
    }

    /// The key-frame sample_data of `channel` (e.g. `CAM_FRONT`) in a sample, if the sample has one.
    pub fn key_frame(&self, sample: &Sample, channel: &str) -> Result<Option<&SampleData>> {
        for sd in self.key_frames(sample) {
            if self.sensor_of(sd)?.channel == channel {
                return Ok(Some(sd));
            }
        }
        Ok(None)
    }

    /// The annotations of a sample, in file order (as the devkit's `sample['anns']`).
    pub fn sample_annotations(&self, sample: &Sample) -> Vec<&SampleAnnotation> {
        self.sample_idx
            .get(&sample.token)
            .map(|i| {
                self.sample_anns[i]
                    .iter()
                    .map(|&j| &self.tables.sample_annotation[j])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The category of an annotation (through its instance).
    pub fn annotation_category(&self, ann: &SampleAnnotation) -> Result<&Category> {
        let inst = self.instance(&ann.instance_token)?;
        self.category(&inst.category_token)
    }

    /// The ego → global isometry of a sample_data's ego pose.
    pub fn ego_to_global(&self, sd: &SampleData) -> Result<Isometry3<f64>> {
        let p = self.ego_pose(&sd.ego_pose_token)?;
        isometry_from_nuscenes(p.translation, p.rotation)
            .map_err(|e| self.err::<EgoPose>(&p.token, why(e)))
    }

    /// The sensor → ego isometry of a sample_data's calibration.
    pub fn sensor_to_ego(&self, sd: &SampleData) -> Result<Isometry3<f64>> {
        let c = self.calibrated_sensor(&sd.calibrated_sensor_token)?;
        isometry_from_nuscenes(c.translation, c.rotation)
            .map_err(|e| self.err::<CalibratedSensor>(&c.token, why(e)))
    }

    /// The sensor → global isometry of a sample_data (ego pose ∘ calibration).
    pub fn sensor_to_global(&self, sd: &SampleData) -> Result<Isometry3<f64>> {
        Ok(self.ego_to_global(sd)? * self.sensor_to_ego(sd)?)
    }

    /// The pinhole camera of a camera sample_data (intrinsics from its calibration, size from the record);
    /// an error for non-camera sensors.
    pub fn camera(&self, sd: &SampleData) -> Result<PinholeCamera> {
        let c = self.calibrated_sensor(&sd.calibrated_sensor_token)?;
        if c.camera_intrinsic.len() != 3 || c.camera_intrinsic.iter().any(|r| r.len() != 3) {
            return Err(
                self.err::<CalibratedSensor>(&c.token, "no 3×3 camera_intrinsic (not a camera?)")
            );
        }
        let k = &c.camera_intrinsic;
        let rows = [
            [k[0][0], k[0][1], k[0][2]],
            [k[1][0], k[1][1], k[1][2]],
            [k[2][0], k[2][1], k[2][2]],
        ];
        PinholeCamera::from_rows(rows, sd.width, sd.height).map_err(|e| {
            self.err::<CalibratedSensor>(&c.token, format!("{} (sample_data {})", why(e), sd.token))
        })
    }

    /// An annotation's box in the global frame ((w, l, h) sizes turned into (l, w, h)).
    pub fn annotation_box(&self, ann: &SampleAnnotation) -> Result<OrientedBox3D> {
        OrientedBox3D::from_nuscenes(ann.translation, ann.size, ann.rotation)
            .map_err(|e| self.err::<SampleAnnotation>(&ann.token, why(e)))
    }

    /// An annotation's velocity in the global frame (x, y, z), m/s, as the devkit's `box_velocity` estimates it:
    /// the centred difference over the previous and next annotations of the instance, or the one-sided one at
    /// either end; `None` for an instance seen once, or when the annotations used lie more than 1.5 s apart
    /// (3 s for the centred difference).
    pub fn box_velocity(&self, ann: &SampleAnnotation) -> Result<Option<[f64; 3]>> {
        let (has_prev, has_next) = (!ann.prev.is_empty(), !ann.next.is_empty());
        if !has_prev && !has_next {
            return Ok(None);
        }
        let first = if has_prev {
            self.sample_annotation(&ann.prev)?
        } else {
            ann
        };
        let last = if has_next {
            self.sample_annotation(&ann.next)?
        } else {
            ann
        };
        // Seconds as the devkit computes them (1e-6 × µs, each end apart), so the quotient is the same.
        let t_last = 1e-6 * self.sample(&last.sample_token)?.timestamp as f64;
        let t_first = 1e-6 * self.sample(&first.sample_token)?.timestamp as f64;
        let dt = t_last - t_first;
        let max_dt = if has_prev && has_next { 3.0 } else { 1.5 };
        if dt > max_dt {
            return Ok(None);
        }
        Ok(Some(std::array::from_fn(|i| {
            (last.translation[i] - first.translation[i]) / dt
        })))
    }

    /// The annotations of `sd`'s sample expressed in `sd`'s sensor frame (global → ego at `sd`'s pose →
    /// sensor), in the order of [`NuScenes::sample_annotations`] — the boxes of the devkit's
    /// `get_sample_data` before its visibility filter.
    pub fn boxes_in_sensor(&self, sd: &SampleData) -> Result<Vec<AnnotatedBox<'_>>> {
        let sample = self.sample(&sd.sample_token)?;
        let global_to_sensor = self.sensor_to_global(sd)?.inverse();
        self.sample_annotations(sample)
            .into_iter()
            .map(|a| {
                Ok(AnnotatedBox {
                    annotation: a,
                    category: &self.annotation_category(a)?.name,
                    bbox: self.annotation_box(a)?.transform(&global_to_sensor),
                })
            })
            .collect()
    }

    /// Every sample_data of a scene (key frames and sweeps, all sensors), ordered by timestamp and then by
    /// file order: the order in which a recorder would have seen them.
    pub fn scene_sample_data(&self, scene: &Scene) -> Result<Vec<&SampleData>> {
        let samples: std::collections::HashSet<&str> = self
            .scene_samples(scene)?
            .into_iter()
            .map(|s| s.token.as_str())
            .collect();
        let mut out: Vec<(usize, &SampleData)> = self
            .tables
            .sample_data
            .iter()
            .enumerate()
            .filter(|(_, sd)| samples.contains(sd.sample_token.as_str()))
            .collect();
        out.sort_by_key(|&(i, sd)| (sd.timestamp, i));
        Ok(out.into_iter().map(|(_, sd)| sd).collect())
    }

    /// Reads a sample_data's file; a missing or unreadable file is an error naming the file and the record.
    pub fn read_file(&self, sd: &SampleData) -> Result<Vec<u8>> {
        let path = self.file_path(sd);
        std::fs::read(&path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "missing file".to_owned()
            } else {
                e.to_string()
            };
            Error::format(
                &path,
                Some(format!("sample_data.json token {}", sd.token)),
                why,
            )
        })
    }

    /// The absolute path of a sample_data's file.
    pub fn file_path(&self, sd: &SampleData) -> PathBuf {
        self.dataroot.join(&sd.filename)
    }
}

/// The message of a geometry error without its "invalid …:" prefix noise kept short.
fn why(e: Error) -> String {
    match e {
        Error::Invalid { what, why } => format!("{what}: {why}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(prefix: &str, i: usize) -> String {
        format!("{prefix}{i:030}")
    }

    /// One scene, two samples, a front camera and the LiDAR, one car annotated in both samples.
    pub(crate) fn tiny() -> Tables {
        let mut t = Tables {
            log: vec![Log {
                token: tok("log", 0),
                logfile: "l".into(),
                vehicle: "v".into(),
                date_captured: "2026-01-01".into(),
                location: "synthetic".into(),
            }],
            sensor: vec![
                Sensor {
                    token: tok("sen", 0),
                    channel: "CAM_FRONT".into(),
                    modality: "camera".into(),
                },
                Sensor {
                    token: tok("sen", 1),
                    channel: "LIDAR_TOP".into(),
                    modality: "lidar".into(),
                },
            ],
            calibrated_sensor: vec![
                CalibratedSensor {
                    token: tok("cs", 0),
                    sensor_token: tok("sen", 0),
                    translation: [1.7, 0.0, 1.5],
                    rotation: [0.5, -0.5, 0.5, -0.5],
                    camera_intrinsic: vec![
                        vec![1266.0, 0.0, 800.0],
                        vec![0.0, 1266.0, 450.0],
                        vec![0.0, 0.0, 1.0],
                    ],
                },
                CalibratedSensor {
                    token: tok("cs", 1),
                    sensor_token: tok("sen", 1),
                    translation: [0.94, 0.0, 1.84],
                    rotation: [
                        std::f64::consts::FRAC_1_SQRT_2,
                        0.0,
                        0.0,
                        -std::f64::consts::FRAC_1_SQRT_2,
                    ],
                    camera_intrinsic: vec![],
                },
            ],
            category: vec![Category {
                token: tok("cat", 0),
                name: "vehicle.car".into(),
                description: String::new(),
                index: None,
            }],
            visibility: vec![Visibility {
                token: "4".into(),
                level: "v80-100".into(),
                description: String::new(),
            }],
            scene: vec![Scene {
                token: tok("sc", 0),
                log_token: tok("log", 0),
                nbr_samples: 2,
                first_sample_token: tok("s", 0),
                last_sample_token: tok("s", 1),
                name: "scene-0001".into(),
                description: String::new(),
            }],
            instance: vec![Instance {
                token: tok("ins", 0),
                category_token: tok("cat", 0),
                nbr_annotations: 2,
                first_annotation_token: tok("ann", 0),
                last_annotation_token: tok("ann", 1),
            }],
            ..Default::default()
        };
        for s in 0..2 {
            t.sample.push(Sample {
                token: tok("s", s),
                timestamp: 1_000_000 + 500_000 * s as i64,
                prev: if s == 0 {
                    String::new()
                } else {
                    tok("s", s - 1)
                },
                next: if s == 1 {
                    String::new()
                } else {
                    tok("s", s + 1)
                },
                scene_token: tok("sc", 0),
            });
            t.ego_pose.push(EgoPose {
                token: tok("ep", s),
                timestamp: 1_000_000 + 500_000 * s as i64,
                rotation: [1.0, 0.0, 0.0, 0.0],
                translation: [100.0 + 5.0 * s as f64, 200.0, 0.0],
            });
            for c in 0..2 {
                t.sample_data.push(SampleData {
                    token: tok("sd", 2 * s + c),
                    sample_token: tok("s", s),
                    ego_pose_token: tok("ep", s),
                    calibrated_sensor_token: tok("cs", c),
                    timestamp: 1_000_000 + 500_000 * s as i64,
                    fileformat: if c == 0 { "jpg".into() } else { "pcd".into() },
                    is_key_frame: true,
                    height: if c == 0 { 900 } else { 0 },
                    width: if c == 0 { 1600 } else { 0 },
                    filename: format!("samples/x/{s}_{c}"),
                    prev: if s == 0 {
                        String::new()
                    } else {
                        tok("sd", 2 * (s - 1) + c)
                    },
                    next: if s == 1 {
                        String::new()
                    } else {
                        tok("sd", 2 * (s + 1) + c)
                    },
                });
            }
            t.sample_annotation.push(SampleAnnotation {
                token: tok("ann", s),
                sample_token: tok("s", s),
                instance_token: tok("ins", 0),
                visibility_token: "4".into(),
                attribute_tokens: vec![],
                translation: [120.0, 200.0, 0.8],
                size: [1.9, 4.5, 1.6],
                rotation: [1.0, 0.0, 0.0, 0.0],
                prev: if s == 0 {
                    String::new()
                } else {
                    tok("ann", s - 1)
                },
                next: if s == 1 {
                    String::new()
                } else {
                    tok("ann", s + 1)
                },
                num_lidar_pts: 10,
                num_radar_pts: 0,
            });
        }
        t
    }

    #[test]
    fn roundtrip_write_load() {
        let dir = std::env::temp_dir().join(format!("vlm3d-nusc-rt-{}", std::process::id()));
        let t = tiny();
        t.write(&dir.join("v1.0-mini")).unwrap();
        let n = NuScenes::load(&dir, "v1.0-mini").unwrap();
        assert_eq!(n.tables(), &t);
        let scene = &n.scenes()[0];
        let samples = n.scene_samples(scene).unwrap();
        assert_eq!(samples.len(), 2);
        assert!(samples[0].timestamp < samples[1].timestamp);
        let cam = n.key_frame(samples[1], "CAM_FRONT").unwrap().unwrap();
        assert_eq!(cam.token, tok("sd", 2));
        assert!(n.key_frame(samples[1], "CAM_BACK").unwrap().is_none());
        // The car 15 m ahead of the ego (at x = 105) is 15 - 1.7 m in front of the camera (camera z forward).
        let boxes = n.boxes_in_sensor(cam).unwrap();
        assert_eq!(boxes.len(), 1);
        assert_eq!(boxes[0].category, "vehicle.car");
        let c = boxes[0].bbox.center;
        assert!(
            (c.z - 13.3).abs() < 1e-9 && c.x.abs() < 1e-9 && (c.y - 0.7).abs() < 1e-9,
            "{c:?}"
        );
        assert_eq!(boxes[0].bbox.size, [4.5, 1.9, 1.6]);
        // LiDAR frame: x right, y forward.
        let lidar = n.key_frame(samples[1], "LIDAR_TOP").unwrap().unwrap();
        let b = &n.boxes_in_sensor(lidar).unwrap()[0].bbox;
        assert!(
            (b.center.y - (15.0 - 0.94)).abs() < 1e-9 && b.center.x.abs() < 1e-9,
            "{:?}",
            b.center
        );
        let cam_model = n.camera(cam).unwrap();
        assert_eq!(cam_model.width(), 1600);
        assert!(n.camera(lidar).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scene_sample_data_in_time_order_and_missing_files() {
        let n = NuScenes::from_tables("/nonexistent-root", "v1.0-mini", tiny()).unwrap();
        let sds = n.scene_sample_data(&n.scenes()[0]).unwrap();
        assert_eq!(sds.len(), 4);
        assert!(sds.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        assert_eq!(sds[0].token, tok("sd", 0));
        let e = n.read_file(sds[2]).unwrap_err().to_string();
        assert!(
            e.contains("samples/x/1_0") && e.contains(&tok("sd", 2)) && e.contains("missing"),
            "{e}"
        );
    }

    fn load_err(t: Tables) -> String {
        NuScenes::from_tables("/data", "v1.0-mini", t)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn zero_quaternion_names_file_and_token() {
        let mut t = tiny();
        t.sample_annotation[1].rotation = [0.0; 4];
        let e = load_err(t);
        assert!(e.contains("sample_annotation.json"), "{e}");
        assert!(e.contains(&tok("ann", 1)), "{e}");
        assert!(e.contains("zero quaternion"), "{e}");
    }

    #[test]
    fn dangling_token_names_file_and_token() {
        let mut t = tiny();
        t.sample_data[3].ego_pose_token = "nope".into();
        let e = load_err(t);
        assert!(
            e.contains("sample_data.json") && e.contains(&tok("sd", 3)) && e.contains("nope"),
            "{e}"
        );

        let mut t = tiny();
        t.instance[0].category_token = "gone".into();
        let e = load_err(t);
        assert!(
            e.contains("instance.json")
                && e.contains(&tok("ins", 0))
                && e.contains("category.json"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_token_is_an_error() {
        let mut t = tiny();
        t.ego_pose[1].token = t.ego_pose[0].token.clone();
        let e = load_err(t);
        assert!(
            e.contains("ego_pose.json") && e.contains("duplicate"),
            "{e}"
        );
    }

    #[test]
    fn sample_cycle_is_an_error() {
        let mut t = tiny();
        t.sample[1].next = tok("s", 0);
        let n = NuScenes::from_tables("/data", "v1.0-mini", t).unwrap();
        let e = n.scene_samples(&n.scenes()[0]).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("sample.json"), "{e}");
    }

    #[test]
    fn missing_table_and_bad_json() {
        let dir = std::env::temp_dir().join(format!("vlm3d-nusc-miss-{}", std::process::id()));
        let tdir = dir.join("v1.0-mini");
        tiny().write(&tdir).unwrap();
        std::fs::remove_file(tdir.join("ego_pose.json")).unwrap();
        let e = NuScenes::load(&dir, "v1.0-mini").unwrap_err().to_string();
        assert!(e.contains("ego_pose.json") && e.contains("missing"), "{e}");
        std::fs::write(tdir.join("ego_pose.json"), "[{\"token\": 3}]").unwrap();
        let e = NuScenes::load(&dir, "v1.0-mini").unwrap_err().to_string();
        assert!(e.contains("ego_pose.json"), "{e}");
        // map.json is optional.
        tiny().write(&tdir).unwrap();
        std::fs::remove_file(tdir.join("map.json")).unwrap();
        assert!(NuScenes::load(&dir, "v1.0-mini").is_ok());
        let e = NuScenes::load(&dir, "v1.0-nope").unwrap_err().to_string();
        assert!(e.contains("v1.0-nope"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn real_json_field_names() {
        // A record as it appears in nuScenes' sample_annotation.json.
        let json = r#"[{"token": "70aecbe9b64f4722ab3c230391a3beb8", "sample_token": "cd21dbfc3bd749c7b10a5c42562e0c42",
            "instance_token": "6dd2cbf4c24b4caeb625035869bca7b5", "visibility_token": "4",
            "attribute_tokens": ["4d8821270b4a47e3a8a300cbec48188e"], "translation": [373.214, 1130.48, 1.25],
            "size": [0.621, 0.669, 1.642], "rotation": [0.9831098797903927, 0.0, 0.0, -0.18301629506281616],
            "prev": "a1721876c0944cdd92ebc3c75d55d693", "next": "1e8e35d365a441a18dd5503a0ee1c208",
            "num_lidar_pts": 5, "num_radar_pts": 0}]"#;
        let v: Vec<SampleAnnotation> = serde_json::from_str(json).unwrap();
        assert_eq!(v[0].size, [0.621, 0.669, 1.642]);
        let back = serde_json::to_value(&v).unwrap();
        let orig: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, orig);
    }
}
