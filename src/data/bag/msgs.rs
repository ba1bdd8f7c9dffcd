//! The ROS 2 messages the converter writes and the dataset reads, as plain Rust structs with CDR
//! encoding/decoding, and their message definitions in the `ros2msg` text form that `ros2 bag record` embeds
//! in MCAP schemas (the type's own `.msg` text, then for every dependency a line of 80 `=`, a
//! `MSG: pkg/msg/Type` line and that type's text).
//!
//! Field order, names and types follow ROS 2 Jazzy's interface definitions; `vlm3d/msg/BoundingBox3D` and
//! `BoundingBox3DArray` follow this package's `msg/` folder (comments are dropped: they do not change the
//! wire format or the parsed type).
use super::cdr::{CdrReader, CdrResult, CdrWriter};

/// A ROS 2 message type that can be CDR-encoded as a field or as a whole message.
pub trait RosMessage: Sized {
    /// The full type name, e.g. `sensor_msgs/msg/CompressedImage`.
    const TYPE: &'static str;

    /// Appends the fields (no encapsulation header) to `w`.
    fn write(&self, w: &mut CdrWriter);

    /// Reads the fields (after the encapsulation header) from `r`.
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self>;

    /// The complete `ros2msg` definition text with dependencies, as embedded in an MCAP schema.
    fn definition() -> String {
        full_definition(Self::TYPE)
    }

    /// Serializes to a complete CDR message (header included).
    fn to_cdr(&self) -> Vec<u8> {
        let mut w = CdrWriter::new();
        self.write(&mut w);
        w.into_bytes()
    }

    /// Serializes into `buf` (cleared first), reusing its allocation.
    fn to_cdr_into(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::reuse(std::mem::take(buf));
        self.write(&mut w);
        *buf = w.into_bytes();
    }

    /// Deserializes a complete CDR message (header included).
    fn from_cdr(data: &[u8]) -> CdrResult<Self> {
        let mut r = CdrReader::new(data)?;
        let v = Self::read(&mut r)?;
        // Up to 3 bytes of trailing padding are allowed (writers pad to 4).
        if r.remaining() > 3 {
            return Err(super::cdr::CdrError {
                offset: r.position(),
                why: format!("{} trailing bytes after a {}", r.remaining(), Self::TYPE),
            });
        }
        Ok(v)
    }
}

/// A line of 80 `=` that separates definitions in the `ros2msg` concatenated format.
pub const DEFINITION_SEPARATOR: &str =
    "================================================================================";

/// (type, own .msg text, direct dependencies) for every type this module knows.
const DEFINITIONS: &[(&str, &str, &[&str])] = &[
    ("builtin_interfaces/msg/Time", "int32 sec\nuint32 nanosec\n", &[]),
    (
        "std_msgs/msg/Header",
        "builtin_interfaces/Time stamp\nstring frame_id\n",
        &["builtin_interfaces/msg/Time"],
    ),
    ("std_msgs/msg/String", "string data\n", &[]),
    ("geometry_msgs/msg/Vector3", "float64 x\nfloat64 y\nfloat64 z\n", &[]),
    ("geometry_msgs/msg/Point", "float64 x\nfloat64 y\nfloat64 z\n", &[]),
    (
        "geometry_msgs/msg/Quaternion",
        "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
        &[],
    ),
    (
        "geometry_msgs/msg/Pose",
        "Point position\nQuaternion orientation\n",
        &["geometry_msgs/msg/Point", "geometry_msgs/msg/Quaternion"],
    ),
    (
        "geometry_msgs/msg/Transform",
        "Vector3 translation\nQuaternion rotation\n",
        &["geometry_msgs/msg/Vector3", "geometry_msgs/msg/Quaternion"],
    ),
    (
        "geometry_msgs/msg/TransformStamped",
        "std_msgs/Header header\nstring child_frame_id\nTransform transform\n",
        &["std_msgs/msg/Header", "geometry_msgs/msg/Transform"],
    ),
    (
        "tf2_msgs/msg/TFMessage",
        "geometry_msgs/TransformStamped[] transforms\n",
        &["geometry_msgs/msg/TransformStamped"],
    ),
    (
        "sensor_msgs/msg/CompressedImage",
        "std_msgs/Header header\nstring format\nuint8[] data\n",
        &["std_msgs/msg/Header"],
    ),
    (
        "sensor_msgs/msg/RegionOfInterest",
        "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n",
        &[],
    ),
    (
        "sensor_msgs/msg/CameraInfo",
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\n\
         float64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\nRegionOfInterest roi\n",
        &["std_msgs/msg/Header", "sensor_msgs/msg/RegionOfInterest"],
    ),
    (
        "sensor_msgs/msg/PointField",
        "uint8 INT8    = 1\nuint8 UINT8   = 2\nuint8 INT16   = 3\nuint8 UINT16  = 4\nuint8 INT32   = 5\n\
         uint8 UINT32  = 6\nuint8 FLOAT32 = 7\nuint8 FLOAT64 = 8\n\
         string name\nuint32 offset\nuint8 datatype\nuint32 count\n",
        &[],
    ),
    (
        "sensor_msgs/msg/PointCloud2",
        "std_msgs/Header header\nuint32 height\nuint32 width\nPointField[] fields\nbool is_bigendian\n\
         uint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n",
        &["std_msgs/msg/Header", "sensor_msgs/msg/PointField"],
    ),
    (
        "vlm3d/msg/BoundingBox3D",
        "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\nstring label\nfloat32 score\nstring camera\n\
         string instance_id\n",
        &["geometry_msgs/msg/Pose", "geometry_msgs/msg/Vector3"],
    ),
    (
        "vlm3d/msg/BoundingBox3DArray",
        "std_msgs/Header header\nstring prompt\nBoundingBox3D[] boxes\n",
        &["std_msgs/msg/Header", "vlm3d/msg/BoundingBox3D"],
    ),
];

fn lookup(name: &str) -> &'static (&'static str, &'static str, &'static [&'static str]) {
    DEFINITIONS
        .iter()
        .find(|d| d.0 == name)
        .unwrap_or_else(|| panic!("no message definition for {name}"))
}

/// The complete `ros2msg` definition of a known type: its own text, then each transitive dependency once
/// (depth-first, in field order) after a separator line and `MSG: pkg/msg/Type`.
///
/// # Panics
/// On a type this module does not define (a programming error).
pub fn full_definition(name: &str) -> String {
    fn visit(name: &str, seen: &mut Vec<&'static str>) {
        for dep in lookup(name).2 {
            if !seen.contains(dep) {
                seen.push(dep);
                visit(dep, seen);
            }
        }
    }
    let mut seen = Vec::new();
    visit(name, &mut seen);
    let mut out = lookup(name).1.to_string();
    for dep in seen {
        out.push_str(DEFINITION_SEPARATOR);
        out.push_str("\nMSG: ");
        out.push_str(dep);
        out.push('\n');
        out.push_str(lookup(dep).1);
    }
    out
}

/// The RIHS01 type description hash (REP 2011) of a type this module defines, as rosbag2 Jazzy records it.
///
/// # Panics
/// On a type this module does not define (a programming error).
pub fn type_hash(name: &str) -> String {
    super::typehash::rihs01(name, &|t| {
        DEFINITIONS
            .iter()
            .find(|d| d.0 == t)
            .map(|d| d.1.to_string())
    })
    .unwrap_or_else(|| panic!("no message definition for {name} or a dependency"))
}

/// The full `ros2msg` definition and RIHS01 hash of any message type: this module's own types, else the
/// `.msg` files of a ROS 2 install (`<prefix>/share/<pkg>/msg/<Type>.msg` for each prefix, e.g. the entries
/// of `AMENT_PREFIX_PATH`). `None` when the type or one of its dependencies is found nowhere.
pub fn definition_and_hash(
    type_name: &str,
    prefixes: &[std::path::PathBuf],
) -> Option<(String, String)> {
    if DEFINITIONS.iter().any(|d| d.0 == type_name) {
        return Some((full_definition(type_name), type_hash(type_name)));
    }
    let text_of = |t: &str| -> Option<String> {
        let (pkg, rest) = t.split_once('/')?;
        let ty = rest.strip_prefix("msg/")?;
        prefixes.iter().find_map(|p| {
            std::fs::read_to_string(
                p.join("share")
                    .join(pkg)
                    .join("msg")
                    .join(format!("{ty}.msg")),
            )
            .ok()
        })
    };
    definition_and_hash_with(type_name, &text_of)
}

/// [`definition_and_hash`] with the type texts from `text_of`.
fn definition_and_hash_with(
    type_name: &str,
    text_of: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    let own = text_of(type_name)?;
    // Dependencies depth-first in field order, each once, as rosbag2 writes them.
    let mut seen: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    fn visit(
        t: &str,
        text: &str,
        text_of: &dyn Fn(&str) -> Option<String>,
        seen: &mut Vec<String>,
        texts: &mut Vec<String>,
    ) -> Option<()> {
        let pkg = t.split('/').next().unwrap_or("");
        for dep in super::typehash::nested_types(text, pkg) {
            if !seen.contains(&dep) {
                let dep_text = text_of(&dep)?;
                seen.push(dep.clone());
                texts.push(dep_text.clone());
                visit(&dep, &dep_text, text_of, seen, texts)?;
            }
        }
        Some(())
    }
    visit(type_name, &own, text_of, &mut seen, &mut texts)?;
    let mut out = own;
    for (dep, text) in seen.iter().zip(&texts) {
        out.push_str(DEFINITION_SEPARATOR);
        out.push_str("\nMSG: ");
        out.push_str(dep);
        out.push('\n');
        out.push_str(text);
    }
    let hash = super::typehash::rihs01(type_name, text_of)?;
    Some((out, hash))
}

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Time {
    /// Seconds.
    pub sec: i32,
    /// Nanoseconds in [0, 1e9).
    pub nanosec: u32,
}

impl Time {
    /// The time of a nanosecond count since the epoch.
    pub fn from_nanos(ns: u64) -> Self {
        Self {
            sec: (ns / 1_000_000_000) as i32,
            nanosec: (ns % 1_000_000_000) as u32,
        }
    }

    /// Nanoseconds since the epoch (negative times clamp to 0).
    pub fn to_nanos(&self) -> u64 {
        (self.sec.max(0) as u64) * 1_000_000_000 + self.nanosec as u64
    }
}

impl RosMessage for Time {
    const TYPE: &'static str = "builtin_interfaces/msg/Time";
    fn write(&self, w: &mut CdrWriter) {
        w.i32(self.sec);
        w.u32(self.nanosec);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            sec: r.i32()?,
            nanosec: r.u32()?,
        })
    }
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Header {
    /// Time stamp.
    pub stamp: Time,
    /// Frame of the data.
    pub frame_id: String,
}

impl Header {
    /// A header at `ns` nanoseconds in `frame_id`.
    pub fn new(ns: u64, frame_id: impl Into<String>) -> Self {
        Self {
            stamp: Time::from_nanos(ns),
            frame_id: frame_id.into(),
        }
    }
}

impl RosMessage for Header {
    const TYPE: &'static str = "std_msgs/msg/Header";
    fn write(&self, w: &mut CdrWriter) {
        self.stamp.write(w);
        w.string(&self.frame_id);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            stamp: Time::read(r)?,
            frame_id: r.string()?,
        })
    }
}

/// `std_msgs/msg/String`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StringMsg {
    /// The text.
    pub data: String,
}

impl RosMessage for StringMsg {
    const TYPE: &'static str = "std_msgs/msg/String";
    fn write(&self, w: &mut CdrWriter) {
        w.string(&self.data);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self { data: r.string()? })
    }
}

macro_rules! xyz_msg {
    ($name:ident, $ty:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Default)]
        pub struct $name {
            /// x.
            pub x: f64,
            /// y.
            pub y: f64,
            /// z.
            pub z: f64,
        }

        impl RosMessage for $name {
            const TYPE: &'static str = $ty;
            fn write(&self, w: &mut CdrWriter) {
                w.f64(self.x);
                w.f64(self.y);
                w.f64(self.z);
            }
            fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
                Ok(Self {
                    x: r.f64()?,
                    y: r.f64()?,
                    z: r.f64()?,
                })
            }
        }
    };
}

xyz_msg!(
    Vector3,
    "geometry_msgs/msg/Vector3",
    "`geometry_msgs/msg/Vector3`."
);
xyz_msg!(
    Point,
    "geometry_msgs/msg/Point",
    "`geometry_msgs/msg/Point`."
);

/// `geometry_msgs/msg/Quaternion` (x, y, z, w order on the wire).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w.
    pub w: f64,
}

impl Default for Quaternion {
    fn default() -> Self {
        Self {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        }
    }
}

impl RosMessage for Quaternion {
    const TYPE: &'static str = "geometry_msgs/msg/Quaternion";
    fn write(&self, w: &mut CdrWriter) {
        w.f64(self.x);
        w.f64(self.y);
        w.f64(self.z);
        w.f64(self.w);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            x: r.f64()?,
            y: r.f64()?,
            z: r.f64()?,
            w: r.f64()?,
        })
    }
}

/// `geometry_msgs/msg/Pose`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pose {
    /// Position.
    pub position: Point,
    /// Orientation.
    pub orientation: Quaternion,
}

impl RosMessage for Pose {
    const TYPE: &'static str = "geometry_msgs/msg/Pose";
    fn write(&self, w: &mut CdrWriter) {
        self.position.write(w);
        self.orientation.write(w);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            position: Point::read(r)?,
            orientation: Quaternion::read(r)?,
        })
    }
}

/// `geometry_msgs/msg/Transform`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Transform {
    /// Translation.
    pub translation: Vector3,
    /// Rotation.
    pub rotation: Quaternion,
}

impl RosMessage for Transform {
    const TYPE: &'static str = "geometry_msgs/msg/Transform";
    fn write(&self, w: &mut CdrWriter) {
        self.translation.write(w);
        self.rotation.write(w);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            translation: Vector3::read(r)?,
            rotation: Quaternion::read(r)?,
        })
    }
}

/// `geometry_msgs/msg/TransformStamped`: the pose of `child_frame_id` in `header.frame_id`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransformStamped {
    /// Stamp and parent frame.
    pub header: Header,
    /// Child frame.
    pub child_frame_id: String,
    /// Child → parent transform.
    pub transform: Transform,
}

impl RosMessage for TransformStamped {
    const TYPE: &'static str = "geometry_msgs/msg/TransformStamped";
    fn write(&self, w: &mut CdrWriter) {
        self.header.write(w);
        w.string(&self.child_frame_id);
        self.transform.write(w);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            header: Header::read(r)?,
            child_frame_id: r.string()?,
            transform: Transform::read(r)?,
        })
    }
}

fn write_seq<T: RosMessage>(w: &mut CdrWriter, items: &[T]) {
    w.seq_len(items.len());
    for it in items {
        it.write(w);
    }
}

fn read_seq<T: RosMessage>(r: &mut CdrReader<'_>, min_elem: usize) -> CdrResult<Vec<T>> {
    let n = r.seq_len(min_elem)?;
    (0..n).map(|_| T::read(r)).collect()
}

/// `tf2_msgs/msg/TFMessage`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TFMessage {
    /// The transforms.
    pub transforms: Vec<TransformStamped>,
}

impl RosMessage for TFMessage {
    const TYPE: &'static str = "tf2_msgs/msg/TFMessage";
    fn write(&self, w: &mut CdrWriter) {
        write_seq(w, &self.transforms);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            transforms: read_seq(r, 8)?,
        })
    }
}

/// `sensor_msgs/msg/CompressedImage`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompressedImage {
    /// Stamp and camera frame.
    pub header: Header,
    /// Codec, e.g. `jpeg`.
    pub format: String,
    /// The compressed image bytes.
    pub data: Vec<u8>,
}

impl CompressedImage {
    /// The CDR encoding of a message with `data_len` bytes of data, up to where the data starts: followed by
    /// the data it is the whole message (so a file read after free room is framed in place).
    pub fn cdr_prefix(header: &Header, format: &str, data_len: usize) -> Vec<u8> {
        let mut w = CdrWriter::new();
        header.write(&mut w);
        w.string(format);
        w.seq_len(data_len);
        w.into_bytes()
    }
}

impl RosMessage for CompressedImage {
    const TYPE: &'static str = "sensor_msgs/msg/CompressedImage";
    fn write(&self, w: &mut CdrWriter) {
        self.header.write(w);
        w.string(&self.format);
        w.bytes(&self.data);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            header: Header::read(r)?,
            format: r.string()?,
            data: r.bytes()?.to_vec(),
        })
    }
}

/// `sensor_msgs/msg/RegionOfInterest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionOfInterest {
    /// Left edge.
    pub x_offset: u32,
    /// Top edge.
    pub y_offset: u32,
    /// Height (0 = full image).
    pub height: u32,
    /// Width (0 = full image).
    pub width: u32,
    /// Whether a rectified ROI is meant.
    pub do_rectify: bool,
}

impl RosMessage for RegionOfInterest {
    const TYPE: &'static str = "sensor_msgs/msg/RegionOfInterest";
    fn write(&self, w: &mut CdrWriter) {
        w.u32(self.x_offset);
        w.u32(self.y_offset);
        w.u32(self.height);
        w.u32(self.width);
        w.bool(self.do_rectify);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            x_offset: r.u32()?,
            y_offset: r.u32()?,
            height: r.u32()?,
            width: r.u32()?,
            do_rectify: r.bool()?,
        })
    }
}

/// `sensor_msgs/msg/CameraInfo`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CameraInfo {
    /// Stamp and camera frame.
    pub header: Header,
    /// Image height.
    pub height: u32,
    /// Image width.
    pub width: u32,
    /// Distortion model name, e.g. `plumb_bob`.
    pub distortion_model: String,
    /// Distortion coefficients.
    pub d: Vec<f64>,
    /// Intrinsics K, row-major 3×3.
    pub k: [f64; 9],
    /// Rectification rotation R, row-major 3×3.
    pub r: [f64; 9],
    /// Projection P, row-major 3×4.
    pub p: [f64; 12],
    /// Horizontal binning.
    pub binning_x: u32,
    /// Vertical binning.
    pub binning_y: u32,
    /// Region of interest.
    pub roi: RegionOfInterest,
}

impl CameraInfo {
    /// A rectified pinhole camera: K from `k_rows`, plumb_bob with zero distortion, R = I, P = [K | 0].
    pub fn pinhole(header: Header, width: u32, height: u32, k_rows: [[f64; 3]; 3]) -> Self {
        let k = [
            k_rows[0][0],
            k_rows[0][1],
            k_rows[0][2],
            k_rows[1][0],
            k_rows[1][1],
            k_rows[1][2],
            k_rows[2][0],
            k_rows[2][1],
            k_rows[2][2],
        ];
        let p = [
            k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0,
        ];
        Self {
            header,
            height,
            width,
            distortion_model: "plumb_bob".into(),
            d: vec![0.0; 5],
            k,
            r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p,
            binning_x: 0,
            binning_y: 0,
            roi: RegionOfInterest::default(),
        }
    }

    /// K as rows.
    pub fn k_rows(&self) -> [[f64; 3]; 3] {
        let k = &self.k;
        [[k[0], k[1], k[2]], [k[3], k[4], k[5]], [k[6], k[7], k[8]]]
    }
}

impl RosMessage for CameraInfo {
    const TYPE: &'static str = "sensor_msgs/msg/CameraInfo";
    fn write(&self, w: &mut CdrWriter) {
        self.header.write(w);
        w.u32(self.height);
        w.u32(self.width);
        w.string(&self.distortion_model);
        w.f64_seq(&self.d);
        w.f64_array(&self.k);
        w.f64_array(&self.r);
        w.f64_array(&self.p);
        w.u32(self.binning_x);
        w.u32(self.binning_y);
        self.roi.write(w);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            header: Header::read(r)?,
            height: r.u32()?,
            width: r.u32()?,
            distortion_model: r.string()?,
            d: r.f64_seq()?,
            k: r.f64_array()?,
            r: r.f64_array()?,
            p: r.f64_array()?,
            binning_x: r.u32()?,
            binning_y: r.u32()?,
            roi: RegionOfInterest::read(r)?,
        })
    }
}

/// `sensor_msgs/msg/PointField`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PointField {
    /// Field name.
    pub name: String,
    /// Byte offset in a point.
    pub offset: u32,
    /// Datatype code ([`PointField::FLOAT32`], …).
    pub datatype: u8,
    /// Number of elements.
    pub count: u32,
}

impl PointField {
    /// Datatype code of float32 fields.
    pub const FLOAT32: u8 = 7;
    /// Datatype code of float64 fields.
    pub const FLOAT64: u8 = 8;

    /// A single float32 field at `offset`.
    pub fn f32(name: &str, offset: u32) -> Self {
        Self {
            name: name.into(),
            offset,
            datatype: Self::FLOAT32,
            count: 1,
        }
    }
}

impl RosMessage for PointField {
    const TYPE: &'static str = "sensor_msgs/msg/PointField";
    fn write(&self, w: &mut CdrWriter) {
        w.string(&self.name);
        w.u32(self.offset);
        w.u8(self.datatype);
        w.u32(self.count);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            name: r.string()?,
            offset: r.u32()?,
            datatype: r.u8()?,
            count: r.u32()?,
        })
    }
}

/// `sensor_msgs/msg/PointCloud2`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointCloud2 {
    /// Stamp and sensor frame.
    pub header: Header,
    /// Rows (1 for unordered clouds).
    pub height: u32,
    /// Points per row.
    pub width: u32,
    /// Layout of a point.
    pub fields: Vec<PointField>,
    /// Byte order of `data`.
    pub is_bigendian: bool,
    /// Bytes per point.
    pub point_step: u32,
    /// Bytes per row.
    pub row_step: u32,
    /// The points.
    pub data: Vec<u8>,
    /// Whether no point is invalid.
    pub is_dense: bool,
}

impl PointCloud2 {
    /// The CDR encoding of this cloud with `data_len` bytes of point data in place of `self.data`, split
    /// around the data: `prefix + data + suffix` is the whole message. The suffix (`is_dense`) is one
    /// unaligned byte, so it does not depend on where the data ends.
    pub fn cdr_around_data(&self, data_len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut w = CdrWriter::new();
        self.header.write(&mut w);
        w.u32(self.height);
        w.u32(self.width);
        write_seq(&mut w, &self.fields);
        w.bool(self.is_bigendian);
        w.u32(self.point_step);
        w.u32(self.row_step);
        w.seq_len(data_len);
        (w.into_bytes(), vec![self.is_dense as u8])
    }
}

impl RosMessage for PointCloud2 {
    const TYPE: &'static str = "sensor_msgs/msg/PointCloud2";
    fn write(&self, w: &mut CdrWriter) {
        self.header.write(w);
        w.u32(self.height);
        w.u32(self.width);
        write_seq(w, &self.fields);
        w.bool(self.is_bigendian);
        w.u32(self.point_step);
        w.u32(self.row_step);
        w.bytes(&self.data);
        w.bool(self.is_dense);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            header: Header::read(r)?,
            height: r.u32()?,
            width: r.u32()?,
            fields: read_seq(r, 13)?,
            is_bigendian: r.bool()?,
            point_step: r.u32()?,
            row_step: r.u32()?,
            data: r.bytes()?.to_vec(),
            is_dense: r.bool()?,
        })
    }
}

/// `vlm3d/msg/BoundingBox3D`: one oriented box (centre pose, size = (length, width, height)).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BoundingBox3DMsg {
    /// Centre and orientation.
    pub center: Pose,
    /// x = length, y = width, z = height (metres).
    pub size: Vector3,
    /// Category / class name.
    pub label: String,
    /// Confidence in [0, 1] (1 for ground truth).
    pub score: f32,
    /// Camera frame that saw the box, or empty.
    pub camera: String,
    /// Object identity across messages (nuScenes instance token), or empty.
    pub instance_id: String,
}

impl RosMessage for BoundingBox3DMsg {
    const TYPE: &'static str = "vlm3d/msg/BoundingBox3D";
    fn write(&self, w: &mut CdrWriter) {
        self.center.write(w);
        self.size.write(w);
        w.string(&self.label);
        w.f32(self.score);
        w.string(&self.camera);
        w.string(&self.instance_id);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            center: Pose::read(r)?,
            size: Vector3::read(r)?,
            label: r.string()?,
            score: r.f32()?,
            camera: r.string()?,
            instance_id: r.string()?,
        })
    }
}

/// `vlm3d/msg/BoundingBox3DArray`: boxes answering one prompt, all in `header.frame_id`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BoundingBox3DArrayMsg {
    /// Stamp and the frame of every box.
    pub header: Header,
    /// The prompt the boxes answer (empty for ground truth).
    pub prompt: String,
    /// The boxes.
    pub boxes: Vec<BoundingBox3DMsg>,
}

impl RosMessage for BoundingBox3DArrayMsg {
    const TYPE: &'static str = "vlm3d/msg/BoundingBox3DArray";
    fn write(&self, w: &mut CdrWriter) {
        self.header.write(w);
        w.string(&self.prompt);
        write_seq(w, &self.boxes);
    }
    fn read(r: &mut CdrReader<'_>) -> CdrResult<Self> {
        Ok(Self {
            header: Header::read(r)?,
            prompt: r.string()?,
            boxes: read_seq(r, 80)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn definitions_from_msg_texts_equal_the_built_in_ones() {
        let text_of = |t: &str| {
            DEFINITIONS
                .iter()
                .find(|d| d.0 == t)
                .map(|d| d.1.to_string())
        };
        for (name, _, _) in DEFINITIONS {
            let (def, hash) = super::definition_and_hash_with(name, &text_of).unwrap();
            assert_eq!(def, full_definition(name), "{name}");
            assert_eq!(hash, type_hash(name), "{name}");
        }
        assert!(definition_and_hash("no_pkg/msg/Nothing", &[]).is_none());
    }

    use super::*;

    fn roundtrip<T: RosMessage + PartialEq + std::fmt::Debug>(m: &T) {
        let b = m.to_cdr();
        assert_eq!(&T::from_cdr(&b).unwrap(), m);
        // Every strict prefix fails (no silent truncation) unless only padding was cut.
        for cut in 4..b.len().saturating_sub(3) {
            assert!(T::from_cdr(&b[..cut]).is_err(), "{} cut at {cut}", T::TYPE);
        }
    }

    /// The split encodings the converter frames files with are, around the data, byte for byte the
    /// messages' own encodings, for frame ids and data lengths that move every alignment boundary.
    #[test]
    fn split_encodings_equal_whole_messages() {
        for frame in ["a", "cam", "lidar_top", "cam_front_left"] {
            for len in [0usize, 1, 3, 5, 20, 33] {
                let data: Vec<u8> = (0..len as u8).collect();
                let h = Header::new(1_532_402_927_647_951_000 + len as u64, frame);
                let img = CompressedImage {
                    header: h.clone(),
                    format: "jpeg".into(),
                    data: data.clone(),
                };
                let mut framed = CompressedImage::cdr_prefix(&h, "jpeg", len);
                framed.extend_from_slice(&data);
                assert_eq!(framed, img.to_cdr(), "{frame} {len}");
                let cloud = PointCloud2 {
                    header: h,
                    height: 1,
                    width: len as u32,
                    fields: vec![PointField::f32("x", 0), PointField::f32("intensity", 4)],
                    is_bigendian: false,
                    point_step: 1,
                    row_step: len as u32,
                    data: data.clone(),
                    is_dense: len % 2 == 0,
                };
                let (mut framed, suffix) = cloud.cdr_around_data(len);
                framed.extend_from_slice(&data);
                framed.extend_from_slice(&suffix);
                assert_eq!(framed, cloud.to_cdr(), "{frame} {len}");
            }
        }
    }

    #[test]
    fn messages_round_trip() {
        let h = Header::new(1_532_402_927_647_951_000, "cam_front");
        roundtrip(&CompressedImage {
            header: h.clone(),
            format: "jpeg".into(),
            data: vec![0xff, 0xd8, 1, 2, 3],
        });
        roundtrip(&CameraInfo::pinhole(
            h.clone(),
            1600,
            900,
            [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]],
        ));
        roundtrip(&TFMessage {
            transforms: vec![TransformStamped {
                header: Header::new(5, "base_link"),
                child_frame_id: "lidar_top".into(),
                transform: Transform {
                    translation: Vector3 {
                        x: 1.0,
                        y: 2.0,
                        z: 3.0,
                    },
                    rotation: Quaternion::default(),
                },
            }],
        });
        roundtrip(&PointCloud2 {
            header: Header::new(7, "lidar_top"),
            height: 1,
            width: 1,
            fields: vec![PointField::f32("x", 0), PointField::f32("y", 4)],
            is_bigendian: false,
            point_step: 8,
            row_step: 8,
            data: vec![0; 8],
            is_dense: true,
        });
        roundtrip(&BoundingBox3DArrayMsg {
            header: Header::new(9, "lidar_top"),
            prompt: String::new(),
            boxes: vec![BoundingBox3DMsg {
                center: Pose::default(),
                size: Vector3 {
                    x: 4.0,
                    y: 2.0,
                    z: 1.5,
                },
                label: "vehicle.car".into(),
                score: 1.0,
                camera: String::new(),
                instance_id: "abc".into(),
            }],
        });
        roundtrip(&StringMsg { data: "{}".into() });
    }

    #[test]
    fn known_bytes_of_a_time_and_header() {
        let b = Header::new(1_000_000_002, "ab").to_cdr();
        assert_eq!(
            b,
            vec![0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', 0]
        );
    }

    #[test]
    fn type_hashes_match_ros2_jazzy() {
        // Values recorded by ROS 2 Jazzy (rosidl) for these interfaces.
        assert_eq!(
            type_hash("std_msgs/msg/String"),
            "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
        );
        assert_eq!(
            type_hash("sensor_msgs/msg/CameraInfo"),
            "RIHS01_b3dfd68ff46c9d56c80fd3bd4ed22c7a4ddce8c8348f2f59c299e73118e7e275"
        );
        assert_eq!(
            type_hash("tf2_msgs/msg/TFMessage"),
            "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"
        );
    }

    #[test]
    fn definitions_list_each_dependency_once() {
        let d = full_definition("sensor_msgs/msg/CameraInfo");
        assert!(d.starts_with("std_msgs/Header header\n"));
        assert_eq!(d.matches("MSG: std_msgs/msg/Header\n").count(), 1);
        assert_eq!(d.matches("MSG: builtin_interfaces/msg/Time\n").count(), 1);
        assert_eq!(
            d.matches("MSG: sensor_msgs/msg/RegionOfInterest\n").count(),
            1
        );
        let d = full_definition("tf2_msgs/msg/TFMessage");
        for t in [
            "TransformStamped",
            "Header",
            "Time",
            "Transform",
            "Vector3",
            "Quaternion",
        ] {
            assert!(d.contains(&format!("/msg/{t}\n")), "{t} missing in\n{d}");
        }
        assert_eq!(d.matches(DEFINITION_SEPARATOR).count(), 6);
    }
}
