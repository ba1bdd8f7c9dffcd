//! rosbag2 folders with MCAP storage: a streaming writer that produces what `ros2 bag record` of ROS 2
//! Jazzy produces (CDR messages, `ros2msg` schemas with the full message definitions, `metadata.yaml`
//! version 9), and a streaming reader.
//!
//! Layout of a bag folder `NAME/`: `NAME/NAME_0.mcap` and `NAME/metadata.yaml`. The MCAP file uses the
//! `ros2` profile; each channel carries `offered_qos_profiles` (YAML) and `topic_type_hash` metadata; chunks
//! are uncompressed by default (JPEG and LiDAR floats barely compress) and indexed, so random-access readers
//! (rosbags, `ros2 bag info`) find the summary.
//!
//! The reader pulls bytes incrementally (mcap's sans-io reader, one whole chunk at a time): memory is bounded
//! by the largest chunk, not the file, and no length read from the file is trusted past what the file holds
//! (in a compressed chunk: past its declared uncompressed size, at most 256 MiB), so hostile files give
//! errors, never panics or huge allocations (`tests/bag_fuzz.rs`). Chunk CRCs are checked (an uncompressed
//! chunk's before its messages are yielded). On a damaged file it yields every message before the
//! damaged chunk, then one error naming the file, the byte offset reached and the number of messages read.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::background_file::BackgroundFile;
use super::msgs::RosMessage;
use crate::{Error, Result};

/// Quality of service a topic is offered with, as rosbag2 records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Reliable, volatile, keep last 10: ordinary sensor and detection topics.
    Reliable,
    /// Reliable, transient local, keep last 1: latched topics such as `/tf_static`.
    Latched,
}

impl Qos {
    /// The `offered_qos_profiles` entry as rosbag2 Jazzy writes it (a one-element YAML list).
    fn yaml(&self) -> String {
        let (depth, durability) = match self {
            Qos::Reliable => (10, "volatile"),
            Qos::Latched => (1, "transient_local"),
        };
        let inf = "\n    sec: 9223372036\n    nsec: 854775807";
        format!(
            "- history: keep_last\n  depth: {depth}\n  reliability: reliable\n  durability: {durability}\n  \
             deadline:{inf}\n  lifespan:{inf}\n  liveliness: automatic\n  liveliness_lease_duration:{inf}\n  \
             avoid_ros_namespace_conventions: false"
        )
    }
}

/// Options of [`BagWriter`].
#[derive(Debug, Clone)]
pub struct BagWriterOptions {
    /// Target size of MCAP chunks in bytes (uncompressed). Smaller chunks lose less to damage, larger ones
    /// index less.
    pub chunk_size: u64,
    /// `ros_distro` written to `metadata.yaml`.
    pub ros_distro: String,
    /// fsync the MCAP file before writing `metadata.yaml` (durability across power loss; like rosbag2 and
    /// rosbags, off by default — interruption safety does not need it).
    pub fsync: bool,
}

impl Default for BagWriterOptions {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            ros_distro: "jazzy".into(),
            fsync: false,
        }
    }
}

/// A topic added to a [`BagWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId(usize);

#[derive(Debug)]
struct TopicState {
    name: String,
    type_name: String,
    type_hash: String,
    qos: Qos,
    channel: u16,
    count: u64,
    sequence: u32,
}

/// What a finished bag holds.
#[derive(Debug, Clone, Default)]
pub struct BagSummary {
    /// Messages written.
    pub message_count: u64,
    /// Serialized message bytes written (CDR payloads).
    pub payload_bytes: u64,
    /// Size of the MCAP file.
    pub file_bytes: u64,
    /// Earliest log time, ns.
    pub start_ns: u64,
    /// Latest log time, ns.
    pub end_ns: u64,
    /// (topic, type, count) per topic, in the order they were added.
    pub topics: Vec<(String, String, u64)>,
}

/// Writes a rosbag2 folder (one MCAP file + `metadata.yaml`) message by message.
pub struct BagWriter {
    dir: PathBuf,
    file_name: String,
    mcap: mcap::Writer<BackgroundFile>,
    topics: Vec<TopicState>,
    by_name: HashMap<String, usize>,
    schemas: HashMap<String, u16>,
    summary: BagSummary,
    options: BagWriterOptions,
    custom_data: BTreeMap<String, String>,
}

impl std::fmt::Debug for BagWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BagWriter")
            .field("dir", &self.dir)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

fn mcap_err(path: &Path, record: Option<String>, e: mcap::McapError) -> Error {
    Error::format(path, record, e.to_string())
}

impl BagWriter {
    /// Creates folder `dir` (which must not exist or be empty) and the MCAP file `<bag_name>_0.mcap` in it.
    /// `bag_name` is the name the finished bag folder will have (it may differ from `dir`'s while writing to
    /// a temporary folder).
    pub fn create(dir: &Path, bag_name: &str, options: BagWriterOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file_name = format!("{bag_name}_0.mcap");
        let path = dir.join(&file_name);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut mcap = mcap::WriteOptions::new()
            .profile("ros2")
            .library(format!("vlm3d {}", env!("CARGO_PKG_VERSION")))
            .compression(None)
            .chunk_size(Some(options.chunk_size))
            // Each chunk is built in memory and written whole, so the file needs no seeking and its writes
            // can go to a background thread.
            .disable_seeking(true)
            // Every chunk keeps its CRC (what readers check per message). The whole-data-section CRC, a
            // second pass over every byte, is off, as in the MCAP C++ writer that `ros2 bag` uses
            // (`enableDataCRC = false` by default); 0 tells readers not to check it.
            .calculate_data_section_crc(false)
            .create(BackgroundFile::new(file, 1 << 20, 4).map_err(|e| Error::io(&path, e))?)
            .map_err(|e| mcap_err(&path, None, e))?;
        let mut meta = BTreeMap::new();
        meta.insert("ROS_DISTRO".to_string(), options.ros_distro.clone());
        mcap.write_metadata(&mcap::records::Metadata {
            name: "rosbag2".into(),
            metadata: meta,
        })
        .map_err(|e| mcap_err(&path, None, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file_name,
            mcap,
            topics: Vec::new(),
            by_name: HashMap::new(),
            schemas: HashMap::new(),
            summary: BagSummary {
                start_ns: u64::MAX,
                ..Default::default()
            },
            options,
            custom_data: BTreeMap::new(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// Adds (or returns the already added) topic `name` carrying messages of type `T`.
    pub fn add_topic<T: RosMessage>(&mut self, name: &str, qos: Qos) -> Result<TopicId> {
        self.add_topic_raw(
            name,
            T::TYPE,
            &T::definition(),
            &super::msgs::type_hash(T::TYPE),
            qos,
        )
    }

    /// Adds a topic given its type name, full `ros2msg` definition text and RIHS01 hash (may be empty).
    pub fn add_topic_raw(
        &mut self,
        name: &str,
        type_name: &str,
        definition: &str,
        type_hash: &str,
        qos: Qos,
    ) -> Result<TopicId> {
        if let Some(&i) = self.by_name.get(name) {
            if self.topics[i].type_name != type_name {
                return Err(Error::invalid(
                    format!("topic {name}"),
                    format!(
                        "already added with type {}, not {type_name}",
                        self.topics[i].type_name
                    ),
                ));
            }
            return Ok(TopicId(i));
        }
        let path = self.path();
        let schema = match self.schemas.get(type_name) {
            Some(&s) => s,
            None => {
                let s = self
                    .mcap
                    .add_schema(type_name, "ros2msg", definition.as_bytes())
                    .map_err(|e| mcap_err(&path, Some(format!("schema {type_name}")), e))?;
                self.schemas.insert(type_name.to_string(), s);
                s
            }
        };
        let mut meta = BTreeMap::new();
        meta.insert("offered_qos_profiles".to_string(), qos.yaml());
        meta.insert("topic_type_hash".to_string(), type_hash.to_string());
        let channel = self
            .mcap
            .add_channel(schema, name, "cdr", &meta)
            .map_err(|e| mcap_err(&path, Some(format!("channel {name}")), e))?;
        self.topics.push(TopicState {
            name: name.to_string(),
            type_name: type_name.to_string(),
            type_hash: type_hash.to_string(),
            qos,
            channel,
            count: 0,
            sequence: 0,
        });
        self.by_name.insert(name.to_string(), self.topics.len() - 1);
        Ok(TopicId(self.topics.len() - 1))
    }

    /// Writes one message; `time_ns` is both its log and publish time.
    pub fn write<T: RosMessage>(
        &mut self,
        topic: TopicId,
        time_ns: u64,
        msg: &T,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        msg.to_cdr_into(scratch);
        self.write_raw(topic, time_ns, scratch)
    }

    /// Writes one already serialized CDR message.
    pub fn write_raw(&mut self, topic: TopicId, time_ns: u64, cdr: &[u8]) -> Result<()> {
        let t = &mut self.topics[topic.0];
        let header = mcap::records::MessageHeader {
            channel_id: t.channel,
            sequence: t.sequence,
            log_time: time_ns,
            publish_time: time_ns,
        };
        t.sequence = t.sequence.wrapping_add(1);
        t.count += 1;
        let record = format!("message {} of {}", t.count, t.name);
        let path = self.dir.join(&self.file_name);
        self.mcap
            .write_to_known_channel(&header, cdr)
            .map_err(|e| mcap_err(&path, Some(record), e))?;
        self.summary.message_count += 1;
        self.summary.payload_bytes += cdr.len() as u64;
        self.summary.start_ns = self.summary.start_ns.min(time_ns);
        self.summary.end_ns = self.summary.end_ns.max(time_ns);
        Ok(())
    }

    /// Sets a `custom_data` entry of `metadata.yaml`.
    pub fn set_custom_data(&mut self, key: &str, value: &str) {
        self.custom_data.insert(key.to_string(), value.to_string());
    }

    /// Messages written so far.
    pub fn message_count(&self) -> u64 {
        self.summary.message_count
    }

    /// Finishes the MCAP file (summary, footer) and then writes `metadata.yaml`, in that order, so that a
    /// folder with `metadata.yaml` always holds a complete MCAP file.
    pub fn finish(mut self) -> Result<BagSummary> {
        let path = self.path();
        self.mcap
            .finish()
            .map_err(|e| mcap_err(&path, Some("summary".into()), e))?;
        let mut summary = std::mem::take(&mut self.summary);
        if summary.message_count == 0 {
            summary.start_ns = 0;
        }
        summary.topics = self
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.type_name.clone(), t.count))
            .collect();
        let meta = self.metadata(&summary);
        let dir = self.dir.clone();
        let file = self
            .mcap
            .into_inner()
            .finish()
            .map_err(|e| Error::io(&path, e))?;
        if self.options.fsync {
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        summary.file_bytes = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let yaml = serde_yaml::to_string(&meta)
            .map_err(|e| Error::format(dir.join("metadata.yaml"), None, e.to_string()))?;
        let meta_path = dir.join("metadata.yaml");
        std::fs::write(&meta_path, yaml).map_err(|e| Error::io(&meta_path, e))?;
        Ok(summary)
    }

    fn metadata(&self, s: &BagSummary) -> MetadataFile {
        let duration = s.end_ns.saturating_sub(s.start_ns);
        MetadataFile {
            rosbag2_bagfile_information: BagInfo {
                version: 9,
                storage_identifier: "mcap".into(),
                duration: Nanos {
                    nanoseconds: duration,
                },
                starting_time: Stamp {
                    nanoseconds_since_epoch: s.start_ns,
                },
                message_count: s.message_count,
                topics_with_message_count: self
                    .topics
                    .iter()
                    .map(|t| TopicWithCount {
                        topic_metadata: TopicMetadata {
                            name: t.name.clone(),
                            type_name: t.type_name.clone(),
                            serialization_format: "cdr".into(),
                            offered_qos_profiles: serde_yaml::from_str(&t.qos.yaml())
                                .unwrap_or_default(),
                            type_description_hash: t.type_hash.clone(),
                        },
                        message_count: t.count,
                    })
                    .collect(),
                compression_format: String::new(),
                compression_mode: String::new(),
                relative_file_paths: vec![self.file_name.clone()],
                files: vec![FileInfo {
                    path: self.file_name.clone(),
                    starting_time: Stamp {
                        nanoseconds_since_epoch: s.start_ns,
                    },
                    duration: Nanos {
                        nanoseconds: duration,
                    },
                    message_count: s.message_count,
                }],
                custom_data: (!self.custom_data.is_empty()).then(|| self.custom_data.clone()),
                ros_distro: self.options.ros_distro.clone(),
            },
        }
    }
}

/// `metadata.yaml` of a rosbag2 folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadataFile {
    /// The one top-level key.
    pub rosbag2_bagfile_information: BagInfo,
}

/// The `rosbag2_bagfile_information` mapping (version 9, as ROS 2 Jazzy writes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BagInfo {
    /// Format version (9).
    pub version: u32,
    /// Storage plugin (`mcap`).
    pub storage_identifier: String,
    /// Last minus first message time.
    pub duration: Nanos,
    /// First message time.
    pub starting_time: Stamp,
    /// Messages in the bag.
    pub message_count: u64,
    /// Topics with their message counts.
    pub topics_with_message_count: Vec<TopicWithCount>,
    /// Bag compression format (empty: none).
    #[serde(default)]
    pub compression_format: String,
    /// Bag compression mode (empty: none).
    #[serde(default)]
    pub compression_mode: String,
    /// Storage files, relative to the folder.
    pub relative_file_paths: Vec<String>,
    /// Per-file information.
    #[serde(default)]
    pub files: Vec<FileInfo>,
    /// Free key/value pairs (`~` when none).
    #[serde(default)]
    pub custom_data: Option<BTreeMap<String, String>>,
    /// ROS distribution that wrote the bag.
    #[serde(default)]
    pub ros_distro: String,
}

/// A duration in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Nanos {
    /// Nanoseconds.
    pub nanoseconds: u64,
}

/// A time in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stamp {
    /// Nanoseconds since the epoch.
    pub nanoseconds_since_epoch: u64,
}

/// One entry of `topics_with_message_count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicWithCount {
    /// The topic.
    pub topic_metadata: TopicMetadata,
    /// Its message count.
    pub message_count: u64,
}

/// A topic's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// Message type, e.g. `sensor_msgs/msg/CompressedImage`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `cdr`.
    pub serialization_format: String,
    /// QoS profiles (a YAML list in version 9, a YAML string before).
    #[serde(default)]
    pub offered_qos_profiles: serde_yaml::Value,
    /// RIHS01 type hash (empty when not computed).
    #[serde(default)]
    pub type_description_hash: String,
}

/// One entry of `files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    /// File name relative to the bag folder.
    pub path: String,
    /// First message time.
    pub starting_time: Stamp,
    /// Last minus first message time.
    pub duration: Nanos,
    /// Messages in the file.
    pub message_count: u64,
}

/// A message read from a bag, still serialized.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Topic name.
    pub topic: Arc<str>,
    /// Message type (the MCAP schema name), e.g. `sensor_msgs/msg/CameraInfo`.
    pub type_name: Arc<str>,
    /// Log time, ns.
    pub log_time: u64,
    /// The CDR bytes (header included).
    pub data: Vec<u8>,
    /// The MCAP file it came from.
    pub file: Arc<Path>,
    /// Its position in the file (0-based, all topics).
    pub index: u64,
}

impl RawMessage {
    /// Decodes the message as `T`, checking the type name; errors name the file, topic and message index.
    pub fn decode<T: RosMessage>(&self) -> Result<T> {
        let record = || {
            format!(
                "message #{} on {} at {} ns",
                self.index, self.topic, self.log_time
            )
        };
        if &*self.type_name != T::TYPE {
            return Err(Error::format(
                &*self.file,
                Some(record()),
                format!("type is {}, expected {}", self.type_name, T::TYPE),
            ));
        }
        T::from_cdr(&self.data)
            .map_err(|e| Error::format(&*self.file, Some(record()), e.to_string()))
    }
}

/// An opened rosbag2 folder (or a single MCAP file) to read.
#[derive(Debug, Clone)]
pub struct BagReader {
    files: Vec<PathBuf>,
    metadata: Option<BagInfo>,
}

impl BagReader {
    /// Opens a bag folder with `metadata.yaml` (its files in order), or a lone `.mcap` file.
    ///
    /// A folder without `metadata.yaml` is refused: it is an unfinished bag (the writer writes the
    /// metadata last).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Ok(Self {
                files: vec![path.to_path_buf()],
                metadata: None,
            });
        }
        let meta_path = path.join("metadata.yaml");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::format(
                    &meta_path,
                    None,
                    "missing: not a rosbag2 folder, or an unfinished one (metadata.yaml is written last)",
                )
            } else {
                Error::io(&meta_path, e)
            }
        })?;
        let meta: MetadataFile = serde_yaml::from_str(&text)
            .map_err(|e| Error::format(&meta_path, None, e.to_string()))?;
        let info = meta.rosbag2_bagfile_information;
        if info.storage_identifier != "mcap" {
            return Err(Error::format(
                &meta_path,
                Some("storage_identifier".into()),
                format!(
                    "storage {:?} is not supported (only mcap)",
                    info.storage_identifier
                ),
            ));
        }
        if !info.compression_mode.is_empty() && !info.compression_mode.eq_ignore_ascii_case("none")
        {
            return Err(Error::format(
                &meta_path,
                Some("compression_mode".into()),
                format!(
                    "bag compression {:?} is not supported",
                    info.compression_mode
                ),
            ));
        }
        let files = info
            .relative_file_paths
            .iter()
            .map(|f| path.join(Path::new(f).file_name().unwrap_or(f.as_ref())))
            .collect();
        Ok(Self {
            files,
            metadata: Some(info),
        })
    }

    /// The storage files, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// `metadata.yaml`'s content, when opened from a folder.
    pub fn metadata(&self) -> Option<&BagInfo> {
        self.metadata.as_ref()
    }

    /// Streams the messages of one topic decoded as `T` (log time, message); other topics are skipped.
    pub fn typed<T: RosMessage>(&self, topic: &str) -> impl Iterator<Item = Result<(u64, T)>> + '_ {
        let topic = topic.to_string();
        self.messages().filter_map(move |m| match m {
            Err(e) => Some(Err(e)),
            Ok(m) if *m.topic == *topic => Some(m.decode::<T>().map(|v| (m.log_time, v))),
            Ok(_) => None,
        })
    }

    /// Streams every message of every file in file order.
    pub fn messages(&self) -> Messages {
        Messages {
            files: self.files.clone().into(),
            next_file: 0,
            current: None,
            failed: false,
        }
    }
}

/// Counts the bytes pulled from the source, to report where damage was found.
struct Counting<R> {
    inner: R,
    pos: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Largest declared uncompressed size accepted for a compressed chunk. The converter writes uncompressed
/// chunks; `ros2 bag record` with a zstd / lz4 storage preset writes chunks of a few MiB (one large message
/// alone in its chunk: tens of MiB). The second reader reserves a record's declared length before
/// decompressing it, so a hostile size beyond this is refused rather than reserved.
const MAX_DECOMPRESSED_CHUNK: u64 = 256 << 20;

/// The records of one MCAP file in order, the ones inside chunks included, every length checked before it is
/// trusted. Hostile files must give errors, not panics or huge allocations, and the mcap crate (0.26) does
/// neither on its own: its record parser reserves a string's claimed length (up to 4 GiB) before reading
/// it, its linear reader buffers whatever length a record header claims, and walking an uncompressed chunk
/// it subtracts each inner record's length from the chunk's remaining bytes unchecked (an overflow panic in
/// debug builds when a length runs past the chunk). So the top-level records come from mcap's sans-io
/// reader with record lengths capped at the file's size and chunks handed over whole; uncompressed chunks
/// are walked here; compressed ones go through a second sans-io reader capped at the chunk's declared
/// uncompressed size; and only schema, channel and message records are parsed, after their string lengths
/// are checked against the record.
struct Records {
    source: Counting<BufReader<File>>,
    linear: mcap::sans_io::LinearReader,
    chunk: Option<Chunk>,
}

/// The chunk being walked.
enum Chunk {
    /// Uncompressed records and the offset of the next one.
    Plain { records: Vec<u8>, at: usize },
    /// A reader over the one chunk record in `stream`, fed from offset `fed`.
    Compressed {
        reader: Box<mcap::sans_io::LinearReader>,
        stream: Vec<u8>,
        fed: usize,
    },
}

/// A record's opcode with a copy of its body when the reader uses it (schemas, channels, messages);
/// other records are only framed.
fn record(op: u8, body: &[u8]) -> (u8, Vec<u8>) {
    use mcap::records::op;
    let used = matches!(op, op::SCHEMA | op::CHANNEL | op::MESSAGE);
    (op, if used { body.to_vec() } else { Vec::new() })
}

/// Reads a little-endian u32 / u64 at `at`.
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Skips the u32-length-prefixed string at `at` in `b`, or `None` when it runs past the end.
fn skip_string(b: &[u8], at: usize) -> Option<usize> {
    let n = le_u32(b, at)? as usize;
    at.checked_add(4 + n).filter(|&end| end <= b.len())
}

/// Whether the `strings` u32-length-prefixed strings after `fixed` bytes of `body`, then (with `map`) a
/// map of string pairs with a u32 byte length, all fit in `body`, walked as mcap's parser walks them.
fn strings_fit(body: &[u8], fixed: usize, strings: usize, map: bool) -> bool {
    let walk = || -> Option<()> {
        let mut at = fixed;
        for _ in 0..strings {
            at = skip_string(body, at)?;
        }
        if map {
            let n = le_u32(body, at)? as usize;
            let start = at + 4;
            at = start;
            while at - start < n {
                at = skip_string(body, at)?;
                at = skip_string(body, at)?;
            }
        }
        Some(())
    };
    walk().is_some()
}

impl Records {
    fn new(source: Counting<BufReader<File>>, file_len: u64) -> Self {
        let limit = usize::try_from(file_len).unwrap_or(usize::MAX);
        Self {
            source,
            linear: mcap::sans_io::LinearReader::new_with_options(
                mcap::sans_io::LinearReaderOptions::default()
                    .with_emit_chunks(true)
                    .with_record_length_limit(limit),
            ),
            chunk: None,
        }
    }

    /// The next record: opcode and, for [`wanted`] opcodes, the body.
    fn next(&mut self) -> Option<std::result::Result<(u8, Vec<u8>), String>> {
        loop {
            if let Some(chunk) = &mut self.chunk {
                match chunk.next() {
                    Some(r) => return Some(r),
                    None => {
                        self.chunk = None;
                        continue;
                    }
                }
            }
            let (op, data) = match self.linear.next_event()? {
                Err(e) => return Some(Err(e.to_string())),
                Ok(mcap::sans_io::LinearReadEvent::ReadRequest(n)) => {
                    let read = loop {
                        match self.source.read(self.linear.insert(n)) {
                            Ok(k) => break k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => return Some(Err(e.to_string())),
                        }
                    };
                    self.linear.notify_read(read);
                    continue;
                }
                Ok(mcap::sans_io::LinearReadEvent::Record { opcode, data }) => (opcode, data),
            };
            if op != mcap::records::op::CHUNK {
                return Some(Ok(record(op, data)));
            }
            match Chunk::new(data) {
                Ok(c) => self.chunk = Some(c),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Chunk {
    /// Checks a chunk record's header against its length (and, uncompressed, the records' CRC).
    fn new(body: &[u8]) -> std::result::Result<Self, String> {
        let bad = |why: &str| Err(format!("chunk record: {why}"));
        // Start and end time, uncompressed size, CRC, compression, records length, records.
        let (Some(uncompressed_size), Some(crc), Some(compression_len)) =
            (le_u64(body, 16), le_u32(body, 24), le_u32(body, 28))
        else {
            return bad("header cut off");
        };
        let name_end = 32 + compression_len as usize;
        let (Some(compression), Some(records_len)) =
            (body.get(32..name_end), le_u64(body, name_end))
        else {
            return bad("header longer than the record");
        };
        let records_at = name_end + 8;
        if records_len > (body.len() - records_at) as u64 {
            return bad(&format!(
                "records length {records_len} exceeds the {} bytes left",
                body.len() - records_at
            ));
        }
        let records = &body[records_at..records_at + records_len as usize];
        if compression.is_empty() {
            if crc != 0 && crc32fast::hash(records) != crc {
                return bad("CRC mismatch");
            }
            return Ok(Chunk::Plain {
                records: records.to_vec(),
                at: 0,
            });
        }
        if uncompressed_size > MAX_DECOMPRESSED_CHUNK {
            return bad(&format!(
                "uncompressed size {uncompressed_size} is over the {MAX_DECOMPRESSED_CHUNK} accepted"
            ));
        }
        // The chunk as a one-record stream for a reader that decompresses it, checks the CRC of what
        // comes out, and refuses inner records longer than the declared uncompressed size.
        let mut stream = Vec::with_capacity(9 + body.len());
        stream.push(mcap::records::op::CHUNK);
        stream.extend_from_slice(&(body.len() as u64).to_le_bytes());
        stream.extend_from_slice(body);
        let reader = mcap::sans_io::LinearReader::new_with_options(
            mcap::sans_io::LinearReaderOptions::default()
                .with_skip_start_magic(true)
                .with_skip_end_magic(true)
                .with_validate_chunk_crcs(true)
                .with_record_length_limit(uncompressed_size as usize),
        );
        Ok(Chunk::Compressed {
            reader: Box::new(reader),
            stream,
            fed: 0,
        })
    }

    fn next(&mut self) -> Option<std::result::Result<(u8, Vec<u8>), String>> {
        match self {
            Chunk::Plain { records, at } => {
                if *at == records.len() {
                    return None;
                }
                let left = records.len() - *at;
                let bad = |why: String| Some(Err(format!("record in chunk: {why}")));
                let (Some(&op), Some(len)) = (records.get(*at), le_u64(records, *at + 1)) else {
                    *at = records.len();
                    return bad(format!(
                        "header cut off by the chunk's end ({left} bytes left)"
                    ));
                };
                if len > (left - 9) as u64 {
                    *at = records.len();
                    return bad(format!(
                        "length {len} exceeds the {} bytes left in the chunk",
                        left - 9
                    ));
                }
                let body = *at + 9..*at + 9 + len as usize;
                *at = body.end;
                Some(Ok(record(op, &records[body])))
            }
            Chunk::Compressed {
                reader,
                stream,
                fed,
            } => loop {
                match reader.next_event()? {
                    Err(e) => return Some(Err(e.to_string())),
                    Ok(mcap::sans_io::LinearReadEvent::ReadRequest(n)) => {
                        let n = n.min(stream.len() - *fed);
                        reader.insert(n).copy_from_slice(&stream[*fed..*fed + n]);
                        reader.notify_read(n);
                        *fed += n;
                    }
                    Ok(mcap::sans_io::LinearReadEvent::Record { opcode, data }) => {
                        return Some(Ok(record(opcode, data)));
                    }
                }
            },
        }
    }
}

struct OpenFile {
    path: Arc<Path>,
    records: Records,
    pos: Arc<std::sync::atomic::AtomicU64>,
    index: u64,
    channels: mcap::read::ChannelAccumulator<'static>,
    /// Past the data end record: the summary repeats schemas and channels, so the rest is only framed.
    past_data_end: bool,
    types: HashMap<u16, (Arc<str>, Arc<str>)>,
}

impl OpenFile {
    /// The next message, or `None` at the end of the file.
    fn next_message(&mut self) -> Option<std::result::Result<RawMessage, String>> {
        use mcap::records::op;
        loop {
            let (opcode, body) = match self.records.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if self.past_data_end {
                continue;
            }
            match opcode {
                op::DATA_END if self.records.chunk.is_none() => self.past_data_end = true,
                op::SCHEMA => {
                    // Id, name, encoding, then the data (whose length mcap checks).
                    if !strings_fit(&body, 2, 2, false) {
                        return Some(Err("schema record: a string runs past the record".into()));
                    }
                    let added = match mcap::parse_record(opcode, &body) {
                        Ok(mcap::records::Record::Schema { header, data }) => self
                            .channels
                            .add_schema(header, Cow::Owned(data.into_owned()))
                            .map_err(|e| e.to_string()),
                        Ok(_) => Err("schema record: not a schema".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = added {
                        return Some(Err(e));
                    }
                }
                op::CHANNEL => {
                    // Id, schema id, topic, encoding, metadata map.
                    if !strings_fit(&body, 4, 2, true) {
                        return Some(Err("channel record: a string runs past the record".into()));
                    }
                    let added = match mcap::parse_record(opcode, &body) {
                        Ok(mcap::records::Record::Channel(c)) => {
                            self.channels.add_channel(c).map_err(|e| e.to_string())
                        }
                        Ok(_) => Err("channel record: not a channel".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = added {
                        return Some(Err(e));
                    }
                }
                op::MESSAGE => {
                    // Channel id, sequence, log time, publish time, data.
                    if body.len() < 22 {
                        return Some(Err("message record: header cut off".into()));
                    }
                    let id = u16::from_le_bytes([body[0], body[1]]);
                    let log_time = le_u64(&body, 6).unwrap_or_default();
                    let Some(channel) = self.channels.get(id) else {
                        return Some(Err(format!("message on unknown channel {id}")));
                    };
                    let (topic, type_name) = self
                        .types
                        .entry(id)
                        .or_insert_with(|| {
                            let ty = channel
                                .schema
                                .as_ref()
                                .map(|s| s.name.as_str())
                                .unwrap_or("");
                            (Arc::from(channel.topic.as_str()), Arc::from(ty))
                        })
                        .clone();
                    let mut data = body;
                    data.drain(..22);
                    let msg = RawMessage {
                        topic,
                        type_name,
                        log_time,
                        data,
                        file: self.path.clone(),
                        index: self.index,
                    };
                    self.index += 1;
                    return Some(Ok(msg));
                }
                _ => {}
            }
        }
    }
}

/// Iterator over a bag's messages (see [`BagReader::messages`]); after an error it yields nothing.
pub struct Messages {
    files: Arc<[PathBuf]>,
    next_file: usize,
    current: Option<OpenFile>,
    failed: bool,
}

impl Iterator for Messages {
    type Item = Result<RawMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                let path = self.files.get(self.next_file)?.clone();
                self.next_file += 1;
                let opened = File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
                let (file_len, file) = match opened {
                    Ok(f) => f,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(Error::io(path, e)));
                    }
                };
                let pos = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let src = Counting {
                    // 1 MiB reads, or fewer for a smaller file: no buffer larger than the file.
                    inner: BufReader::with_capacity(
                        file_len.clamp(4 << 10, 1 << 20) as usize,
                        file,
                    ),
                    pos: pos.clone(),
                };
                self.current = Some(OpenFile {
                    path: path.into(),
                    records: Records::new(src, file_len),
                    pos,
                    index: 0,
                    channels: Default::default(),
                    past_data_end: false,
                    types: HashMap::new(),
                });
            }
            let cur = self.current.as_mut().expect("opened above");
            match cur.next_message() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => {
                    self.failed = true;
                    let at = cur.pos.load(std::sync::atomic::Ordering::Relaxed);
                    return Some(Err(Error::format(
                        &*cur.path,
                        Some(format!(
                            "after {} complete messages, reading near byte offset {at}",
                            cur.index
                        )),
                        format!("damaged or truncated MCAP: {e}"),
                    )));
                }
                Some(Ok(m)) => return Some(Ok(m)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::bag::msgs::{Header, StringMsg, TFMessage};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vlm3d-rosbag-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write_bag(dir: &Path, n: usize, chunk: u64) -> BagSummary {
        let mut w = BagWriter::create(
            dir,
            "bag",
            BagWriterOptions {
                chunk_size: chunk,
                ..Default::default()
            },
        )
        .unwrap();
        let s = w.add_topic::<StringMsg>("/s", Qos::Reliable).unwrap();
        let t = w
            .add_topic::<TFMessage>("/tf_static", Qos::Latched)
            .unwrap();
        let mut scratch = Vec::new();
        w.write(t, 5, &TFMessage::default(), &mut scratch).unwrap();
        for i in 0..n {
            let m = StringMsg {
                data: format!("{i:0100}"),
            };
            w.write(s, 10 + i as u64, &m, &mut scratch).unwrap();
        }
        let _ = Header::default();
        w.finish().unwrap()
    }

    #[test]
    fn written_bag_reads_back_with_metadata() {
        let d = tmp("rt");
        let s = write_bag(&d, 50, 1 << 20);
        assert_eq!(s.message_count, 51);
        let r = BagReader::open(&d).unwrap();
        let meta = r.metadata().unwrap();
        assert_eq!(meta.version, 9);
        assert_eq!(meta.message_count, 51);
        assert_eq!(meta.duration.nanoseconds, 10 + 49 - 5);
        assert_eq!(meta.relative_file_paths, vec!["bag_0.mcap".to_string()]);
        let msgs: Vec<_> = r.messages().collect::<Result<_>>().unwrap();
        assert_eq!(msgs.len(), 51);
        assert_eq!(&*msgs[0].type_name, "tf2_msgs/msg/TFMessage");
        let m: StringMsg = msgs[7].decode().unwrap();
        assert_eq!(m.data, format!("{:0100}", 6));
        let typed: Vec<(u64, StringMsg)> = r.typed("/s").collect::<Result<_>>().unwrap();
        assert_eq!(typed.len(), 50);
        assert_eq!(typed[3].0, 13);
        assert!(msgs[7].decode::<TFMessage>().is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncated_bag_yields_the_messages_before_the_damage() {
        let d = tmp("trunc");
        write_bag(&d, 400, 4096);
        let f = d.join("bag_0.mcap");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let mut ok = 0;
        let mut err = None;
        for m in BagReader::open(&d).unwrap().messages() {
            match m {
                Ok(m) => {
                    if ok > 0 {
                        let s: StringMsg = m.decode().unwrap();
                        assert_eq!(s.data, format!("{:0100}", ok - 1));
                    }
                    ok += 1
                }
                Err(e) => err = Some(e),
            }
        }
        assert!(ok > 50 && ok < 400, "{ok} messages before the damage");
        let e = err
            .expect("an error after the last good message")
            .to_string();
        assert!(e.contains("bag_0.mcap") && e.contains("offset"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Compressed chunks (as `ros2 bag record` may write) go through the second, capped reader.
    #[test]
    fn compressed_chunks_are_read_and_their_damage_is_an_error() {
        for compression in [mcap::Compression::Zstd, mcap::Compression::Lz4] {
            let d = tmp(&format!("{compression:?}"));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("c.mcap");
            let mut w = mcap::WriteOptions::new()
                .profile("ros2")
                .compression(Some(compression))
                .chunk_size(Some(4096))
                .create(std::io::BufWriter::new(File::create(&f).unwrap()))
                .unwrap();
            let def = StringMsg::definition();
            let schema = w
                .add_schema(StringMsg::TYPE, "ros2msg", def.as_bytes())
                .unwrap();
            let ch = w
                .add_channel(schema, "/s", "cdr", &BTreeMap::new())
                .unwrap();
            for i in 0..300u32 {
                let m = StringMsg {
                    data: format!("{i:0100}"),
                };
                let header = mcap::records::MessageHeader {
                    channel_id: ch,
                    sequence: i,
                    log_time: i as u64,
                    publish_time: i as u64,
                };
                w.write_to_known_channel(&header, &m.to_cdr()).unwrap();
            }
            w.finish().unwrap();
            drop(w);
            let r = BagReader::open(&f).unwrap();
            let got: Vec<(u64, StringMsg)> = r.typed("/s").collect::<Result<_>>().unwrap();
            assert_eq!(got.len(), 300, "{compression:?}");
            assert_eq!(
                got[150],
                (
                    150,
                    StringMsg {
                        data: format!("{:0150}", 150).split_off(50),
                    }
                )
            );

            // A damaged byte in the middle of the second chunk's compressed records: the messages of the
            // first chunk, then one error.
            let mut bytes = std::fs::read(&f).unwrap();
            let le = |b: &[u8], at: usize, n: usize| {
                let mut w = [0u8; 8];
                w[..n].copy_from_slice(&b[at..at + n]);
                u64::from_le_bytes(w) as usize
            };
            let mut at = 8;
            let mut seen = 0;
            loop {
                let body = at + 9;
                if bytes[at] == mcap::records::op::CHUNK {
                    seen += 1;
                    if seen == 2 {
                        let name = le(&bytes, body + 28, 4);
                        let records = body + 32 + name + 8;
                        let mid = records + le(&bytes, body + 32 + name, 8) / 2;
                        bytes[mid] ^= 0x5a;
                        break;
                    }
                }
                at = body + le(&bytes, at + 1, 8);
            }
            std::fs::write(&f, &bytes).unwrap();
            let items: Vec<_> = r.messages().collect();
            let errors = items.iter().filter(|m| m.is_err()).count();
            assert!(
                errors <= 1 && items.len() < 300,
                "{compression:?}: {}",
                items.len()
            );
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn unfinished_folder_is_refused() {
        let d = tmp("unfinished");
        std::fs::create_dir_all(&d).unwrap();
        let e = BagReader::open(&d).unwrap_err().to_string();
        assert!(e.contains("metadata.yaml"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
