//! Scene-by-scene access to a nuScenes version without holding its big tables in memory.
//!
//! `sample`, `sample_data`, `ego_pose`, `sample_annotation` and `instance` grow with the number of samples
//! (the trainval set's JSON is ≈ 1.5 GB; the devkit holds several GB of it). [`SceneSplit::build`] streams
//! each of them once, record by record, and spills every record to a per-scene file under a scratch folder;
//! [`SceneSplit::load_scene`] then reads one scene back as a small, validated [`NuScenes`]. What stays in
//! memory is the small tables (scenes, logs, sensors, calibrations, categories, …), bounded write buffers,
//! and while splitting a routing map of 16-byte token keys: one entry per sample, per sample_data and per
//! instance (≈ 30 bytes each), a small fraction of the records themselves.
//!
//! Records are routed by their references: a sample by `scene_token`, a sample_data and an annotation by
//! their sample, an ego pose by the sample_data that uses it, an instance by its annotations. Records that
//! nothing references (an ego pose of no sample_data, an instance without annotations) are not needed by any
//! scene and are dropped. A dangling reference met while routing is an error naming the file and record.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use crate::data::progress_bar;
use serde::de::{DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::{
    open_table, read_table, table_path, version_dir, Attribute, CalibratedSensor, Category,
    EgoPose, Instance, Log, Map, NuScenes, Record, Sample, SampleAnnotation, SampleData, Scene,
    Sensor, Tables, Visibility,
};
use crate::{Error, Result};

/// Bytes of one scene's spilled records buffered before they are appended to its file.
const SCENE_BUFFER: usize = 64 << 10;
/// Bytes of spilled records buffered over all scenes before every buffer is written out.
const SPILL_BUDGET: usize = 2 << 20;

/// A token as a routing key: a nuScenes token (32 hex digits) is its value; any other string is hashed to
/// 128 bits (two SipHash passes), where a collision is as unlikely as a clash of two real tokens.
fn token_key(token: &str) -> u128 {
    if token.len() == 32 {
        if let Ok(v) = u128::from_str_radix(token, 16) {
            return v;
        }
    }
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        token.hash(&mut h);
        h.finish() as u128
    };
    (half(0) << 64) | half(1)
}

/// The small tables, kept whole: they grow with logs and sensors, not with samples.
#[derive(Debug, Default)]
struct SmallTables {
    scene: Vec<Scene>,
    log: Vec<Log>,
    map: Vec<Map>,
    sensor: Vec<Sensor>,
    calibrated_sensor: Vec<CalibratedSensor>,
    category: Vec<Category>,
    attribute: Vec<Attribute>,
    visibility: Vec<Visibility>,
}

/// Which big table a spilled line holds (its first byte).
const TAG_SAMPLE: u8 = b'S';
const TAG_SAMPLE_DATA: u8 = b'D';
const TAG_EGO_POSE: u8 = b'E';
const TAG_ANNOTATION: u8 = b'A';
const TAG_INSTANCE: u8 = b'I';

/// Per-scene append-only files with bounded in-memory buffers.
struct Spill {
    dir: PathBuf,
    buffers: Vec<Vec<u8>>,
    buffered: usize,
}

impl Spill {
    fn new(dir: PathBuf, scenes: usize) -> Self {
        Self {
            dir,
            buffers: vec![Vec::new(); scenes],
            buffered: 0,
        }
    }

    fn path(dir: &Path, scene: usize) -> PathBuf {
        dir.join(format!("scene-{scene:06}.jsonl"))
    }

    fn push<T: Record>(&mut self, scene: usize, tag: u8, record: &T) -> Result<()> {
        let buf = &mut self.buffers[scene];
        let before = buf.len();
        buf.push(tag);
        serde_json::to_writer(&mut *buf, record).map_err(|e| {
            Error::invalid(
                "spilled record",
                format!("{} {}: {e}", T::TABLE, record.token()),
            )
        })?;
        buf.push(b'\n');
        self.buffered += buf.len() - before;
        if buf.len() >= SCENE_BUFFER {
            self.flush_scene(scene)?;
        }
        if self.buffered >= SPILL_BUDGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends one scene's buffer to its file and frees the buffer.
    fn flush_scene(&mut self, scene: usize) -> Result<()> {
        let buf = std::mem::take(&mut self.buffers[scene]);
        if buf.is_empty() {
            return Ok(());
        }
        let path = Self::path(&self.dir, scene);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(&buf).map_err(|e| Error::io(&path, e))?;
        self.buffered -= buf.len();
        Ok(())
    }

    /// Appends every buffer to its scene file.
    fn flush(&mut self) -> Result<()> {
        for scene in 0..self.buffers.len() {
            self.flush_scene(scene)?;
        }
        Ok(())
    }
}

/// Calls `each` on every record of the JSON array in `<dir>/<table>.json`, reading it as a stream (never the
/// whole file at once). `bar` advances with the bytes read.
fn stream_table<T: Record>(
    dir: &Path,
    bar: &ProgressBar,
    mut each: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    // Required (`optional = false`): an absent table is already an error naming it.
    let (path, file) = open_table::<T>(dir, false)?
        .ok_or_else(|| Error::invalid("table", format!("{} is required", T::TABLE)))?;
    bar.set_message(format!("{}.json", T::TABLE));
    let reader = BufReader::with_capacity(1 << 16, bar.wrap_read(file));
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut failed = None;
    let parsed = de.deserialize_seq(EachRecord::<T, _> {
        each: &mut each,
        failed: &mut failed,
        _record: PhantomData,
    });
    if let Some(e) = failed {
        return Err(e);
    }
    parsed
        .and_then(|()| de.end())
        .map_err(|e| Error::format(&path, None, format!("not a {} table: {e}", T::TABLE)))
}

/// A serde visitor that hands each element of a JSON array to a callback instead of collecting them.
struct EachRecord<'a, T, F> {
    each: &'a mut F,
    /// The callback's error, which stops the parse.
    failed: &'a mut Option<Error>,
    _record: PhantomData<T>,
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> Result<()>> Visitor<'de> for EachRecord<'_, T, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(record) = seq.next_element::<T>()? {
            if let Err(e) = (self.each)(record) {
                *self.failed = Some(e);
                return Err(serde::de::Error::custom("stopped by the record callback"));
            }
        }
        Ok(())
    }
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> Result<()>> DeserializeSeed<'de>
    for EachRecord<'_, T, F>
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// A nuScenes version split into per-scene spill files (see the module docs).
pub struct SceneSplit {
    dataroot: PathBuf,
    version: String,
    table_dir: PathBuf,
    small: SmallTables,
    spill_dir: PathBuf,
    /// Scenes whose records were kept.
    kept: Vec<bool>,
}

impl fmt::Debug for SceneSplit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("SceneSplit")
            .field("table_dir", &self.table_dir)
            .field("scenes", &self.small.scene.len())
            .field("spill_dir", &self.spill_dir)
            .finish()
    }
}

impl SceneSplit {
    /// Streams the big tables of `<dataroot>/<version>` into per-scene files under `spill_dir` (created;
    /// it must not exist or be empty, and [`SceneSplit`] removes it when dropped). Only the scenes for which
    /// `keep(scene index)` holds are spilled. `progress` shows a bar over the bytes of the tables.
    pub fn build(
        dataroot: impl AsRef<Path>,
        version: &str,
        spill_dir: impl Into<PathBuf>,
        keep: impl Fn(usize) -> bool,
        progress: bool,
    ) -> Result<Self> {
        let dataroot = dataroot.as_ref().to_path_buf();
        let table_dir = version_dir(&dataroot, version)?;
        let small = SmallTables {
            scene: read_table(&table_dir, false)?,
            log: read_table(&table_dir, false)?,
            map: read_table(&table_dir, true)?,
            sensor: read_table(&table_dir, false)?,
            calibrated_sensor: read_table(&table_dir, false)?,
            category: read_table(&table_dir, false)?,
            attribute: read_table(&table_dir, false)?,
            visibility: read_table(&table_dir, false)?,
        };
        let spill_dir = spill_dir.into();
        std::fs::create_dir_all(&spill_dir).map_err(|e| Error::io(&spill_dir, e))?;
        let mut split = Self {
            kept: (0..small.scene.len()).map(&keep).collect(),
            dataroot,
            version: version.to_owned(),
            table_dir,
            small,
            spill_dir,
        };
        split.spill(progress)?;
        Ok(split)
    }

    fn spill(&mut self, progress: bool) -> Result<()> {
        let dir = self.table_dir.clone();
        let bytes: u64 = [
            "sample",
            "sample_data",
            "ego_pose",
            "sample_annotation",
            "instance",
        ]
        .iter()
        .filter_map(|t| std::fs::metadata(dir.join(format!("{t}.json"))).ok())
        .map(|m| m.len())
        .sum();
        let bar = progress_bar(
            progress,
            bytes,
            "{spinner} splitting tables by scene [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        );

        let mut scene_of: HashMap<u128, u32> = HashMap::with_capacity(self.small.scene.len());
        for (i, s) in self.small.scene.iter().enumerate() {
            if scene_of.insert(token_key(&s.token), i as u32).is_some() {
                return Err(dup::<Scene>(&dir, &s.token));
            }
        }
        let mut spill = Spill::new(self.spill_dir.clone(), self.small.scene.len());
        let kept = &self.kept;

        let mut sample_scene: HashMap<u128, u32> = HashMap::new();
        stream_table::<Sample>(&dir, &bar, |r| {
            let s = route::<Sample>(&dir, &r.token, "scene_token", &r.scene_token, &scene_of)?;
            if sample_scene.insert(token_key(&r.token), s).is_some() {
                return Err(dup::<Sample>(&dir, &r.token));
            }
            keep_or_drop(&mut spill, kept, s, TAG_SAMPLE, &r)
        })?;
        drop(scene_of);

        let mut ego_scene: HashMap<u128, u32> = HashMap::new();
        stream_table::<SampleData>(&dir, &bar, |r| {
            let s = route::<SampleData>(
                &dir,
                &r.token,
                "sample_token",
                &r.sample_token,
                &sample_scene,
            )?;
            ego_scene.insert(token_key(&r.ego_pose_token), s);
            keep_or_drop(&mut spill, kept, s, TAG_SAMPLE_DATA, &r)
        })?;
        stream_table::<EgoPose>(&dir, &bar, |r| match ego_scene.get(&token_key(&r.token)) {
            Some(&s) => keep_or_drop(&mut spill, kept, s, TAG_EGO_POSE, &r),
            None => Ok(()),
        })?;
        drop(ego_scene);

        let mut instance_scene: HashMap<u128, u32> = HashMap::new();
        stream_table::<SampleAnnotation>(&dir, &bar, |r| {
            let s = route::<SampleAnnotation>(
                &dir,
                &r.token,
                "sample_token",
                &r.sample_token,
                &sample_scene,
            )?;
            instance_scene.insert(token_key(&r.instance_token), s);
            keep_or_drop(&mut spill, kept, s, TAG_ANNOTATION, &r)
        })?;
        drop(sample_scene);
        stream_table::<Instance>(&dir, &bar, |r| {
            match instance_scene.get(&token_key(&r.token)) {
                Some(&s) => keep_or_drop(&mut spill, kept, s, TAG_INSTANCE, &r),
                None => Ok(()),
            }
        })?;
        spill.flush()?;
        bar.finish_and_clear();
        Ok(())
    }

    /// Scenes in file order.
    pub fn scenes(&self) -> &[Scene] {
        &self.small.scene
    }

    /// The version (table folder name).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Scene `index` (of [`SceneSplit::scenes`]) as a validated [`NuScenes`] that holds only that scene's
    /// records plus the small tables. Errors name the original table files and records.
    pub fn load_scene(&self, index: usize) -> Result<NuScenes> {
        let scene = self.small.scene.get(index).ok_or_else(|| {
            Error::invalid(
                "scene index",
                format!("{index} of {} scenes", self.small.scene.len()),
            )
        })?;
        if !self.kept.get(index).copied().unwrap_or(false) {
            return Err(Error::invalid(
                "scene index",
                format!(
                    "scene {} was not kept when the tables were split",
                    scene.name
                ),
            ));
        }
        let mut t = Tables {
            scene: vec![scene.clone()],
            log: self.small.log.clone(),
            map: self.small.map.clone(),
            sensor: self.small.sensor.clone(),
            category: self.small.category.clone(),
            attribute: self.small.attribute.clone(),
            visibility: self.small.visibility.clone(),
            ..Default::default()
        };
        let path = Spill::path(&self.spill_dir, index);
        match std::fs::File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(|e| Error::io(&path, e))?;
                    let Some((&tag, json)) = line.split_first() else {
                        continue;
                    };
                    let bad = |e: serde_json::Error| {
                        Error::format(&path, None, format!("corrupt spilled record: {e}"))
                    };
                    match tag {
                        TAG_SAMPLE => t.sample.push(serde_json::from_slice(json).map_err(bad)?),
                        TAG_SAMPLE_DATA => t
                            .sample_data
                            .push(serde_json::from_slice(json).map_err(bad)?),
                        TAG_EGO_POSE => t.ego_pose.push(serde_json::from_slice(json).map_err(bad)?),
                        TAG_ANNOTATION => t
                            .sample_annotation
                            .push(serde_json::from_slice(json).map_err(bad)?),
                        TAG_INSTANCE => t.instance.push(serde_json::from_slice(json).map_err(bad)?),
                        other => {
                            return Err(Error::format(
                                &path,
                                None,
                                format!("corrupt spill file: unknown tag {other}"),
                            ))
                        }
                    }
                }
            }
            // A scene without a single sample: validation reports its dangling first_sample_token.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        // Only the calibrations this scene uses (the trainval set has thousands).
        let used: HashSet<&str> = t
            .sample_data
            .iter()
            .map(|sd| sd.calibrated_sensor_token.as_str())
            .collect();
        t.calibrated_sensor = self
            .small
            .calibrated_sensor
            .iter()
            .filter(|c| used.contains(c.token.as_str()))
            .cloned()
            .collect();
        NuScenes::from_tables(&self.dataroot, &self.version, t)
    }
}

impl Drop for SceneSplit {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.spill_dir) {
            tracing::warn!(path = %self.spill_dir.display(), error = %e, "could not remove the scratch folder");
        }
    }
}

fn dup<T: Record>(dir: &Path, token: &str) -> Error {
    Error::format(
        table_path::<T>(dir),
        Some(format!("token {token}")),
        "duplicate token",
    )
}

/// The scene of `target` (a token `field` of record `token` in table `T`), or a dangling-reference error.
fn route<T: Record>(
    dir: &Path,
    token: &str,
    field: &str,
    target: &str,
    map: &HashMap<u128, u32>,
) -> Result<u32> {
    map.get(&token_key(target)).copied().ok_or_else(|| {
        Error::format(
            table_path::<T>(dir),
            Some(format!("token {token}")),
            format!("dangling {field} `{target}`: no such record"),
        )
    })
}

fn keep_or_drop<T: Record>(
    spill: &mut Spill,
    kept: &[bool],
    scene: u32,
    tag: u8,
    record: &T,
) -> Result<()> {
    if kept[scene as usize] {
        spill.push(scene as usize, tag, record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_parse_hex_and_hash_the_rest() {
        let t = "0123456789abcdef0123456789abcdef";
        assert_eq!(token_key(t), 0x0123456789abcdef0123456789abcdef);
        assert_ne!(token_key("scene-1"), token_key("scene-2"));
        assert_eq!(token_key("scene-1"), token_key("scene-1"));
    }
}
