//! Checks of the ROS 2 package files the crate ships (package.xml, msg/, config/, launch/): they parse,
//! agree with each other and with the naming conventions users' tools expect. No ROS 2 needed.
use std::collections::BTreeSet;
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
    ] {
        assert!(
            deps.contains(needed),
            "package.xml lacks <depend>{needed}</depend>"
        );
    }
}

/// (type, name) of every field of a .msg file.
fn msg_fields(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
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

#[test]
fn perception_params_are_ros2_parameter_yaml() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("config/perception_node.param.yaml")).unwrap();
    let params = doc
        .get("/**")
        .and_then(|n| n.get("ros__parameters"))
        .and_then(|p| p.as_mapping())
        .expect("/**: ros__parameters: mapping");
    for key in [
        "rig_file",
        "model_path",
        "score_threshold",
        "nms_iou_threshold",
        "max_boxes",
        "output_frame",
    ] {
        assert!(params.contains_key(key), "missing parameter {key}");
    }
    let t = params["score_threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t));
    // The compiled-in rig is the shipped file.
    assert_eq!(&rig(), vlm3d::perception::Rig::nuscenes());
    assert_eq!(
        params["output_frame"].as_str(),
        Some(rig().lidar_frame.as_str())
    );
}

#[test]
fn perception_launch_is_consistent() {
    let text = read("launch/perception.launch.xml");
    let doc = roxmltree::Document::parse(&text).expect("launch file is well-formed XML");
    let launch = doc.root_element();
    assert_eq!(launch.tag_name().name(), "launch");

    let args: BTreeSet<&str> = child(launch, "arg")
        .iter()
        .map(|a| a.attribute("name").expect("arg name"))
        .collect();
    // Every $(var X) refers to a declared arg; every $(find-pkg-share vlm3d)/... file is shipped.
    for attr in doc.descendants().flat_map(|n| n.attributes()) {
        let v = attr.value();
        for (i, _) in v.match_indices("$(var ") {
            let name = v[i + 6..].split(')').next().unwrap();
            assert!(
                args.contains(name),
                "$(var {name}) without <arg name=\"{name}\">"
            );
        }
        if let Some(rest) = v.strip_prefix("$(find-pkg-share vlm3d)/") {
            assert!(
                root().join(rest).is_file(),
                "launch file refers to missing {rest}"
            );
        }
    }

    let nodes = child(launch, "node");
    assert_eq!(nodes.len(), 1);
    let node = nodes[0];
    assert_eq!(node.attribute("pkg"), Some("vlm3d"));
    assert!(node.attribute("exec").is_some());
    let remaps: Vec<(&str, &str)> = child(node, "remap")
        .iter()
        .map(|r| (r.attribute("from").unwrap(), r.attribute("to").unwrap()))
        .collect();
    for (from, _) in &remaps {
        assert!(
            from.starts_with("~/input/") || from.starts_with("~/output/"),
            "{from}"
        );
    }
    // Each camera of the rig is wired to its topics.
    for c in rig().cameras {
        for (suffix, topic) in [
            ("image", &c.image_topic),
            ("camera_info", &c.camera_info_topic),
        ] {
            let from = format!("~/input/{}/{suffix}", c.frame_id);
            assert!(
                remaps.contains(&(from.as_str(), topic.as_str())),
                "no remap {from} -> {topic}"
            );
        }
    }
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
    let v = schema_validator("schema/perception_node.schema.json");
    let params = yaml_as_json("config/perception_node.param.yaml");
    let errors: Vec<String> = v.iter_errors(&params).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The schema is not vacuous: a wrong type, an out-of-range value, an unknown key and a missing key fail.
    for (key, bad) in [
        ("score_threshold", serde_json::json!("high")),
        ("score_threshold", serde_json::json!(1.5)),
        ("max_boxes", serde_json::json!(0)),
        ("colour", serde_json::json!("red")),
    ] {
        let mut p = params.clone();
        p["/**"]["ros__parameters"][key] = bad.clone();
        assert!(!v.is_valid(&p), "{key} = {bad} accepted");
    }
    let mut p = params.clone();
    p["/**"]["ros__parameters"]
        .as_object_mut()
        .unwrap()
        .remove("model_path");
    assert!(!v.is_valid(&p), "missing model_path accepted");
    // Every parameter the schema knows has a default that itself validates, and the YAML sets each of them.
    let props = v_props("schema/perception_node.schema.json");
    for (k, spec) in &props {
        assert!(spec.get("default").is_some(), "{k}: no default");
        assert!(
            params["/**"]["ros__parameters"].get(k).is_some(),
            "{k} not in the YAML"
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

#[test]
fn training_recipes_and_node_params_validate_against_their_schemas() {
    let v = schema_validator("schema/train.schema.json");
    for rel in ["config/train.yaml", "config/train_demo.yaml"] {
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
    let text = read("launch/training.launch.xml");
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let launch = doc.root_element();
    let args: BTreeSet<&str> = child(launch, "arg")
        .iter()
        .map(|a| a.attribute("name").unwrap())
        .collect();
    for attr in doc.descendants().flat_map(|n| n.attributes()) {
        let v = attr.value();
        for (i, _) in v.match_indices("$(var ") {
            let name = v[i + 6..].split(')').next().unwrap();
            assert!(args.contains(name), "$(var {name}) undeclared");
        }
        if let Some(rest) = v.strip_prefix("$(find-pkg-share vlm3d)/") {
            assert!(root().join(rest).is_file(), "missing {rest}");
        }
    }
    let node = child(launch, "node")[0];
    // The executable is one of the crate's binaries.
    let cargo: toml_like::Bins = toml_like::bins(&read("Cargo.toml"));
    let exec = node.attribute("exec").unwrap();
    assert!(
        cargo.0.contains(&exec.to_string()),
        "no binary {exec} in Cargo.toml"
    );
    // Every parameter it sets is one the node's schema knows.
    let props = v_props("schema/training_node.schema.json");
    for p in child(node, "param") {
        if let Some(name) = p.attribute("name") {
            assert!(props.contains_key(name), "unknown parameter {name}");
        }
    }
    for r in child(node, "remap") {
        let from = r.attribute("from").unwrap();
        assert!(
            from.starts_with("~/output/") || from.starts_with("~/input/"),
            "{from}"
        );
    }
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
