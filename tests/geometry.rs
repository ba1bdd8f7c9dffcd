//! Geometry against independent references: Monte Carlo volumes, closed forms, finite differences and
//! hand-computed projections.
use std::f64::consts::PI;

use nalgebra::{Isometry3, Point2, Point3, Translation3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vlm3d::geometry::{
    bev_intersection_area, bev_iou, bev_nms, iou_3d, iou_3d_with_grad, isometry_from_nuscenes,
    quaternion_from_wxyz, Box3D, OrientedBox3D, PinholeCamera, VisibilityRule,
};

fn bx(p: [f64; 7]) -> Box3D {
    Box3D::from_params(p).unwrap()
}

fn random_box(rng: &mut StdRng, spread: f64) -> Box3D {
    bx([
        rng.random_range(-spread..spread),
        rng.random_range(-spread..spread),
        rng.random_range(-spread / 3.0..spread / 3.0),
        rng.random_range(0.3..5.0),
        rng.random_range(0.3..3.0),
        rng.random_range(0.3..3.0),
        rng.random_range(-PI..PI),
    ])
}

/// Monte Carlo IoU: points uniform in `a`'s volume estimate the fraction of `a` inside `b`, which gives the
/// intersection volume; returns (estimate, standard error of the estimate).
fn monte_carlo_iou(a: &Box3D, b: &Box3D, rng: &mut StdRng, samples: usize) -> (f64, f64) {
    let [x, y, z, l, w, h, yaw] = a.params();
    let (s, c) = yaw.sin_cos();
    let mut hits = 0usize;
    for _ in 0..samples {
        let u = rng.random_range(-0.5..0.5) * l;
        let v = rng.random_range(-0.5..0.5) * w;
        let t = rng.random_range(-0.5..0.5) * h;
        let p = Point3::new(x + c * u - s * v, y + s * u + c * v, z + t);
        if b.contains(&p) {
            hits += 1;
        }
    }
    let f = hits as f64 / samples as f64;
    let (va, vb) = (a.volume(), b.volume());
    let inter = f * va;
    let iou = inter / (va + vb - inter);
    // d IoU / d f, times the binomial standard error of f.
    let diou_df = va * (va + vb) / (va + vb - inter).powi(2);
    let se = diou_df
        * (f * (1.0 - f) / samples as f64)
            .sqrt()
            .max(1.0 / samples as f64);
    (iou, se)
}

#[test]
fn iou_matches_monte_carlo_on_random_rotated_pairs() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut overlapping = 0;
    let mut worst = 0.0f64;
    for _ in 0..1000 {
        let a = random_box(&mut rng, 2.0);
        let b = random_box(&mut rng, 2.0);
        let exact = iou_3d(&a, &b);
        assert!(
            (0.0..=1.0).contains(&exact),
            "IoU {exact} out of range for {a:?} {b:?}"
        );
        let (mc, se) = monte_carlo_iou(&a, &b, &mut rng, 20_000);
        // 5 standard errors plus a small floor: the Monte Carlo estimate is the reference, not exact.
        let tol = 5.0 * se + 1e-3;
        assert!(
            (exact - mc).abs() <= tol,
            "exact {exact} vs MC {mc} (tol {tol}) for {a:?} {b:?}"
        );
        // Symmetry is a separate property of the exact computation.
        assert!((exact - iou_3d(&b, &a)).abs() < 1e-9);
        if exact > 0.0 {
            overlapping += 1;
        }
        worst = worst.max((exact - mc).abs());
    }
    assert!(
        overlapping > 300,
        "only {overlapping} overlapping pairs: the sample does not exercise overlaps"
    );
    eprintln!("max |exact - MC| over 1000 pairs: {worst:.4}");
}

#[test]
fn iou_closed_forms_touching_nested_disjoint_identical() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..300 {
        let a = random_box(&mut rng, 5.0);
        let [x, y, z, l, w, h, yaw] = a.params();
        // Identical, and the same box described with l and w swapped and yaw + 90°.
        assert!((iou_3d(&a, &a) - 1.0).abs() < 1e-9);
        let swapped = bx([x, y, z, w, l, h, yaw + PI / 2.0]);
        assert!((iou_3d(&a, &swapped) - 1.0).abs() < 1e-9);
        // Touching face to face along the heading, across it, and on top: zero volume in common.
        let (s, c) = yaw.sin_cos();
        let lb = rng.random_range(0.3..4.0);
        let front = bx([
            x + c * (l + lb) / 2.0,
            y + s * (l + lb) / 2.0,
            z,
            lb,
            w,
            h,
            yaw,
        ]);
        assert!(
            iou_3d(&a, &front) < 1e-9,
            "touching front: {}",
            iou_3d(&a, &front)
        );
        let side = bx([x - s * w, y + c * w, z, l, w, h, yaw]);
        assert!(iou_3d(&a, &side) < 1e-9);
        let hb = rng.random_range(0.3..2.0);
        let above = bx([
            x,
            y,
            z + (h + hb) / 2.0,
            l,
            w,
            hb,
            rng.random_range(-PI..PI),
        ]);
        assert!(
            iou_3d(&a, &above) < 1e-12,
            "touching on top: {}",
            iou_3d(&a, &above)
        );
        // Disjoint: far away.
        let far = bx([x + 100.0, y, z, l, w, h, yaw + 0.3]);
        assert_eq!(iou_3d(&a, &far), 0.0);
        // Nested: a smaller box whose bounding circle fits in a's smaller half-extent, any yaw.
        let r = 0.45 * l.min(w).min(h);
        let inner = bx([x, y, z, r, r, r, rng.random_range(-PI..PI)]);
        let expected = inner.volume() / a.volume();
        assert!((iou_3d(&a, &inner) - expected).abs() < 1e-9);
        assert!((iou_3d(&inner, &a) - expected).abs() < 1e-9);
    }
}

#[test]
fn bev_intersection_of_axis_aligned_rectangles_is_closed_form() {
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..500 {
        let a = bx([
            rng.random_range(-2.0..2.0),
            rng.random_range(-2.0..2.0),
            0.0,
            2.0,
            1.0,
            1.0,
            0.0,
        ]);
        let b = bx([
            rng.random_range(-2.0..2.0),
            rng.random_range(-2.0..2.0),
            0.0,
            rng.random_range(0.5..3.0),
            rng.random_range(0.5..3.0),
            1.0,
            if rng.random_bool(0.5) { 0.0 } else { PI },
        ]);
        let overlap = |c0: f64, e0: f64, c1: f64, e1: f64| {
            ((c0 + e0 / 2.0).min(c1 + e1 / 2.0) - (c0 - e0 / 2.0).max(c1 - e1 / 2.0)).max(0.0)
        };
        let [ax, ay, _, al, aw, ..] = a.params();
        let [bx_, by, _, bl, bw, ..] = b.params();
        let expected = overlap(ax, al, bx_, bl) * overlap(ay, aw, by, bw);
        assert!((bev_intersection_area(&a, &b) - expected).abs() < 1e-9);
        let union = al * aw + bl * bw - expected;
        assert!((bev_iou(&a, &b) - expected / union).abs() < 1e-9);
    }
}

#[test]
fn iou_gradient_matches_central_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut checked = 0;
    while checked < 200 {
        let a = random_box(&mut rng, 1.0);
        let b = random_box(&mut rng, 1.0);
        let g = iou_3d_with_grad(&a, &b);
        assert!((g.iou - iou_3d(&a, &b)).abs() < 1e-12);
        if g.iou < 0.02 {
            continue;
        }
        let h = 1e-6;
        for k in 0..14 {
            let perturbed = |delta: f64| {
                let (mut pa, mut pb) = (a.params(), b.params());
                if k < 7 {
                    pa[k] += delta;
                } else {
                    pb[k - 7] += delta;
                }
                iou_3d(&bx(pa), &bx(pb))
            };
            let fd = (perturbed(h) - perturbed(-h)) / (2.0 * h);
            let analytic = if k < 7 { g.d_a[k] } else { g.d_b[k - 7] };
            assert!(
                (fd - analytic).abs() <= 1e-5 + 1e-4 * fd.abs(),
                "d/dp{k}: analytic {analytic} vs finite difference {fd} for {a:?} {b:?}"
            );
        }
        checked += 1;
    }
}

#[test]
fn iou_gradient_is_zero_without_overlap_and_finite_when_degenerate() {
    let a = bx([0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.3]);
    let far = bx([10.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0]);
    let g = iou_3d_with_grad(&a, &far);
    assert_eq!(g.iou, 0.0);
    assert!(g.d_a.iter().chain(g.d_b.iter()).all(|&d| d == 0.0));
    let flat = bx([0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.3]);
    let g = iou_3d_with_grad(&a, &flat);
    assert_eq!(g.iou, 0.0);
    assert!(g.d_a.iter().chain(g.d_b.iter()).all(|d| d.is_finite()));
    let point = bx([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(iou_3d(&point, &point), 0.0);
    assert_eq!(bev_iou(&point, &point), 0.0);
}

#[test]
fn malformed_boxes_are_rejected_with_a_clear_error() {
    let err = Box3D::from_params([f64::NAN, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]).unwrap_err();
    assert!(err.to_string().contains("box centre"), "{err}");
    let err = Box3D::from_params([0.0, 0.0, 0.0, 1.0, -1.0, 1.0, 0.0]).unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
    assert!(Box3D::from_params([0.0, 0.0, 0.0, 1.0, 1.0, f64::INFINITY, 0.0]).is_err());
    assert!(Box3D::from_params([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, f64::NAN]).is_err());
    let err = quaternion_from_wxyz([0.0; 4]).unwrap_err();
    assert!(err.to_string().contains("zero quaternion"), "{err}");
    assert!(OrientedBox3D::from_nuscenes([0.0; 3], [1.0, 2.0, 1.0], [0.0; 4]).is_err());
}

fn random_isometry(rng: &mut StdRng) -> Isometry3<f64> {
    let q = [
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
    ];
    let t = [
        rng.random_range(-500.0..500.0),
        rng.random_range(-500.0..500.0),
        rng.random_range(-5.0..5.0),
    ];
    isometry_from_nuscenes(t, q).unwrap()
}

#[test]
fn transforms_round_trip_global_ego_lidar() {
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..500 {
        let ego_to_global = random_isometry(&mut rng);
        let lidar_to_ego = random_isometry(&mut rng);
        let b = OrientedBox3D::from_nuscenes(
            [
                rng.random_range(-1000.0..1000.0),
                rng.random_range(-1000.0..1000.0),
                1.0,
            ],
            [1.9, 4.5, 1.6],
            [
                rng.random_range(-1.0..1.0),
                0.01,
                -0.02,
                rng.random_range(-1.0..1.0),
            ],
        )
        .unwrap();
        let in_lidar = b
            .transform(&ego_to_global.inverse())
            .transform(&lidar_to_ego.inverse());
        let back = in_lidar.transform(&lidar_to_ego).transform(&ego_to_global);
        assert!((back.center - b.center).norm() < 1e-6);
        for (p, q) in back.corners().iter().zip(b.corners().iter()) {
            assert!((p - q).norm() < 1e-6);
        }
        // The transform composes like the matrices it stands for.
        let p = Point3::new(1.0, -2.0, 3.0);
        let m = (ego_to_global * lidar_to_ego).to_homogeneous();
        let via_matrix = m * p.to_homogeneous();
        let via_iso = ego_to_global * (lidar_to_ego * p);
        assert!((Point3::from_homogeneous(via_matrix).unwrap() - via_iso).norm() < 1e-9);
    }
}

#[test]
fn nuscenes_size_order_and_yaw_extraction() {
    // nuScenes stores size as (w, l, h) and rotation as (w, x, y, z): a 30° yaw about +z.
    let half = (30f64.to_radians() / 2.0).sin_cos();
    let b =
        OrientedBox3D::from_nuscenes([1.0, 2.0, 3.0], [2.0, 4.0, 1.5], [half.1, 0.0, 0.0, half.0])
            .unwrap();
    let yaw_box = b.to_box3d().unwrap();
    assert_eq!(yaw_box.size(), [4.0, 2.0, 1.5]);
    assert!((yaw_box.yaw() - 30f64.to_radians()).abs() < 1e-12);
    // The front-top-left corner (+l/2, +w/2, +h/2) rotated by 30°.
    let c = yaw_box.corners()[0];
    let (s, co) = 30f64.to_radians().sin_cos();
    let expected = Point3::new(1.0 + co * 2.0 - s * 1.0, 2.0 + s * 2.0 + co * 1.0, 3.75);
    assert!((c - expected).norm() < 1e-12);
    // The BEV corners are the top corners' (x, y), counter-clockwise.
    let bev = yaw_box.bev_corners();
    assert!((bev[0][0] - expected.x).abs() < 1e-12 && (bev[0][1] - expected.y).abs() < 1e-12);
    let area: f64 = (0..4)
        .map(|i| {
            let (p, q) = (bev[i], bev[(i + 1) % 4]);
            p[0] * q[1] - q[0] * p[1]
        })
        .sum::<f64>()
        / 2.0;
    assert!((area - 8.0).abs() < 1e-9, "counter-clockwise area {area}");
}

#[test]
fn projection_matches_hand_computed_pixels() {
    let cam = PinholeCamera::from_rows(
        [[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]],
        1600,
        900,
    )
    .unwrap();
    // u = fx·x/z + cx, v = fy·y/z + cy.
    let px = cam.project(&Point3::new(1.0, 2.0, 10.0)).unwrap();
    assert_eq!(px, Point2::new(900.0, 650.0));
    let px = cam.project(&Point3::new(-4.0, -0.9, 5.0)).unwrap();
    assert!((px - Point2::new(0.0, 270.0)).norm() < 1e-9);
    assert!(cam.project(&Point3::new(0.0, 0.0, -1.0)).is_none());
    assert!(cam.project(&Point3::new(0.0, 0.0, 0.0)).is_none());
    // A nuScenes-like CAM_FRONT intrinsic with non-square pixels and an off-centre principal point.
    let cam2 = PinholeCamera::from_rows(
        [[1266.4, 0.0, 816.3], [0.0, 1266.5, 491.5], [0.0, 0.0, 1.0]],
        1600,
        900,
    )
    .unwrap();
    let px = cam2.project(&Point3::new(2.0, 1.0, 20.0)).unwrap();
    assert!(
        (px.x - (1266.4 * 0.1 + 816.3)).abs() < 1e-9
            && (px.y - (1266.5 * 0.05 + 491.5)).abs() < 1e-9
    );
    assert!(PinholeCamera::from_rows([[0.0; 3]; 3], 10, 10).is_err());
    assert!(
        PinholeCamera::from_rows([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 0, 10)
            .is_err()
    );
}

#[test]
fn visibility_rule_follows_corner_projection() {
    let cam = PinholeCamera::from_rows(
        [[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]],
        1600,
        900,
    )
    .unwrap();
    // Camera frame: x right, y down, z forward. A car 20 m ahead, heading along +x of the camera.
    let corners_of = |x: f64, z: f64| {
        let rot = UnitQuaternion::from_axis_angle(&Vector3::y_axis(), 0.0);
        OrientedBox3D::new(Point3::new(x, 0.5, z), [4.0, 2.0, 1.5], rot)
            .unwrap()
            .corners()
    };
    let ahead = corners_of(0.0, 20.0);
    assert!(cam.sees_corners(&ahead, VisibilityRule::AllCorners));
    assert!(cam.sees_corners(&ahead, VisibilityRule::AnyCorner));
    // Straddling the right image border: some corners inside, some outside.
    let border = corners_of(16.0, 20.0);
    assert!(!cam.sees_corners(&border, VisibilityRule::AllCorners));
    assert!(cam.sees_corners(&border, VisibilityRule::AnyCorner));
    // Behind the camera, and straddling the image plane: never visible.
    assert!(!cam.sees_corners(&corners_of(0.0, -20.0), VisibilityRule::AnyCorner));
    assert!(!cam.sees_corners(&corners_of(0.0, 0.5), VisibilityRule::AnyCorner));
    // Transformed from a z-up frame: the same box seen through an isometry agrees with direct corners.
    let iso = Isometry3::from_parts(Translation3::new(0.0, 0.0, 0.0), UnitQuaternion::identity());
    let b = Box3D::new([0.0, 0.5, 20.0], [4.0, 2.0, 1.5], 0.0)
        .unwrap()
        .transform(&iso);
    assert_eq!(b.corners().len(), 8);
}

#[test]
fn bev_nms_matches_brute_force_greedy() {
    let mut rng = StdRng::seed_from_u64(13);
    for _ in 0..100 {
        let n = rng.random_range(0..30);
        let boxes: Vec<Box3D> = (0..n).map(|_| random_box(&mut rng, 4.0)).collect();
        let scores: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let thr = 0.2;
        let keep = bev_nms(&boxes, &scores, thr).unwrap();
        // Reference: every kept pair overlaps at most thr; every dropped box overlaps some higher-scored kept box.
        for (i, &k) in keep.iter().enumerate() {
            for &j in &keep[i + 1..] {
                assert!(bev_iou(&boxes[k], &boxes[j]) <= thr);
                assert!(scores[k] >= scores[j]);
            }
        }
        for d in (0..n).filter(|d| !keep.contains(d)) {
            assert!(keep
                .iter()
                .any(|&k| scores[k] >= scores[d] && bev_iou(&boxes[k], &boxes[d]) > thr));
        }
    }
    let b = bx([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    assert!(bev_nms(&[b], &[0.5, 0.1], 0.5).is_err());
    assert!(bev_nms(&[b], &[f64::NAN], 0.5).is_err());
}

#[test]
fn camera_frame_parameterization_round_trips_through_a_z_up_frame() {
    // Camera looking along +x of a z-up frame (nuScenes-like CAM_FRONT): optical z = forward, x = right, y = down.
    let m = nalgebra::Matrix3::new(0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0);
    let cam_to_lidar = Isometry3::from_parts(
        Translation3::new(1.0, 0.0, 1.5),
        UnitQuaternion::from_rotation_matrix(&nalgebra::Rotation3::from_matrix_unchecked(m)),
    );
    let mut rng = StdRng::seed_from_u64(21);
    for _ in 0..200 {
        let b = random_box(&mut rng, 20.0);
        let in_cam = b.transform(&cam_to_lidar.inverse());
        let p = in_cam.camera_params();
        let rebuilt = OrientedBox3D::from_camera_params(p).unwrap();
        for (x, y) in rebuilt.corners().iter().zip(in_cam.corners().iter()) {
            assert!((x - y).norm() < 1e-9);
        }
        let back = rebuilt.transform(&cam_to_lidar).to_box3d().unwrap();
        let d = (back.yaw() - b.yaw()).rem_euclid(2.0 * PI);
        assert!(d.min(2.0 * PI - d) < 1e-9);
        assert!((Point3::from(back.center()) - Point3::from(b.center())).norm() < 1e-9);
    }
}
