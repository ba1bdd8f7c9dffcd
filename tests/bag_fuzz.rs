//! Property test: the rosbag2 (MCAP) reader survives hostile files. One small valid bag is converted
//! once; then 10,000 mutated copies of its `.mcap` file (bit flips, truncations, aligned words and the
//! MCAP length / count fields set to huge or off-by-a-few values, and combinations; half of them with the
//! chunk CRCs recomputed so that damaged payloads reach the decoders) are read through [`BagReader`], every
//! message decoded as the type its schema names (and as every other message type), and one in 20 also
//! through the trainer's [`Dataset`]. Every outcome must be `Ok` or `Err`: a panic
//! fails the test naming the mutation, and so does any single allocation, made while reading, larger than
//! the bound of [`alloc_bound`] (a counting global allocator watches the reading thread).
//!
//! Deterministic: proptest runs with a fixed ChaCha seed and no failure persistence.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use vlm3d::data::bag::msgs::{
    BoundingBox3DArrayMsg, CameraInfo, CompressedImage, PointCloud2, RosMessage, StringMsg,
    TFMessage,
};
use vlm3d::data::bag::rosbag::BagReader;
use vlm3d::data::convert::{convert_nuscenes, ConvertOptions};
use vlm3d::data::dataset::{Dataset, DatasetConfig};
use vlm3d::data::synth::{generate, SynthConfig};

// ---------------------------------------------------------------------------------------------------
// Counting allocator.

/// Passes everything to [`System`]; while [`TRACKING`] is on for the calling thread, records the largest
/// single request in [`LARGEST`], and refuses (aborting the process, after naming the mutant on stderr)
/// any request above [`HARD_CAP`], so that a hostile length cannot take the machine's memory.
struct CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Far above any legitimate request for the test bag, far below what would hurt the machine.
const HARD_CAP: usize = 256 << 20;
/// The mutation being read, for the message printed before an abort.
static CURRENT: Mutex<String> = Mutex::new(String::new());

impl CountingAlloc {
    /// Records a request of `size` bytes; false when it must be refused.
    fn note(size: usize) -> bool {
        if !TRACKING.try_with(Cell::get).unwrap_or(false) {
            return true;
        }
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if size <= HARD_CAP {
            return true;
        }
        // Stop tracking so what the report allocates passes through, then name the mutant.
        let _ = TRACKING.try_with(|t| t.set(false));
        let what = CURRENT.try_lock().map(|s| s.clone()).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "bag_fuzz: refused an allocation of {size} bytes while reading mutant {what}"
        );
        false
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Tracks this thread's allocations from creation to drop (also when a panic unwinds through it).
struct Tracking;

impl Tracking {
    fn start() -> Self {
        LARGEST.store(0, Ordering::Relaxed);
        TRACKING.with(|t| t.set(true));
        Tracking
    }

    /// The largest single request since [`Tracking::start`].
    fn largest(&self) -> usize {
        LARGEST.load(Ordering::Relaxed)
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        TRACKING.with(|t| t.set(false));
    }
}

/// The largest single allocation reading (and decoding the messages of) an MCAP file of `file_len` bytes
/// may make.
///
/// What the reader legitimately allocates at once: its `BufReader` (1 MiB, or the file's size when that is
/// smaller); the mcap crate's read buffer, asked for one whole top-level record at a time (a chunk; the
/// reader caps record lengths at the file's size) on top of at most 4 KiB of bytes already read that it
/// keeps before compacting, and grown as a `Vec` grows (to at most twice what is asked); the reader's copy
/// of the chunk it walks and each message's owned copy (smaller than the file); decoded sequences, whose
/// lengths the CDR reader checks against the message's bytes before allocating (a `float64[]` of n
/// elements is 8n bytes on the wire and in memory alike, also grown as a `Vec`). So twice the file, plus
/// [`SLACK`] for those 4 KiB twice over and for the fixed small structures (the 4 KiB minimum `BufReader`,
/// hash maps, names) that even a file of a few bytes gets. Any length field trusted anywhere (1 << 40,
/// u32::MAX, or just a few MiB) breaks it. `metadata.yaml`, which the mutations leave alone, is parsed
/// before the watch starts. Measured: 1.97× at most (a truncated file whose buffer doubled).
fn alloc_bound(file_len: usize) -> usize {
    2 * file_len + SLACK
}

/// See [`alloc_bound`].
const SLACK: usize = 16 << 10;

/// What the dataset may allocate beyond [`alloc_bound`]: it also opens the bag, and libyaml's parse of
/// `metadata.yaml` (unmutated, a few KiB) grows its buffers to 96 KiB.
const METADATA_SLACK: usize = 128 << 10;

// ---------------------------------------------------------------------------------------------------
// Where the MCAP length and count fields of the valid file are.

/// A field of the valid file worth setting to a hostile value.
#[derive(Debug, Clone)]
struct Field {
    /// Byte offset of the field.
    at: usize,
    /// 4 (u32) or 8 (u64).
    width: usize,
    /// What it is, for the report.
    what: &'static str,
}

/// Walks a record body, noting the length / count fields it passes.
struct Walk<'a> {
    b: &'a [u8],
    at: usize,
    end: usize,
    out: &'a mut Vec<Field>,
}

impl Walk<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        (self.at + n <= self.end).then(|| self.at += n)
    }
    fn u32(&mut self, what: Option<&'static str>) -> Option<u32> {
        let v = u32::from_le_bytes(self.b.get(self.at..self.at + 4)?.try_into().ok()?);
        if self.at + 4 > self.end {
            return None;
        }
        if let Some(what) = what {
            self.out.push(Field {
                at: self.at,
                width: 4,
                what,
            });
        }
        self.at += 4;
        Some(v)
    }
    fn u64(&mut self, what: Option<&'static str>) -> Option<u64> {
        let v = u64::from_le_bytes(self.b.get(self.at..self.at + 8)?.try_into().ok()?);
        if self.at + 8 > self.end {
            return None;
        }
        if let Some(what) = what {
            self.out.push(Field {
                at: self.at,
                width: 8,
                what,
            });
        }
        self.at += 8;
        Some(v)
    }
    /// A u32-length-prefixed string or byte array.
    fn string(&mut self, what: &'static str) -> Option<()> {
        let n = self.u32(Some(what))? as usize;
        self.skip(n)
    }
    /// A map with a u32 byte length, of string keys and string values.
    fn string_map(&mut self, what: &'static str) -> Option<()> {
        let n = self.u32(Some(what))? as usize;
        let end = self.at + n;
        while self.at < end {
            self.string("map key length")?;
            self.string("map value length")?;
        }
        Some(())
    }
}

/// Notes the fields of the records in `b[at..end]`; recurses into chunks.
fn walk_records(b: &[u8], mut at: usize, end: usize, out: &mut Vec<Field>) {
    while at + 9 <= end {
        let op = b[at];
        let len = u64::from_le_bytes(b[at + 1..at + 9].try_into().unwrap()) as usize;
        out.push(Field {
            at: at + 1,
            width: 8,
            what: "record length",
        });
        let body = at + 9;
        let Some(body_end) = body.checked_add(len).filter(|&e| e <= end) else {
            return;
        };
        let mut w = Walk {
            b,
            at: body,
            end: body_end,
            out,
        };
        let _ = (|| -> Option<()> {
            match op {
                // Header: profile, library.
                0x01 => {
                    w.string("header profile length")?;
                    w.string("header library length")?;
                }
                // Footer: summary start, summary offset start, CRC.
                0x02 => {
                    w.u64(Some("footer summary start"))?;
                    w.u64(Some("footer summary offset start"))?;
                }
                // Schema: id, name, encoding, data.
                0x03 => {
                    w.skip(2)?;
                    w.string("schema name length")?;
                    w.string("schema encoding length")?;
                    w.string("schema data length")?;
                }
                // Channel: id, schema id, topic, encoding, metadata.
                0x04 => {
                    w.skip(4)?;
                    w.string("channel topic length")?;
                    w.string("channel encoding length")?;
                    w.string_map("channel metadata byte length")?;
                }
                // Message: channel, sequence, log time, publish time, CDR data. The CDR's string lengths
                // and sequence counts sit on 4-byte boundaries (relative to the data after its header).
                0x05 => {
                    w.skip(2 + 4 + 8 + 8)?;
                    let cdr = w.at + 4;
                    let mut p = cdr;
                    while p + 4 <= body_end && p < cdr + 4 * 48 {
                        w.out.push(Field {
                            at: p,
                            width: 4,
                            what: "CDR word (string length / sequence count)",
                        });
                        p += 4;
                    }
                }
                // Chunk: start, end, uncompressed size, CRC, compression, records length, records.
                0x06 => {
                    w.skip(16)?;
                    w.u64(Some("chunk uncompressed size"))?;
                    w.u32(Some("chunk CRC"))?;
                    w.string("chunk compression length")?;
                    let n = w.u64(Some("chunk records length"))? as usize;
                    let start = w.at;
                    walk_records(b, start, (start + n).min(body_end), w.out);
                }
                // Message index: channel, records (byte length).
                0x07 => {
                    w.skip(2)?;
                    w.u32(Some("message index byte length"))?;
                }
                // Chunk index: times, chunk start, chunk length, offsets map, index length, compression,
                // sizes.
                0x08 => {
                    w.skip(16)?;
                    w.u64(Some("chunk index chunk start"))?;
                    w.u64(Some("chunk index chunk length"))?;
                    let n = w.u32(Some("chunk index offsets byte length"))? as usize;
                    w.skip(n)?;
                    w.u64(Some("chunk index message index length"))?;
                    w.string("chunk index compression length")?;
                    w.u64(Some("chunk index compressed size"))?;
                    w.u64(Some("chunk index uncompressed size"))?;
                }
                // Statistics: counts, then channel message counts (byte length).
                0x0B => {
                    w.u64(Some("statistics message count"))?;
                    w.skip(2)?;
                    w.u32(Some("statistics channel count"))?;
                    w.u32(Some("statistics attachment count"))?;
                    w.u32(Some("statistics metadata count"))?;
                    w.u32(Some("statistics chunk count"))?;
                    w.skip(16)?;
                    w.u32(Some("statistics channel counts byte length"))?;
                }
                // Metadata: name, map.
                0x0C => {
                    w.string("metadata name length")?;
                    w.string_map("metadata map byte length")?;
                }
                // Metadata index: offset, length, name.
                0x0D => {
                    w.u64(Some("metadata index offset"))?;
                    w.u64(Some("metadata index length"))?;
                    w.string("metadata index name length")?;
                }
                // Summary offset: group opcode, start, length.
                0x0E => {
                    w.skip(1)?;
                    w.u64(Some("summary offset start"))?;
                    w.u64(Some("summary offset length"))?;
                }
                _ => {}
            }
            Some(())
        })();
        at = body_end;
    }
}

/// The length / count fields of a valid MCAP file.
fn catalog(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    walk_records(b, 8, b.len() - 8, &mut out);
    out
}

/// A chunk of the valid file: where its CRC is, and the range of its records.
#[derive(Debug, Clone)]
struct ChunkAt {
    crc_at: usize,
    records: std::ops::Range<usize>,
}

/// The chunks of a valid MCAP file (top-level chunk records: start and end time, uncompressed size, CRC,
/// compression, records length, records).
fn chunks(b: &[u8]) -> Vec<ChunkAt> {
    let le = |at: usize, n: usize| get(b, at, n) as usize;
    let mut out = Vec::new();
    let mut at = 8;
    while at + 9 <= b.len() - 8 {
        let body = at + 9;
        if b[at] == 0x06 {
            let name = le(body + 28, 4);
            let start = body + 32 + name + 8;
            out.push(ChunkAt {
                crc_at: body + 24,
                records: start..start + le(body + 32 + name, 8),
            });
        }
        at = body + le(at + 1, 8);
    }
    out
}

/// Recomputes the CRC of each chunk of the valid file over the same bytes of the mutant, as far as the
/// mutant reaches, so that damaged payloads get past the chunk CRC check into the message decoders.
fn fix_crcs(b: &mut [u8], chunks: &[ChunkAt]) {
    for c in chunks {
        if c.records.end <= b.len() {
            let crc = crc32fast::hash(&b[c.records.clone()]);
            put(b, c.crc_at, 4, u64::from(crc));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Mutations.

/// Hostile values for a length / count field (u32 fields take the low 32 bits, so u64::MAX is u32::MAX).
const HUGE: [u64; 14] = [
    u64::MAX,
    u64::MAX - 8,
    u64::MAX / 2,
    1 << 63,
    1 << 40,
    1 << 32,
    u32::MAX as u64,
    u32::MAX as u64 - 8,
    1 << 31,
    1 << 24,
    1 << 20,
    0,
    1,
    9,
];

/// What to write into a field.
#[derive(Debug, Clone)]
enum Value {
    /// One of [`HUGE`].
    Huge(usize),
    /// The original value plus a small delta (wrapping): lengths that are almost right.
    Delta(i64),
    /// The file's length plus a small delta: just past the end.
    FileLen(i64),
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flips bit `.1` of byte `.0` (modulo the length).
    Flips(Vec<(usize, u8)>),
    /// Keeps the first `.0` bytes (modulo the length).
    Truncate(usize),
    /// Writes a hostile value into the aligned u32 (or u64) at `at` (modulo the length, aligned down).
    Word { at: usize, wide: bool, value: usize },
    /// Writes a value into catalogued field `index` (modulo the catalogue).
    Field { index: usize, value: Value },
    /// Several of the above, in order.
    Combo(Vec<Mutation>),
}

fn simple_mutation(len: usize, fields: usize) -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        3 => (0..HUGE.len()).prop_map(Value::Huge),
        2 => (-64i64..=64).prop_map(Value::Delta),
        1 => (-16i64..=16).prop_map(Value::FileLen),
    ];
    prop_oneof![
        3 => prop::collection::vec((0..len, 0u8..8), 1..=16).prop_map(Mutation::Flips),
        1 => (0..len).prop_map(Mutation::Truncate),
        2 => (0..len, any::<bool>(), 0..HUGE.len())
            .prop_map(|(at, wide, value)| Mutation::Word { at, wide, value }),
        5 => (0..fields, value).prop_map(|(index, value)| Mutation::Field { index, value }),
    ]
}

/// A mutation, and whether the chunk CRCs are recomputed after it (half the time: without, nearly every
/// damaged payload stops at the CRC check and the decoders never see it).
fn mutation(len: usize, fields: usize) -> impl Strategy<Value = (Mutation, bool)> {
    let m = prop_oneof![
        6 => simple_mutation(len, fields),
        1 => prop::collection::vec(simple_mutation(len, fields), 2..=4).prop_map(Mutation::Combo),
    ];
    (m, any::<bool>())
}

fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    if at + width <= b.len() {
        b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

fn get(b: &[u8], at: usize, width: usize) -> u64 {
    let mut w = [0u8; 8];
    if at + width <= b.len() {
        w[..width].copy_from_slice(&b[at..at + width]);
    }
    u64::from_le_bytes(w)
}

/// Applies `m` to `b`; `fields` and `file_len` describe the valid file.
fn apply(m: &Mutation, b: &mut Vec<u8>, fields: &[Field], file_len: usize) {
    if b.is_empty() {
        return;
    }
    match m {
        Mutation::Flips(flips) => {
            for &(at, bit) in flips {
                let n = b.len();
                b[at % n] ^= 1 << bit;
            }
        }
        Mutation::Truncate(keep) => {
            let n = b.len();
            b.truncate(keep % n);
        }
        Mutation::Word { at, wide, value } => {
            let width = if *wide { 8 } else { 4 };
            let at = (at % b.len()) & !(width - 1);
            put(b, at, width, HUGE[*value]);
        }
        Mutation::Field { index, value } => {
            let f = &fields[index % fields.len()];
            let v = match value {
                Value::Huge(i) => HUGE[*i],
                Value::Delta(d) => get(b, f.at, f.width).wrapping_add(*d as u64),
                Value::FileLen(d) => (file_len as u64).wrapping_add(*d as u64),
            };
            put(b, f.at, f.width, v);
        }
        Mutation::Combo(ms) => {
            for m in ms {
                apply(m, b, fields, file_len);
            }
        }
    }
}

/// The mutation with the catalogued fields it touches named, for reports.
fn describe(m: &Mutation, fields: &[Field]) -> String {
    match m {
        Mutation::Field { index, value } => {
            let f = &fields[index % fields.len()];
            format!("{} at byte {} := {value:?}", f.what, f.at)
        }
        Mutation::Combo(ms) => ms
            .iter()
            .map(|m| describe(m, fields))
            .collect::<Vec<_>>()
            .join(", then "),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Reading.

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Mutants whose every message read and decoded.
    clean: u64,
    /// Mutants whose reading ended in an error.
    read_errors: u64,
    /// Mutants that read to the end, with at least one message that did not decode as its type.
    decode_errors: u64,
    /// Messages read, over all mutants.
    messages: u64,
    /// Dataset runs, and how many of them ended in an error.
    dataset_runs: u64,
    dataset_errors: u64,
    /// Largest single allocation seen while reading any mutant, and in the dataset.
    largest: usize,
    dataset_largest: usize,
    /// Largest ratio of the largest single allocation to the mutant's size (mutants of 16 KiB or more).
    ratio: f64,
}

/// Decodes `data` as every message type the converter writes; errors are fine.
fn decode_as_every_type(data: &[u8]) {
    let _ = CompressedImage::from_cdr(data);
    let _ = CameraInfo::from_cdr(data);
    let _ = PointCloud2::from_cdr(data);
    let _ = TFMessage::from_cdr(data);
    let _ = BoundingBox3DArrayMsg::from_cdr(data);
    let _ = StringMsg::from_cdr(data);
}

/// What reading one bag gave.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    /// Messages read before the end or the error.
    messages: u64,
    /// Whether reading ended in an error.
    read_error: bool,
    /// Messages that did not decode as the type their schema names.
    bad: u64,
    /// The largest single allocation made while reading and decoding.
    largest: usize,
}

/// Reads every message of `bag`, decoding each as the type its schema names (and as every other type).
/// Allocations are watched from after `metadata.yaml` (which the mutations leave alone) is parsed.
fn read_bag(bag: &Path) -> Read {
    let mut r = Read::default();
    let reader = match BagReader::open(bag) {
        Ok(b) => b,
        Err(_) => {
            r.read_error = true;
            return r;
        }
    };
    let t = Tracking::start();
    for m in reader.messages() {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                // The error names the file.
                assert!(e.to_string().contains("bag_0.mcap"), "{e}");
                r.read_error = true;
                break;
            }
        };
        r.messages += 1;
        let ok = match &*m.type_name {
            CompressedImage::TYPE => m.decode::<CompressedImage>().is_ok(),
            CameraInfo::TYPE => m.decode::<CameraInfo>().is_ok(),
            PointCloud2::TYPE => m.decode::<PointCloud2>().is_ok(),
            TFMessage::TYPE => m.decode::<TFMessage>().is_ok(),
            BoundingBox3DArrayMsg::TYPE => m.decode::<BoundingBox3DArrayMsg>().is_ok(),
            StringMsg::TYPE => m.decode::<StringMsg>().is_ok(),
            _ => false,
        };
        r.bad += u64::from(!ok);
        decode_as_every_type(&m.data);
    }
    r.largest = t.largest();
    r
}

/// Runs the trainer's dataset over `bag`: whether it ended in an error, and the largest single allocation
/// it made (`metadata.yaml` parsing included).
fn read_dataset(bag: &Path) -> (bool, usize) {
    let t = Tracking::start();
    let mut failed = false;
    for e in Dataset::new([bag.to_path_buf()], DatasetConfig::default()) {
        failed |= e.is_err();
    }
    (failed, t.largest())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Builds a small valid bag: one scene, two samples, six 64×36 cameras, no LiDAR, 16 KiB chunks (so the
/// file has several chunks and message indexes).
fn make_bag(root: &Path) -> PathBuf {
    let data = root.join("nuscenes");
    let cfg = SynthConfig {
        scenes: 1,
        seed: 5,
        width: 64,
        height: 36,
        samples_per_scene: 2,
        objects_per_scene: 6,
        progress: false,
        ..Default::default()
    };
    generate(&data, &cfg).unwrap();
    let bag = root.join("bag");
    let mut o = ConvertOptions::new(&bag);
    o.progress = false;
    o.lidar = false;
    o.chunk_size = 16 * 1024;
    convert_nuscenes(&data, &cfg.version, &o).unwrap();
    bag
}

const SEED: [u8; 32] = *b"vlm3d bag fuzz: fixed seed 00001";
const CASES: u32 = 10_000;
/// One mutant in this many also goes through the dataset.
const DATASET_EVERY: u64 = 20;

#[test]
fn mutated_bags_are_errors_never_panics_or_huge_allocations() {
    let t0 = Instant::now();
    let root = std::env::temp_dir().join(format!("vlm3d-bag-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let bag = make_bag(&root);
    let mcap = bag.join("bag_0.mcap");
    let valid = std::fs::read(&mcap).unwrap();
    let file_len = valid.len();
    let fields = catalog(&valid);
    let chunks = chunks(&valid);

    // The valid bag reads clean, within the bound.
    let r = read_bag(&bag);
    let (dataset_err, dataset_largest) = read_dataset(&bag);
    println!(
        "valid bag: {file_len} bytes, {} messages, {} chunks, {} fields catalogued; largest allocation reading it {} \
         bytes, in the dataset {dataset_largest} (bounds {} and {})",
        r.messages,
        chunks.len(),
        fields.len(),
        r.largest,
        alloc_bound(file_len),
        alloc_bound(file_len) + METADATA_SLACK
    );
    assert!(
        r.messages > 20 && !r.read_error && r.bad == 0 && !dataset_err,
        "{r:?} {dataset_err}"
    );
    assert!(r.largest <= alloc_bound(file_len));
    assert!(dataset_largest <= alloc_bound(file_len) + METADATA_SLACK);
    assert!(
        fields.iter().any(|f| f.what == "chunk records length")
            && fields.iter().any(|f| f.what == "channel topic length")
            && fields.iter().any(|f| f.what == "record length")
            && chunks.len() > 2,
        "the catalogue found the MCAP structure"
    );

    let tally = Cell::new(Tally::default());
    let case = Cell::new(0u64);
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let result = runner.run(&mutation(file_len, fields.len()), |(m, crcs)| {
        let i = case.get();
        case.set(i + 1);
        let mut bytes = valid.clone();
        apply(&m, &mut bytes, &fields, file_len);
        if crcs {
            fix_crcs(&mut bytes, &chunks);
        }
        std::fs::write(&mcap, &bytes).unwrap();
        let what = describe(&m, &fields) + if crcs { ", chunk CRCs recomputed" } else { "" };
        *CURRENT.lock().unwrap() = what.clone();
        let with_dataset = i.is_multiple_of(DATASET_EVERY);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (read_bag(&bag), with_dataset.then(|| read_dataset(&bag)))
        }));
        let (r, dataset) = outcome.map_err(|p| {
            TestCaseError::fail(format!(
                "panic reading mutant ({} of {} bytes): {what}: {}",
                bytes.len(),
                file_len,
                panic_text(&*p)
            ))
        })?;
        let bound = alloc_bound(bytes.len());
        if r.largest > bound {
            return Err(TestCaseError::fail(format!(
                "allocation of {} bytes (bound {bound}) reading mutant: {what}",
                r.largest
            )));
        }
        if let Some((_, largest)) = dataset.filter(|d| d.1 > bound + METADATA_SLACK) {
            return Err(TestCaseError::fail(format!(
                "allocation of {largest} bytes (bound {}) in the dataset over mutant: {what}",
                bound + METADATA_SLACK
            )));
        }
        let mut t = tally.get();
        t.messages += r.messages;
        if r.read_error {
            t.read_errors += 1;
        } else if r.bad > 0 {
            t.decode_errors += 1;
        } else {
            t.clean += 1;
        }
        if let Some((e, largest)) = dataset {
            t.dataset_runs += 1;
            t.dataset_errors += u64::from(e);
            t.dataset_largest = t.dataset_largest.max(largest);
        }
        t.largest = t.largest.max(r.largest);
        if bytes.len() >= 16 << 10 {
            t.ratio = t.ratio.max(r.largest as f64 / bytes.len() as f64);
        }
        tally.set(t);
        Ok(())
    });
    let t = tally.get();
    println!(
        "{} mutants passed ({} cases run): {} read clean, {} ended in a read error, {} read to the end \
         with messages that did not decode; {} messages read; the dataset ran over {} of them, {} ended \
         in an error; largest single allocation while reading {} bytes (at most {:.2}× the mutant's \
         size for mutants of 16 KiB or more; bound 2× + {SLACK}), in the dataset {}; {:.1} s",
        t.clean + t.read_errors + t.decode_errors,
        case.get(),
        t.clean,
        t.read_errors,
        t.decode_errors,
        t.messages,
        t.dataset_runs,
        t.dataset_errors,
        t.largest,
        t.ratio,
        t.dataset_largest,
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(t.clean + t.read_errors + t.decode_errors >= u64::from(CASES));
    assert!(
        t.read_errors > 0 && t.clean > 0,
        "mutations both damage and spare"
    );
}
