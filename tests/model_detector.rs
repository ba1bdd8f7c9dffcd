//! Detector: the cached image prefix gives the same query states and boxes as one uncached pass, for several
//! prompts on one frame and for views of mixed sizes; the box head has the paper's shape.
mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use vlm3d::model::box_head::{decode_box, BOX_OUTPUTS, HIDDEN_LAYERS};
use vlm3d::model::detector::{Detector, DetectorConfig};
use vlm3d::model::qwen2vl::Pipeline;

fn detector(threshold: f32) -> Detector {
    seeded_detector(threshold, 0)
}

fn seeded_detector(threshold: f32, head_seed: u64) -> Detector {
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    Detector::new(
        pipe,
        DetectorConfig {
            score_threshold: threshold,
            head_seed,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn cached_prefix_equals_uncached() {
    let det = detector(0.0);
    // Six views of one size (one batch) plus a view of another size (its own group).
    let mut imgs: Vec<_> = (0..6).map(|v| image(&format!("view{v}"))).collect();
    imgs.push(image("tall"));
    let (feats, grids) = det.encode_images(&imgs).unwrap();
    let prefix = det.prefill(&feats, &grids, &cameras(grids.len())).unwrap();
    for prompt in [
        "Find the car parked on the left side of the road.",
        "Where is the cyclist?",
    ] {
        let cached = det.query_states_cached(&prefix, prompt).unwrap();
        let full = det
            .query_states(&feats, &grids, &cameras(grids.len()), prompt, false)
            .unwrap();
        assert_eq!(cached.queries.dims(), &[7, 16, 64]);
        // One state per merged image token (2 × 2 patches), and a centre for each.
        for (img, g) in cached.images.iter().zip(&grids) {
            assert_eq!(img.states.dims(), &[g.h * g.w / 4, 64]);
            assert_eq!(img.centres.dims(), &[g.h * g.w / 4, 2]);
        }
        let d = max_abs_diff_inputs(&cached, &full);
        println!("{prompt:?}: cached vs uncached max|Δ| = {d:.3e}");
        assert!(d <= 1e-5, "{d}");
        // The head's raw outputs agree to the same relative precision as the states.
        let (ha, hb) = (
            det.head_forward(&cached).unwrap(),
            det.head_forward(&full).unwrap(),
        );
        let scale = 1.0 + max_abs(&hb.boxes).max(max_abs(&hb.logits));
        let dh = max_abs_diff(&ha.boxes, &hb.boxes).max(max_abs_diff(&ha.logits, &hb.logits));
        println!("{prompt:?}: head max|Δ| = {dh:.3e} (scale {scale:.2})");
        assert!(dh <= 1e-4 * scale, "head outputs differ by {dh}");
        // Decoded boxes, matched by query: the output is sorted by score, and near-ties may swap places
        // between two numerically equal passes; sizes are exponentials, so they agree relatively; yaw
        // agrees modulo 2π.
        let a = det.decode(&ha).unwrap();
        let b = det.decode(&hb).unwrap();
        assert_eq!(a.len(), 7);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.boxes.len(), y.boxes.len());
            for p in &x.boxes {
                let q = y.boxes.iter().find(|q| q.query == p.query).unwrap();
                for k in 0..3 {
                    assert!((p.bbox[k] - q.bbox[k]).abs() <= 1e-4 * (1.0 + q.bbox[k].abs()));
                }
                for k in 3..6 {
                    assert!(
                        (p.bbox[k] / q.bbox[k] - 1.0).abs() <= 1e-3,
                        "{p:?} vs {q:?}"
                    );
                }
                let dyaw = (p.bbox[6] - q.bbox[6] + std::f64::consts::PI)
                    .rem_euclid(std::f64::consts::TAU)
                    - std::f64::consts::PI;
                assert!(dyaw.abs() <= 1e-3, "{p:?} vs {q:?}");
                assert!((p.score - q.score).abs() <= 1e-5, "{p:?} vs {q:?}");
            }
        }
    }
    // Different prompts give different states (the prefix is not all that matters).
    let s1 = det.query_states_cached(&prefix, "Find the car.").unwrap();
    let s2 = det
        .query_states_cached(&prefix, "Where is the cyclist?")
        .unwrap();
    assert!(max_abs_diff(&s1.queries, &s2.queries) > 1e-3);
    // The image tokens precede the prompt: their states do not depend on it.
    assert_eq!(
        max_abs_diff(&s1.images[0].states, &s2.images[0].states),
        0.0
    );
}

#[test]
fn batched_views_equal_single_views() {
    let det = detector(0.0);
    let imgs: Vec<_> = (0..3).map(|v| image(&format!("view{v}"))).collect();
    let (feats, grids) = det.encode_images(&imgs).unwrap();
    let all = det
        .query_states(
            &feats,
            &grids,
            &cameras(grids.len()),
            "Find the car.",
            false,
        )
        .unwrap();
    for v in 0..3 {
        let one = det
            .query_states(
                &feats[v..v + 1],
                &grids[v..v + 1],
                &cameras(1),
                "Find the car.",
                false,
            )
            .unwrap();
        let d = max_abs_diff(&all.queries.get(v).unwrap(), &one.queries.get(0).unwrap())
            .max(max_abs_diff(&all.images[v].states, &one.images[0].states));
        assert!(d <= 1e-5, "view {v}: {d}");
    }
    // The vision tower keeps attention within each image: encoding a view alone gives the same features.
    let (alone, _) = det.encode_images(&imgs[1..2]).unwrap();
    assert!(max_abs_diff(&alone[0], &feats[1]) <= 1e-5);
}

#[test]
fn a_micro_batch_of_prompts_equals_each_example_alone() {
    // The trainer's micro-batch: each view its own prompt. Two prompts of one token count share a decoder batch,
    // a longer one gets its own; every view's states equal its own single-example pass, and the head's outputs
    // (what the losses read) too.
    let det = detector(0.0);
    let imgs: Vec<_> = (0..4).map(|v| image(&format!("view{v}"))).collect();
    let (feats, grids) = det.encode_images(&imgs).unwrap();
    let prompts = [
        "Find the car.",
        "Find the bus.",
        "Find every pedestrian near the crosswalk.",
        "Find the car.",
    ];
    let all = det
        .query_states_prompts(&feats, &grids, &cameras(4), &prompts, true)
        .unwrap();
    let out = det.head_forward(&all).unwrap();
    for v in 0..4 {
        let one = det
            .query_states(
                &feats[v..v + 1],
                &grids[v..v + 1],
                &cameras(1),
                prompts[v],
                true,
            )
            .unwrap();
        let d = max_abs_diff(&all.queries.get(v).unwrap(), &one.queries.get(0).unwrap())
            .max(max_abs_diff(&all.images[v].states, &one.images[0].states));
        assert!(d <= 1e-5, "view {v} ({}): {d}", prompts[v]);
        let o = det.head_forward(&one).unwrap();
        let d = max_abs_diff(&out.view(v).unwrap().boxes, &o.view(0).unwrap().boxes);
        assert!(d <= 1e-4, "view {v}: head boxes {d}");
    }
    // The prompts are told apart: the bus view's states are not the car view's.
    assert!(max_abs_diff(&all.queries.get(0).unwrap(), &all.queries.get(1).unwrap()) > 1e-3);
    assert!(det
        .query_states_prompts(&feats, &grids, &cameras(4), &prompts[..3], true)
        .is_err());
}

#[test]
fn prompts_of_one_view_share_its_prefix_with_equal_states_and_gradients() {
    // A training batch ordered by view: several prompts (of different token counts) on one feature tensor run its
    // image prefix once. States, head outputs and the gradient into the shared features equal those of the same
    // examples with the features as separate tensors (one whole pass each).
    let det = detector(0.0);
    let imgs: Vec<_> = (0..2).map(|v| image(&format!("view{v}"))).collect();
    let (feats, grids) = det.encode_images(&imgs).unwrap();
    let vars: Vec<candle_core::Var> = feats
        .iter()
        .map(|f| candle_core::Var::from_tensor(f).unwrap())
        .collect();
    let prompts = [
        "Find the car.",
        "Find every pedestrian near the crosswalk.",
        "Find the bus.",
        "Find the bus.",
        "Find the car.",
    ];
    let which = [0usize, 0, 1, 0, 1];
    let g: Vec<_> = which.iter().map(|&v| grids[v]).collect();
    let cams = cameras(5);
    let run = |shared: bool| {
        let f: Vec<Tensor> = which
            .iter()
            .map(|&v| {
                let t = vars[v].as_tensor();
                if shared {
                    t.clone()
                } else {
                    // A new tensor of the same values: nothing to share.
                    (t * 1.0).unwrap()
                }
            })
            .collect();
        let states = det
            .query_states_prompts(&f, &g, &cams, &prompts, true)
            .unwrap();
        let out = det.head_forward(&states).unwrap();
        let loss =
            (out.boxes.sqr().unwrap().sum_all().unwrap() + out.logits.sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let gv: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (states, out, gv)
    };
    let (a, oa, ga) = run(true);
    let (b, ob, gb) = run(false);
    for (e, prompt) in prompts.iter().enumerate() {
        let d = max_abs_diff(&a.queries.get(e).unwrap(), &b.queries.get(e).unwrap())
            .max(max_abs_diff(&a.images[e].states, &b.images[e].states));
        assert!(d <= 1e-5, "example {e} ({prompt}): {d}");
        // And the example alone, prefix and prompt in one pass.
        let v = which[e];
        let one = det
            .query_states(
                &feats[v..v + 1],
                &grids[v..v + 1],
                &cameras(1),
                prompt,
                true,
            )
            .unwrap();
        let d = max_abs_diff(&a.queries.get(e).unwrap(), &one.queries.get(0).unwrap())
            .max(max_abs_diff(&a.images[e].states, &one.images[0].states));
        assert!(d <= 1e-5, "example {e} ({prompt}) alone: {d}");
    }
    assert!(max_abs_diff(&oa.boxes, &ob.boxes) <= 1e-4);
    for v in 0..2 {
        let scale = max_abs(&gb[v]);
        let d = max_abs_diff(&ga[v], &gb[v]);
        assert!(
            scale > 0.0 && d <= 1e-5 * scale.max(1.0),
            "view {v}: gradient {d} (scale {scale})"
        );
    }
    // Two prompts of one view are told apart.
    assert!(max_abs_diff(&a.queries.get(0).unwrap(), &a.queries.get(3).unwrap()) > 1e-3);
}

#[test]
fn head_shapes_and_decoding() {
    let det = detector(0.0);
    assert_eq!(HIDDEN_LAYERS, [512, 256, 128]);
    let x = random_head_inputs(2, 16, 64, 9, 16);
    let out = det.head_forward(&x).unwrap();
    assert_eq!(out.embedding.dims(), &[2, 16, 128]);
    assert_eq!(out.boxes.dims(), &[2, 16, BOX_OUTPUTS - 1]);
    assert_eq!(out.logits.dims(), &[2, 16]);
    let b = decode_box(
        3,
        &[1.0, 2.0, 3.0, 0.0, (2f32).ln(), (3f32).ln(), 1.0, 0.0],
        0.5,
    );
    assert_eq!(&b.bbox[..3], &[1.0, 2.0, 3.0]);
    assert!(
        (b.bbox[3] - 1.0).abs() < 1e-6
            && (b.bbox[4] - 2.0).abs() < 1e-5
            && (b.bbox[5] - 3.0).abs() < 1e-5
    );
    assert!((b.bbox[6] - std::f64::consts::FRAC_PI_2).abs() < 1e-6);
    assert!((b.score - 0.5).abs() < 1e-6);
    assert_eq!(b.query, Some(3));
    let all = det
        .detect(&[image("wide")], &cameras(1), "Find the car.")
        .unwrap();
    assert_eq!(all[0].boxes.len(), 16, "threshold 0 keeps every query");
    let strict = detector(1.1)
        .detect(&[image("wide")], &cameras(1), "Find the car.")
        .unwrap();
    assert!(strict[0].boxes.is_empty());
}

#[test]
fn head_round_trips_through_safetensors() {
    let det = detector(0.0);
    let dir = scratch("head");
    det.head.save(&dir.join("head.safetensors")).unwrap();
    let mut other = seeded_detector(0.0, 1);
    let x = random_head_inputs(1, 16, 64, 3, 5);
    assert!(
        max_abs_diff(
            &other.head_forward(&x).unwrap().boxes,
            &det.head_forward(&x).unwrap().boxes
        ) > 0.0
    );
    other.head.load(&dir.join("head.safetensors")).unwrap();
    assert_eq!(max_abs_diff(&other.head.queries, &det.head.queries), 0.0);
    assert_eq!(
        max_abs_diff(
            &other.head_forward(&x).unwrap().boxes,
            &det.head_forward(&x).unwrap().boxes
        ),
        0.0
    );
}

/// On a GPU (build with `--features cuda`), the fixture's boxes and scores equal the CPU's: to 1e-4 in f32, and
/// to what bf16's 8-bit mantissa allows (2e-2 relative to the outputs' scale after two decoder layers) in bf16.
/// Without a GPU it says so and passes, so the CPU suites stay green.
#[test]
fn cuda_matches_cpu_on_the_fixture() {
    let dev = match vlm3d::model::device::select_device(Some("cuda:0")) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED cuda_matches_cpu_on_the_fixture: {e}");
            return;
        }
    };
    let imgs: Vec<_> = (0..6).map(|v| image(&format!("view{v}"))).collect();
    let prompt = "Please detect the car in the image.";
    let run = |device: &Device, dtype: DType| {
        let pipe = Pipeline::load(&fixture(), device, dtype).unwrap();
        let det = Detector::new(
            pipe,
            DetectorConfig {
                score_threshold: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let prefix = det.encode_frame(&imgs, &cameras(imgs.len())).unwrap();
        let out = det
            .head_forward(&det.query_states_cached(&prefix, prompt).unwrap())
            .unwrap();
        let f = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
        };
        (f(&out.boxes), f(&out.logits))
    };
    let (cb, cl) = run(&Device::Cpu, DType::F32);
    for (dtype, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
        let (gb, gl) = run(&dev, dtype);
        let scale = 1.0 + max_abs(&cb).max(max_abs(&cl));
        let d = max_abs_diff(&gb, &cb).max(max_abs_diff(&gl, &cl));
        println!("{dtype:?}: CUDA vs CPU head outputs max|Δ| = {d:.3e} (scale {scale:.2})");
        assert!(d <= tol * scale, "{dtype:?}: {d} > {tol} × {scale}");
    }
}

/// One full fine-tuning step's graph (vision tower through its differentiable path, decoder, head, the stage-2
/// loss) on CUDA gives the CPU's loss and gradients. Skips itself without a GPU (run by `scripts/gpu_check.sh`).
#[test]
fn cuda_training_step_matches_cpu() {
    use vlm3d::geometry::Frame;
    use vlm3d::model::qwen2vl::Qwen2VL;
    use vlm3d::train::loss::{two_stage_loss, BoxEmbedding, LossWeights};
    let dev = match vlm3d::model::device::select_device(Some("cuda:0")) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED cuda_training_step_matches_cpu: {e}");
            return;
        }
    };
    let img = image("view0");
    let targets = [
        [1.0, 1.5, 12.0, 4.2, 1.8, 1.6, 0.3],
        [-3.0, 1.4, 20.0, 4.0, 1.7, 1.5, 1.2],
    ];
    let run = |device: &Device| {
        let (model, vars) = Qwen2VL::load_with(
            &fixture(),
            &[],
            device,
            DType::F32,
            Some(Box::new(|_: &str| true)),
        )
        .unwrap();
        let pipe = Pipeline::with_model(&fixture(), model).unwrap();
        let det = Detector::new(pipe, DetectorConfig::default()).unwrap();
        let p = det.preprocess(std::slice::from_ref(&img)).unwrap();
        let f = det.pipeline.model.encode_images_t(&p, true).unwrap();
        let s = det
            .query_states(
                &[f],
                &p.grids,
                &cameras(1),
                "Please detect the car in the image.",
                true,
            )
            .unwrap();
        let out = det.head_forward(&s).unwrap().view(0).unwrap();
        let w = LossWeights {
            mse: 0.2,
            iou: 0.8,
            confidence: 1.0,
            localization: 0.0,
            confidence_target: Default::default(),
            presence: 0.0,
            box_radius: 0,
        };
        let l = two_stage_loss(
            &out,
            &targets,
            &[],
            Frame::Camera,
            &w,
            &BoxEmbedding::new(device).unwrap(),
        )
        .unwrap()
        .total;
        let grads = l.backward().unwrap();
        let mut all = vars;
        all.extend(det.head.vars());
        let g: Vec<(String, Tensor)> = all
            .iter()
            .map(|(n, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {n}"));
                (n.clone(), g.to_device(&Device::Cpu).unwrap())
            })
            .collect();
        (
            l.to_device(&Device::Cpu)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            g,
        )
    };
    let (cl, cg) = run(&Device::Cpu);
    let (gl, gg) = run(&dev);
    println!("loss CPU {cl:.6} CUDA {gl:.6}");
    assert!(
        (cl - gl).abs() <= 1e-4 * (1.0 + cl.abs()),
        "loss {cl} vs {gl}"
    );
    let mut worst = (0.0f32, String::new());
    for ((n, c), (_, g)) in cg.iter().zip(&gg) {
        let d = max_abs_diff(c, g) / (1.0 + max_abs(c));
        if d > worst.0 {
            worst = (d, n.clone());
        }
    }
    println!(
        "{} gradients: largest relative max|Δ| {:.3e} ({})",
        cg.len(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= 1e-3,
        "gradient of {} differs by {}",
        worst.1,
        worst.0
    );
}
