//! The built-in demo end to end: synthetic scene → bag → six views through the tiny detector → LiDAR-frame
//! boxes, JSON and picture.
use vlm3d::demo::{run_demo, DemoOptions};
use vlm3d::geometry::Box3D;

#[test]
fn demo_runs_end_to_end_and_writes_its_outputs() {
    let dir = std::env::temp_dir().join(format!("vlm3d-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = DemoOptions::new(&dir);
    opts.width = 320;
    opts.height = 180;
    let report = run_demo(&opts).unwrap();
    assert!(
        report.prompt.starts_with("Please detect the "),
        "{}",
        report.prompt
    );
    // The demo model's dense head, six views, no score threshold: every heat-map peak yields a box before merging
    // (at least one peak per view, at most DENSE_MAX_PER_VIEW).
    let max = 6 * vlm3d::model::box_head::DENSE_MAX_PER_VIEW;
    assert!(
        (6..=max).contains(&report.raw_detections),
        "{} boxes before merging",
        report.raw_detections
    );
    assert!(!report.detections.is_empty() && report.detections.len() <= report.raw_detections);
    for d in &report.detections {
        Box3D::from_params(d.bbox).unwrap();
        assert!(d.camera.starts_with("CAM_"), "{}", d.camera);
    }
    for p in &report.outputs {
        assert!(p.exists(), "{} missing", p.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("detections.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["detections"].as_array().unwrap().len(),
        report.detections.len()
    );
    let png = image::open(dir.join("bev.png")).unwrap();
    assert_eq!((png.width(), png.height()), (800, 800));
    // A second run reuses the dataset and the bag: the same frame, prompt and ground truth. (The untrained demo
    // head is initialized afresh on every load, so its boxes differ between runs.)
    let again = run_demo(&opts).unwrap();
    assert_eq!(again.sample_token, report.sample_token);
    assert_eq!(again.prompt, report.prompt);
    assert_eq!(again.ground_truth, report.ground_truth);
    assert_eq!(again.raw_detections, report.raw_detections);
    let _ = std::fs::remove_dir_all(&dir);
}
