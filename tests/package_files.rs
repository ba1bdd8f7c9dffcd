//! Checks of the ROS 2 package files the crate ships (package.xml, msg/, config/, launch/): they parse,
//! agree with each other and with the naming conventions users' tools expect. No ROS 2 needed.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children().filter(|c| c.has_tag_name(tag)).collect()
}

#[test]
fn package_xml_is_format_3_and_matches_the_crate() {
    let text = read("package.xml");
    let doc = roxmltree::Document::parse(&text).expect("package.xml is well-formed XML");
    let pkg = doc.root_element();
    assert_eq!(pkg.tag_name().name(), "package");
    assert_eq!(pkg.attribute("format"), Some("3"));
    let text_of = |tag: &str| {
        child(pkg, tag)
            .first()
            .and_then(|n| n.text())
            .map(str::trim)
            .map(String::from)
    };
    assert_eq!(text_of("name").as_deref(), Some(env!("CARGO_PKG_NAME")));
    assert_eq!(
        text_of("version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(text_of("license").is_some());
    // catkin_pkg rejects malformed maintainer addresses; check the shape it accepts.
    for m in child(pkg, "maintainer") {
        let email = m.attribute("email").expect("maintainer email");
        let (user, domain) = email.split_once('@').expect("an @ in the e-mail");
        assert!(
            !user.is_empty()
                && domain.contains('.')
                && domain.rsplit('.').next().unwrap().len() >= 2,
            "{email}"
        );
    }
    let groups: Vec<_> = child(pkg, "member_of_group")
        .iter()
        .filter_map(|n| n.text())
        .collect();
    assert!(groups.contains(&"rosidl_interface_packages"));
    let export = child(pkg, "export");
    let build_type = child(export[0], "build_type")[0].text();
    assert_eq!(build_type, Some("ament_cmake"));
    // Every package the generated interfaces depend on is declared.
    let deps: BTreeSet<_> = ["depend", "build_depend"]
        .iter()
        .flat_map(|t| child(pkg, t))
        .filter_map(|n| n.text())
        .collect();
    for needed in [
        "std_msgs",
        "geometry_msgs",
        "sensor_msgs",
        "vision_msgs",
        "tf2_msgs",
        "autoware_perception_msgs",
    ] {
        assert!(
            deps.contains(needed),
            "package.xml lacks <depend>{needed}</depend>"
        );
    }
}

/// (type, name) of every field of a .msg file (constants, `TYPE NAME=VALUE`, are not fields).
fn msg_fields(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty() && !l.contains('='))
        .map(|l| {
            let parts: Vec<_> = l.split_whitespace().collect();
            assert_eq!(parts.len(), 2, "{}: field line {l:?}", path.display());
            let name = parts[1];
            assert!(
                name.chars().next().unwrap().is_ascii_lowercase()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}: field name {name:?}",
                path.display()
            );
            (parts[0].to_string(), name.to_string())
        })
        .collect()
}

#[test]
fn messages_are_listed_in_cmake_and_well_formed() {
    let cmake = read("CMakeLists.txt");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("msg")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            cmake.contains(&format!("msg/{file}")),
            "CMakeLists.txt does not generate msg/{file}"
        );
        msg_fields(&path);
        names.push(file);
    }
    names.sort();
    assert_eq!(names, ["BoundingBox3D.msg", "BoundingBox3DArray.msg"]);

    let fields = msg_fields(&root().join("msg/BoundingBox3D.msg"));
    let expected = [
        ("geometry_msgs/Pose", "center"),
        ("geometry_msgs/Vector3", "size"),
        ("string", "label"),
        ("float32", "score"),
        ("string", "camera"),
        ("string", "instance_id"),
    ];
    assert_eq!(
        fields,
        expected.map(|(t, n)| (t.to_string(), n.to_string()))
    );
    let fields = msg_fields(&root().join("msg/BoundingBox3DArray.msg"));
    let expected = [
        ("std_msgs/Header", "header"),
        ("string", "prompt"),
        ("BoundingBox3D[]", "boxes"),
    ];
    assert_eq!(
        fields,
        expected.map(|(t, n)| (t.to_string(), n.to_string()))
    );
}

/// (type, name, value) of every constant of a .msg file.
fn msg_constants(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter_map(|l| l.split_once('='))
        .map(|(decl, value)| {
            let parts: Vec<_> = decl.split_whitespace().collect();
            assert_eq!(parts.len(), 2, "{}: constant {decl:?}", path.display());
            (
                parts[0].to_string(),
                parts[1].to_string(),
                value.trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn bundled_standard_interfaces_match_their_definitions() {
    // Wire compatibility with the real packages depends on exact field types and names.
    let dir = root().join("scripts/interfaces");
    let f = |p: &str| msg_fields(&dir.join(p));
    let s = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        f("tf2_msgs/msg/TFMessage.msg"),
        s(&[("geometry_msgs/TransformStamped[]", "transforms")])
    );
    assert_eq!(
        f("vision_msgs/msg/ObjectHypothesis.msg"),
        s(&[("string", "class_id"), ("float64", "score")])
    );
    assert_eq!(
        f("vision_msgs/msg/ObjectHypothesisWithPose.msg"),
        s(&[
            ("ObjectHypothesis", "hypothesis"),
            ("geometry_msgs/PoseWithCovariance", "pose")
        ])
    );
    assert_eq!(
        f("vision_msgs/msg/BoundingBox3D.msg"),
        s(&[
            ("geometry_msgs/Pose", "center"),
            ("geometry_msgs/Vector3", "size")
        ])
    );
    assert_eq!(
        f("vision_msgs/msg/Detection3D.msg"),
        s(&[
            ("std_msgs/Header", "header"),
            ("ObjectHypothesisWithPose[]", "results"),
            ("BoundingBox3D", "bbox"),
            ("string", "id"),
        ])
    );
    assert_eq!(
        f("vision_msgs/msg/Detection3DArray.msg"),
        s(&[
            ("std_msgs/Header", "header"),
            ("Detection3D[]", "detections")
        ])
    );
    // autoware_perception_msgs 1.12.0 (autowarefoundation/autoware_msgs), the DetectedObjects family only.
    let aw = dir.join("autoware_perception_msgs");
    let mut files: Vec<String> = std::fs::read_dir(aw.join("msg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "DetectedObject.msg",
            "DetectedObjectKinematics.msg",
            "DetectedObjects.msg",
            "ObjectClassification.msg",
            "Shape.msg"
        ]
    );
    let cmake = std::fs::read_to_string(aw.join("CMakeLists.txt")).unwrap();
    for file in &files {
        assert!(
            cmake.contains(&format!("msg/{file}")),
            "CMakeLists.txt lacks msg/{file}"
        );
    }
    let license = std::fs::read_to_string(aw.join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("The Autoware Foundation"));
    assert_eq!(
        f("autoware_perception_msgs/msg/DetectedObjects.msg"),
        s(&[
            ("std_msgs/Header", "header"),
            ("DetectedObject[]", "objects")
        ])
    );
    assert_eq!(
        f("autoware_perception_msgs/msg/DetectedObject.msg"),
        s(&[
            ("float32", "existence_probability"),
            ("ObjectClassification[]", "classification"),
            ("DetectedObjectKinematics", "kinematics"),
            ("Shape", "shape"),
        ])
    );
    assert_eq!(
        f("autoware_perception_msgs/msg/ObjectClassification.msg"),
        s(&[("uint8", "label"), ("float32", "probability")])
    );
    assert_eq!(
        f("autoware_perception_msgs/msg/DetectedObjectKinematics.msg"),
        s(&[
            ("geometry_msgs/PoseWithCovariance", "pose_with_covariance"),
            ("bool", "has_position_covariance"),
            ("uint8", "orientation_availability"),
            ("geometry_msgs/TwistWithCovariance", "twist_with_covariance"),
            ("bool", "has_twist"),
            ("bool", "has_twist_covariance"),
        ])
    );
    assert_eq!(
        f("autoware_perception_msgs/msg/Shape.msg"),
        s(&[
            ("uint8", "type"),
            ("geometry_msgs/Polygon", "footprint"),
            ("geometry_msgs/Vector3", "dimensions"),
        ])
    );
    // The library's label values and shape/orientation constants are the definitions' (the node publishes them).
    use vlm3d::runtime::autoware::{ObjectLabel, ORIENTATION_SIGN_UNKNOWN, SHAPE_BOUNDING_BOX};
    let constant = |file: &str, name: &str| -> u8 {
        let all = msg_constants(&aw.join("msg").join(file));
        let (ty, _, v) = all
            .iter()
            .find(|(_, n, _)| n == name)
            .unwrap_or_else(|| panic!("{file}: no constant {name}"));
        assert_eq!(ty, "uint8", "{file}: {name}");
        v.parse().unwrap()
    };
    for l in ObjectLabel::ALL {
        assert_eq!(
            constant("ObjectClassification.msg", l.constant_name()),
            l.value(),
            "{l:?}"
        );
    }
    assert_eq!(constant("Shape.msg", "BOUNDING_BOX"), SHAPE_BOUNDING_BOX);
    assert_eq!(
        constant("DetectedObjectKinematics.msg", "SIGN_UNKNOWN"),
        ORIENTATION_SIGN_UNKNOWN
    );
}

/// The rig file, through the library's own loader (the one the node and the generator use).
fn rig() -> vlm3d::perception::Rig {
    vlm3d::perception::Rig::load(&root().join("config/nuscenes_rig.yaml")).expect("rig YAML")
}

#[test]
fn nuscenes_rig_follows_the_converter_conventions() {
    let rig = rig();
    let channels: Vec<_> = rig.cameras.iter().map(|c| c.channel.as_str()).collect();
    assert_eq!(
        channels,
        [
            "CAM_FRONT",
            "CAM_FRONT_RIGHT",
            "CAM_BACK_RIGHT",
            "CAM_BACK",
            "CAM_BACK_LEFT",
            "CAM_FRONT_LEFT"
        ]
    );
    for c in &rig.cameras {
        let frame = c.channel.to_lowercase();
        assert_eq!(c.frame_id, frame);
        assert_eq!(c.image_topic, format!("/{frame}/image_rect_compressed"));
        assert_eq!(c.camera_info_topic, format!("/{frame}/camera_info"));
    }
    assert_eq!(
        (rig.lidar_frame.as_str(), rig.base_frame.as_str()),
        ("lidar_top", "base_link")
    );
    assert_eq!((rig.image_width, rig.image_height), (1600, 900));
}

/// The parameters perception_node reads, in the order of config/perception_node.param.yaml.
const PERCEPTION_PARAMS: [&str; 19] = [
    "rig_file",
    "model_path",
    "trained_path",
    "device",
    "dtype",
    "max_pixels",
    "image_transport",
    "prompts",
    "max_prompt_chars",
    "score_threshold",
    "nms_iou_threshold",
    "max_boxes",
    "sync_slop_s",
    "queue_depth",
    "output_frame",
    "tf_wait_s",
    "use_camera_info",
    "diagnostics_period_s",
    "publish_autoware_objects",
];

#[test]
fn perception_params_are_ros2_parameter_yaml() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("config/perception_node.param.yaml")).unwrap();
    let params = doc
        .get("/**")
        .and_then(|n| n.get("ros__parameters"))
        .and_then(|p| p.as_mapping())
        .expect("/**: ros__parameters: mapping");
    let keys: Vec<&str> = params
        .keys()
        .map(|k| k.as_str().expect("parameter names are strings"))
        .collect();
    assert_eq!(keys, PERCEPTION_PARAMS, "the parameters the node reads");
    // rcl_yaml_param_parser takes scalars and non-empty lists of one scalar type, nothing nested.
    for (k, v) in params {
        match v {
            serde_yaml::Value::Sequence(items) => {
                assert!(!items.is_empty(), "{k:?}: empty list");
                let kind = |v: &serde_yaml::Value| std::mem::discriminant(v);
                assert!(
                    items.iter().all(|i| kind(i) == kind(&items[0])
                        && !matches!(
                            i,
                            serde_yaml::Value::Sequence(_) | serde_yaml::Value::Mapping(_)
                        )),
                    "{k:?}: not a list of one scalar type"
                );
            }
            serde_yaml::Value::Mapping(_) | serde_yaml::Value::Null => {
                panic!("{k:?}: not a scalar or list")
            }
            _ => {}
        }
    }
    let t = params["score_threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t));
    // Empty paths: the compiled-in rig, the built-in demo model and its own adapters.
    for k in ["rig_file", "model_path", "trained_path"] {
        assert_eq!(params[k].as_str(), Some(""), "{k}");
    }
    assert!(params["max_pixels"].as_u64().unwrap() >= 56 * 56);
    let max_chars = params["max_prompt_chars"].as_u64().unwrap() as usize;
    let prompts = params["prompts"].as_sequence().expect("prompts: a list");
    for p in prompts {
        let p = p.as_str().expect("prompts are strings");
        assert!(!p.is_empty() && p.chars().count() <= max_chars, "{p:?}");
    }
    // The compiled-in rig is the shipped file.
    assert_eq!(&rig(), vlm3d::perception::Rig::nuscenes());
    assert_eq!(
        params["output_frame"].as_str(),
        Some(rig().lidar_frame.as_str())
    );
}

fn schema_validator(rel: &str) -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(
        schema["$schema"].as_str(),
        Some("http://json-schema.org/draft-07/schema#"),
        "{rel}: draft-07"
    );
    jsonschema::draft7::new(&schema).unwrap_or_else(|e| panic!("{rel}: not a valid schema: {e}"))
}

fn yaml_as_json(rel: &str) -> serde_json::Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn perception_params_validate_against_their_schema() {
    let rel = "schema/perception_node.schema.json";
    let v = schema_validator(rel);
    let params = yaml_as_json("config/perception_node.param.yaml");
    let errors: Vec<String> = v.iter_errors(&params).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let with = |key: &str, value: &serde_json::Value| {
        let mut p = params.clone();
        p["/**"]["ros__parameters"][key] = value.clone();
        p
    };
    // The schema is not vacuous: wrong types, out-of-range values, unknown keys and missing keys fail.
    use serde_json::json;
    for (key, bad) in [
        ("score_threshold", json!("high")),
        ("score_threshold", json!(1.5)),
        ("nms_iou_threshold", json!(-0.1)),
        ("max_boxes", json!(0)),
        ("colour", json!("red")),
        // Replaced by `prompts`.
        ("default_prompt", json!("Find all cars.")),
        ("device", json!("gpu")),
        ("device", json!("cuda:")),
        ("device", json!("cuda:x")),
        ("dtype", json!("f64")),
        ("image_transport", json!("theora")),
        ("max_pixels", json!(3135)),
        ("max_pixels", json!(3136.5)),
        ("prompts", json!([])),
        ("prompts", json!([""])),
        ("prompts", json!("Find the cars.")),
        ("max_prompt_chars", json!(0)),
        ("sync_slop_s", json!(0.0)),
        ("sync_slop_s", json!(1.5)),
        ("queue_depth", json!(0)),
        ("queue_depth", json!(65)),
        ("output_frame", json!("")),
        ("use_camera_info", json!("yes")),
        ("tf_wait_s", json!(-1.0)),
        ("diagnostics_period_s", json!(0.0)),
        ("diagnostics_period_s", json!(61.0)),
        ("rig_file", json!(null)),
        ("publish_autoware_objects", json!("true")),
        ("publish_autoware_objects", json!(1)),
    ] {
        assert!(!v.is_valid(&with(key, &bad)), "{key} = {bad} accepted");
    }
    for (key, good) in [
        ("device", json!("cuda")),
        ("device", json!("cuda:1")),
        ("device", json!("auto")),
        ("dtype", json!("bf16")),
        ("dtype", json!("f16")),
        ("image_transport", json!("raw")),
        ("max_pixels", json!(3136)),
        ("prompts", json!(["Find the cars.", "Find the buses."])),
        ("queue_depth", json!(64)),
        ("sync_slop_s", json!(1.0)),
        ("diagnostics_period_s", json!(60.0)),
        ("model_path", json!("/data/qwen2-vl-2b")),
        ("publish_autoware_objects", json!(false)),
    ] {
        let errors: Vec<String> = v
            .iter_errors(&with(key, &good))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{key} = {good} rejected: {errors:?}");
    }
    for key in PERCEPTION_PARAMS {
        let mut p = params.clone();
        p["/**"]["ros__parameters"]
            .as_object_mut()
            .unwrap()
            .remove(key);
        assert!(!v.is_valid(&p), "missing {key} accepted");
    }
    // The schema knows exactly the node's parameters; each has a default, which the YAML sets.
    let props = v_props(rel);
    let names: BTreeSet<&str> = props.keys().map(String::as_str).collect();
    assert_eq!(names, PERCEPTION_PARAMS.into_iter().collect());
    for (k, spec) in &props {
        let default = spec
            .get("default")
            .unwrap_or_else(|| panic!("{k}: no default"));
        assert_eq!(
            params["/**"]["ros__parameters"].get(k),
            Some(default),
            "{k}: the YAML is not the schema's default"
        );
    }
}

fn v_props(rel: &str) -> serde_json::Map<String, serde_json::Value> {
    let schema: serde_json::Value = serde_json::from_str(&read(rel)).unwrap();
    let defs = schema["definitions"].as_object().unwrap();
    assert_eq!(defs.len(), 1, "{rel}: one node per schema");
    defs.values().next().unwrap()["properties"]
        .as_object()
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------------------------------------------------
// Launch files, read the way `ros2 launch` reads them (statically: both branches of every if/unless).

/// The crate's binaries: the `[[bin]]` entries of Cargo.toml and cargo's src/bin/<name>.rs and
/// src/bin/<name>/main.rs.
fn crate_bins() -> BTreeSet<String> {
    let mut bins: BTreeSet<String> = toml_like::bins(&read("Cargo.toml")).0.into_iter().collect();
    for entry in std::fs::read_dir(root().join("src/bin")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().is_some_and(|e| e == "rs") || path.join("main.rs").is_file() {
            bins.insert(name);
        }
    }
    bins
}

/// Packages package.xml declares at run time (`depend`, `exec_depend`).
fn exec_deps() -> BTreeSet<String> {
    let text = read("package.xml");
    let doc = roxmltree::Document::parse(&text).unwrap();
    ["depend", "exec_depend"]
        .iter()
        .flat_map(|t| child(doc.root_element(), t))
        .filter_map(|n| n.text())
        .map(|s| s.trim().to_string())
        .collect()
}

const PKG_SHARE: &str = "$(find-pkg-share vlm3d)/";

/// `value` with every `$(var X)` replaced (repeatedly: a default may name another arg). Every other
/// substitution must be `$(find-pkg-share vlm3d)`.
fn substitute(value: &str, vars: &BTreeMap<String, String>, ctx: &str) -> String {
    let mut v = value.to_string();
    for _ in 0..8 {
        let Some(i) = v.find("$(var ") else { break };
        let end = i + v[i..]
            .find(')')
            .unwrap_or_else(|| panic!("{ctx}: unclosed $( in {value:?}"));
        let name = &v[i + 6..end];
        let with = vars.get(name).unwrap_or_else(|| {
            panic!("{ctx}: $(var {name}) without a value (no <arg name=\"{name}\">, or no default)")
        });
        v = format!("{}{}{}", &v[..i], with, &v[end + 1..]);
    }
    for (i, _) in v.match_indices("$(") {
        assert!(
            v[i..].starts_with(PKG_SHARE),
            "{ctx}: unexpected substitution in {value:?} (only $(var ...) and {PKG_SHARE})"
        );
    }
    v
}

/// The files of this package that a (substituted) value names as `$(find-pkg-share vlm3d)/...`; each must exist.
fn shared_files(value: &str, ctx: &str) -> Vec<String> {
    value
        .match_indices(PKG_SHARE)
        .map(|(i, m)| {
            let rel = value[i + m.len()..]
                .split(char::is_whitespace)
                .next()
                .unwrap();
            assert!(
                root().join(rel).is_file(),
                "{ctx}: refers to missing {rel} (installed from the source tree by CMakeLists.txt)"
            );
            rel.to_string()
        })
        .collect()
}

/// One `<node>` as launched.
#[derive(Debug)]
struct LaunchedNode {
    ctx: String,
    pkg: String,
    exec: String,
    args: String,
    /// `<param from>` files (package-relative).
    param_files: Vec<String>,
    /// `<param name value>`.
    params: Vec<(String, String)>,
    /// `<remap from to>`.
    remaps: Vec<(String, String)>,
}

impl LaunchedNode {
    fn remap(&self, from: &str) -> Option<&str> {
        self.remaps
            .iter()
            .find(|(f, _)| f == from)
            .map(|(_, t)| t.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a launch file starts, its includes followed.
#[derive(Debug, Default)]
struct Launched {
    nodes: Vec<LaunchedNode>,
    /// `<executable cmd>`, split into words.
    commands: Vec<Vec<String>>,
    /// `<set_parameter name value>`.
    global_params: Vec<(String, String)>,
}

/// Reads launch file `rel` with the arg values `given` (as `ros2 launch ... k:=v` or an `<include>` passes
/// them), following `<include>`s of this package's launch files.
fn launch(rel: &str, given: &[(&str, &str)], out: &mut Launched) {
    let text = read(rel);
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{rel}: not well-formed XML: {e}"));
    let top = doc.root_element();
    assert_eq!(top.tag_name().name(), "launch", "{rel}");

    // Args: declared, with defaults, overridden by what the caller gives.
    let mut vars = BTreeMap::new();
    let declared: BTreeSet<&str> = child(top, "arg")
        .iter()
        .map(|a| a.attribute("name").expect("arg name"))
        .collect();
    for (k, _) in given {
        assert!(declared.contains(k), "{rel}: given {k}:=..., not an <arg>");
    }
    for a in child(top, "arg") {
        let name = a.attribute("name").unwrap();
        assert!(
            a.attribute("description").is_some(),
            "{rel}: arg {name} has no description"
        );
        let value = match given.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => v.to_string(),
            None => {
                let d = a.attribute("default");
                let d = d.unwrap_or_else(|| panic!("{rel}: required arg {name} not given"));
                substitute(d, &vars, rel)
            }
        };
        vars.insert(name.to_string(), value);
    }
    // Every attribute anywhere: known substitutions, declared args, shipped files.
    for n in doc.descendants().filter(|n| n.is_element()) {
        for attr in n.attributes() {
            let ctx = format!("{rel}: <{} {}>", n.tag_name().name(), attr.name());
            shared_files(&substitute(attr.value(), &vars, &ctx), &ctx);
        }
    }
    let sub = |v: &str, ctx: &str| substitute(v, &vars, &format!("{rel}: {ctx}"));

    for e in top.children().filter(|n| n.is_element()) {
        match e.tag_name().name() {
            "arg" => {}
            "set_parameter" => out.global_params.push((
                e.attribute("name").unwrap().to_string(),
                sub(e.attribute("value").unwrap(), "set_parameter"),
            )),
            "executable" => {
                let cmd = sub(e.attribute("cmd").expect("executable cmd"), "cmd");
                out.commands
                    .push(cmd.split_whitespace().map(String::from).collect());
            }
            "include" => {
                let file = sub(e.attribute("file").expect("include file"), "include");
                let inner = file
                    .strip_prefix(PKG_SHARE)
                    .unwrap_or_else(|| panic!("{rel}: include of {file}, not of this package"));
                assert!(inner.starts_with("launch/"), "{rel}: include {inner}");
                let args: Vec<(String, String)> = child(e, "arg")
                    .iter()
                    .map(|a| {
                        let name = a.attribute("name").unwrap();
                        (name.to_string(), sub(a.attribute("value").unwrap(), name))
                    })
                    .collect();
                for c in e.children().filter(|n| n.is_element()) {
                    assert_eq!(c.tag_name().name(), "arg", "{rel}: in <include>");
                }
                let args: Vec<(&str, &str)> =
                    args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                launch(inner, &args, out);
            }
            "node" => {
                let pkg = e.attribute("pkg").expect("node pkg").to_string();
                let exec = e.attribute("exec").expect("node exec").to_string();
                let mut node = LaunchedNode {
                    ctx: format!("{rel}: node {pkg}/{exec}"),
                    pkg,
                    exec,
                    args: sub(e.attribute("args").unwrap_or(""), "args"),
                    param_files: vec![],
                    params: vec![],
                    remaps: vec![],
                };
                for c in e.children().filter(|n| n.is_element()) {
                    match c.tag_name().name() {
                        "param" => match (c.attribute("from"), c.attribute("name")) {
                            (Some(from), None) => {
                                let file = sub(from, "param from");
                                let inner = file.strip_prefix(PKG_SHARE).unwrap_or_else(|| {
                                    panic!("{rel}: parameter file {file}, not of this package")
                                });
                                node.param_files.push(inner.to_string());
                            }
                            (None, Some(name)) => {
                                let value = sub(c.attribute("value").expect("param value"), name);
                                node.params.push((name.to_string(), value));
                            }
                            _ => panic!("{rel}: <param> needs from= or name= and value="),
                        },
                        "remap" => node.remaps.push((
                            c.attribute("from").unwrap().to_string(),
                            sub(c.attribute("to").unwrap(), "remap"),
                        )),
                        other => panic!("{rel}: <{other}> in <node>"),
                    }
                }
                out.nodes.push(node);
            }
            other => panic!("{rel}: unexpected <{other}>"),
        }
    }
}

/// A launch parameter value as launch_ros types it (YAML; the empty string stays a string).
fn launch_param_value(v: &str) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::String(String::new());
    }
    serde_yaml::from_str(v).unwrap_or_else(|e| panic!("parameter value {v:?}: {e}"))
}

/// Reads `rel` and checks what any launch file of the package must get right: nodes of this package run its
/// parameters through the node's schema (schema/<exec>.schema.json), other packages' nodes and tools are
/// declared in package.xml, private topics are remapped, global parameters are ROS's own. The crate's
/// binaries are checked by [`assert_execs_are_crate_binaries`] (last, as they may land after the launch file).
fn check_launch(rel: &str, given: &[(&str, &str)]) -> Launched {
    let mut out = Launched::default();
    launch(rel, given, &mut out);
    let deps = exec_deps();
    for node in &out.nodes {
        let ctx = &node.ctx;
        for (from, _) in &node.remaps {
            assert!(
                from.starts_with("~/input/") || from.starts_with("~/output/"),
                "{ctx}: remap of {from}"
            );
        }
        if node.pkg != env!("CARGO_PKG_NAME") {
            assert!(
                deps.contains(&node.pkg),
                "{ctx}: package.xml lacks <exec_depend>{}",
                node.pkg
            );
            continue;
        }
        let schema_rel = format!("schema/{}.schema.json", node.exec);
        let props = v_props(&schema_rel);
        for (name, _) in &node.params {
            assert!(
                props.contains_key(name),
                "{ctx}: <param name=\"{name}\"> is not in {schema_rel}"
            );
        }
        // The parameter files, overridden by the launch file's own values, pass the node's schema.
        assert!(!node.param_files.is_empty(), "{ctx}: no parameter file");
        let v = schema_validator(&schema_rel);
        for file in &node.param_files {
            let mut doc = yaml_as_json(file);
            for (name, value) in &node.params {
                doc["/**"]["ros__parameters"][name] = launch_param_value(value);
            }
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{ctx}: {file} with the launch file's params: {errors:?}"
            );
        }
    }
    for cmd in &out.commands {
        let words: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["ros2", "bag", ..] => {
                assert!(
                    deps.contains("ros2bag"),
                    "{rel}: package.xml lacks <exec_depend>ros2bag"
                )
            }
            [exe, ..] => assert!(crate_bins().contains(*exe), "{rel}: runs unknown {exe}"),
            [] => panic!("{rel}: empty cmd"),
        }
    }
    for (name, _) in &out.global_params {
        assert!(
            ["use_sim_time"].contains(&name.as_str()),
            "{rel}: <set_parameter name=\"{name}\">"
        );
    }
    out
}

fn assert_execs_are_crate_binaries(launched: &Launched) {
    let bins = crate_bins();
    for node in &launched.nodes {
        if node.pkg == env!("CARGO_PKG_NAME") {
            assert!(
                bins.contains(&node.exec),
                "{}: no binary {} (Cargo.toml [[bin]], src/bin/{}.rs or src/bin/{}/main.rs)",
                node.ctx,
                node.exec,
                node.exec,
                node.exec
            );
        }
    }
}

/// The topics of a bag written by `vlm3d convert-nuscenes --config config/nuscenes_bag.yaml` for the rig.
fn bag_topics() -> BTreeSet<String> {
    let layout: vlm3d::data::bag::bagschema::BagLayout =
        serde_yaml::from_str(&read("config/nuscenes_bag.yaml")).expect("config/nuscenes_bag.yaml");
    let rig = rig();
    let mut topics: BTreeSet<String> = rig
        .cameras
        .iter()
        .flat_map(|c| {
            [
                layout.image_topic(&c.channel),
                layout.info_topic(&c.channel),
            ]
        })
        .collect();
    topics.extend([
        layout.lidar_topic(&rig.lidar.channel),
        layout.annotations(),
        layout.sample(),
        layout.tf_topic.clone(),
        layout.tf_static_topic.clone(),
    ]);
    topics
}

/// image_transport's name of a rig image topic: `/cam_x/image_rect_compressed` is the compressed transport of
/// `/cam_x/image_rect`, `/cam_x/image_rect/compressed`.
fn transport_topic(topic: &str) -> Option<String> {
    topic
        .strip_suffix("_compressed")
        .map(|base| format!("{base}/compressed"))
}

/// Topics a remap may point to: the rig's (and their image_transport names), the bag's, the package's own.
fn assert_known_topic(topic: &str, ctx: &str) {
    let rig = rig();
    let known = rig.cameras.iter().any(|c| {
        topic == c.image_topic
            || topic == c.camera_info_topic
            || transport_topic(&c.image_topic).as_deref() == Some(topic)
    }) || bag_topics().contains(topic)
        || topic.strip_prefix("/vlm3d/").is_some_and(|t| !t.is_empty());
    assert!(
        known,
        "{ctx}: topic {topic} is neither the rig's, the bag's nor /vlm3d/..."
    );
}

#[test]
fn perception_launch_is_consistent() {
    let launched = check_launch("launch/perception.launch.xml", &[]);
    assert!(launched.commands.is_empty() && launched.global_params.is_empty());
    assert_eq!(launched.nodes.len(), 1);
    let node = &launched.nodes[0];
    assert_eq!(node.pkg, "vlm3d");
    assert_eq!(node.exec, "perception_node");
    assert_eq!(node.param_files, ["config/perception_node.param.yaml"]);
    // Empty by default: the built-in demo model on the CPU, compressed images.
    assert_eq!(node.param("model_path"), Some(""));
    assert_eq!(node.param("trained_path"), Some(""));
    assert_eq!(node.param("device"), Some("cpu"));
    assert_eq!(node.param("image_transport"), Some("compressed"));
    for (from, to) in &node.remaps {
        assert_known_topic(to, &format!("remap {from}"));
    }
    // By default each camera of the rig is wired to its topics.
    for c in rig().cameras {
        for (suffix, topic) in [
            ("image", &c.image_topic),
            ("camera_info", &c.camera_info_topic),
        ] {
            let from = format!("~/input/{}/{suffix}", c.frame_id);
            assert_eq!(node.remap(&from), Some(topic.as_str()), "remap {from}");
        }
    }
    for (from, to) in [
        ("~/input/prompt", "/vlm3d/prompt"),
        ("~/output/boxes", "/vlm3d/boxes"),
        ("~/output/detections", "/vlm3d/detections"),
        ("~/output/objects", "/vlm3d/objects"),
        ("~/output/markers", "/vlm3d/markers"),
    ] {
        assert_eq!(node.remap(from), Some(to));
    }
    assert_execs_are_crate_binaries(&launched);
}

/// The `old:=new` pairs after `--remap` of a `ros2 bag play` command.
fn player_remaps(cmd: &[String]) -> Vec<(String, String)> {
    let Some(i) = cmd.iter().position(|w| w == "--remap" || w == "-m") else {
        return vec![];
    };
    cmd[i + 1..]
        .iter()
        .take_while(|w| !w.starts_with('-'))
        .map(|w| {
            let (a, b) = w.split_once(":=").unwrap_or_else(|| panic!("remap {w:?}"));
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// The rviz2 configuration: valid shape, the rig's LiDAR frame fixed, one Image display per camera on the
/// topic it is played on (`played_images`, in rig order), the markers on `markers`, other topics played ones.
fn check_rviz_config(
    rel: &str,
    played_images: &[String],
    played: &BTreeSet<String>,
    markers: &str,
) {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let class = |d: &serde_yaml::Value| d["Class"].as_str().unwrap_or("").to_string();
    let panels = doc["Panels"].as_sequence().expect("Panels: a list");
    assert!(!panels.is_empty());
    for p in panels {
        assert!(class(p).starts_with("rviz_common/"), "{rel}: panel {p:?}");
    }
    let vm = &doc["Visualization Manager"];
    assert_eq!(
        vm["Global Options"]["Fixed Frame"].as_str(),
        Some(rig().lidar_frame.as_str()),
        "{rel}: Fixed Frame"
    );
    let view = class(&vm["Views"]["Current"]);
    assert!(
        view.starts_with("rviz_default_plugins/"),
        "{rel}: view {view:?}"
    );

    let displays = vm["Displays"].as_sequence().expect("Displays: a list");
    let mut images = vec![];
    let mut names = BTreeSet::new();
    let mut classes = BTreeSet::new();
    for d in displays {
        let c = class(d);
        let name = d["Name"].as_str().expect("display Name");
        assert!(names.insert(name), "{rel}: two displays named {name}");
        let kind = c
            .strip_prefix("rviz_default_plugins/")
            .unwrap_or_else(|| panic!("{rel}: display class {c:?}"));
        assert!(
            ["Grid", "TF", "MarkerArray", "Image", "PointCloud2"].contains(&kind),
            "{rel}: display class {c}"
        );
        classes.insert(kind.to_string());
        let topic = d["Topic"]["Value"].as_str().or(d["Topic"].as_str());
        match (kind, topic) {
            ("Grid" | "TF", None) => {}
            ("Image", Some(t)) => images.push(t.to_string()),
            ("MarkerArray", Some(t)) => assert_eq!(t, markers, "{rel}: {name}"),
            (_, Some(t)) => assert!(played.contains(t), "{rel}: {name}: {t} is not played"),
            (_, None) => panic!("{rel}: {name}: no Topic: Value"),
        }
    }
    for needed in ["Grid", "TF", "MarkerArray", "Image"] {
        assert!(classes.contains(needed), "{rel}: no {needed} display");
    }
    assert_eq!(
        images, played_images,
        "{rel}: an Image display per camera, in rig order"
    );
}

#[test]
fn playback_launch_and_rviz_config_are_consistent() {
    let bag = "out/demo/bag";
    let rel = "launch/playback.launch.xml";
    let launched = check_launch(rel, &[("bag", bag)]);
    let rig = rig();

    // The player: `ros2 bag play` of the bag on the bag's clock, every node on that clock.
    assert!(!launched.commands.is_empty(), "{rel}: no player");
    assert_eq!(
        launched.global_params,
        [("use_sim_time".to_string(), "true".to_string())]
    );
    let bag_topics = bag_topics();
    let mut played_sets = vec![];
    for cmd in &launched.commands {
        assert_eq!(cmd[..4], ["ros2", "bag", "play", bag], "{rel}: {cmd:?}");
        assert!(
            cmd.iter().any(|w| w == "--clock"),
            "{rel}: {cmd:?} without --clock"
        );
        let rate = cmd.iter().position(|w| w == "--rate" || w == "-r");
        let rate: f64 = cmd[rate.expect("--rate") + 1]
            .parse()
            .expect("a number after --rate");
        assert!(rate > 0.0);
        let remaps = player_remaps(cmd);
        let mut played = bag_topics.clone();
        for (from, to) in &remaps {
            assert!(played.remove(from), "{rel}: the bag has no {from}");
            // Images get their image_transport name; nothing else is renamed.
            assert_eq!(
                Some(to),
                transport_topic(from).as_ref(),
                "{rel}: remap {from}:={to}"
            );
            assert!(rig.cameras.iter().any(|c| &c.image_topic == from));
            played.insert(to.clone());
        }
        played_sets.push((remaps, played));
    }
    let (remaps, played) = played_sets[0].clone();
    for other in &played_sets[1..] {
        assert_eq!(
            other, &played_sets[0],
            "{rel}: players differ in what they publish"
        );
    }
    let as_played = |t: &str| {
        remaps
            .iter()
            .find(|(f, _)| f == t)
            .map_or(t.to_string(), |(_, to)| to.clone())
    };
    let played_images: Vec<String> = rig
        .cameras
        .iter()
        .map(|c| as_played(&c.image_topic))
        .collect();

    // The perception node reads what is played and publishes under /vlm3d/.
    let perception: Vec<_> = launched.nodes.iter().filter(|n| n.pkg == "vlm3d").collect();
    assert_eq!(perception.len(), 1, "{rel}: one perception node");
    let node = perception[0];
    assert_eq!(node.exec, "perception_node");
    for (from, to) in &node.remaps {
        assert_known_topic(to, &format!("{rel}: remap {from}"));
        if from.starts_with("~/output/") || from == "~/input/prompt" {
            assert!(to.starts_with("/vlm3d/"), "{rel}: {from} -> {to}");
        } else {
            assert!(
                played.contains(to),
                "{rel}: {from} -> {to}, which is not played"
            );
        }
    }
    for (c, image) in rig.cameras.iter().zip(&played_images) {
        let f = &c.frame_id;
        assert_eq!(
            node.remap(&format!("~/input/{f}/image")),
            Some(image.as_str())
        );
        let info = as_played(&c.camera_info_topic);
        assert_eq!(
            node.remap(&format!("~/input/{f}/camera_info")),
            Some(info.as_str())
        );
        let transport = if image.ends_with("/compressed") || image.ends_with("_compressed") {
            "compressed"
        } else {
            "raw"
        };
        assert_eq!(
            node.param("image_transport"),
            Some(transport),
            "{rel}: {image}"
        );
    }
    let markers = node.remap("~/output/markers").expect("markers remapped");

    // rviz2 shows the same topics.
    let rviz: Vec<_> = launched.nodes.iter().filter(|n| n.pkg == "rviz2").collect();
    assert_eq!(rviz.len(), 1, "{rel}: one rviz2");
    assert_eq!(rviz[0].exec, "rviz2");
    let config = rviz[0]
        .args
        .strip_prefix("-d ")
        .and_then(|c| c.strip_prefix(PKG_SHARE))
        .unwrap_or_else(|| panic!("{rel}: rviz2 args {:?}", rviz[0].args));
    assert_eq!(config, "config/vlm3d.rviz");
    check_rviz_config(config, &played_images, &played, markers);

    assert_execs_are_crate_binaries(&launched);
}

#[test]
fn training_recipes_and_node_params_validate_against_their_schemas() {
    let v = schema_validator("schema/train.schema.json");
    for rel in [
        "config/train.yaml",
        "config/train_demo.yaml",
        "config/pretrain_synth.yaml",
        "config/train_holdout.yaml",
    ] {
        let doc = yaml_as_json(rel);
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{rel}: {errors:?}");
        let mut bad = doc.clone();
        bad["stage1"]["lr"] = serde_json::json!(-1.0);
        assert!(!v.is_valid(&bad), "{rel}: negative lr accepted");
        let mut bad = doc.clone();
        bad["learning_rate"] = serde_json::json!(1.0);
        assert!(!v.is_valid(&bad), "{rel}: unknown key accepted");
    }
    let v = schema_validator("schema/training_node.schema.json");
    let params = yaml_as_json("config/training_node.param.yaml");
    let errors: Vec<String> = v.iter_errors(&params).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let mut bad = params.clone();
    bad["/**"]["ros__parameters"]["max_steps"] = serde_json::json!(-3);
    assert!(!v.is_valid(&bad));
}

#[test]
fn training_launch_names_what_exists() {
    let launched = check_launch("launch/training.launch.xml", &[]);
    assert!(launched.commands.is_empty() && launched.global_params.is_empty());
    assert_eq!(launched.nodes.len(), 1);
    let node = &launched.nodes[0];
    assert_eq!(
        (node.pkg.as_str(), node.exec.as_str()),
        ("vlm3d", "training_node")
    );
    for (from, to) in &node.remaps {
        assert_known_topic(to, &format!("remap {from}"));
    }
    assert_execs_are_crate_binaries(&launched);
}

/// The `[[bin]]` names of Cargo.toml (a line scan: enough for this file's plain layout).
mod toml_like {
    pub struct Bins(pub Vec<String>);

    pub fn bins(text: &str) -> Bins {
        let mut out = Vec::new();
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin {
                if let Some(v) = line.strip_prefix("name = ") {
                    out.push(v.trim_matches('"').to_string());
                }
            }
        }
        Bins(out)
    }
}
