//! Where the time goes at real 2B widths (2 vision blocks + 2 decoder layers): run with
//! `cargo test --no-default-features --test model_profile -- --ignored --nocapture`.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vlm3d::model::bench::{random_weights, BenchModel};
use vlm3d::model::qwen2vl::{mrope_positions, GridThw, KvCache, Positions, Qwen2VL};

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

#[test]
#[ignore]
fn profile_2b_widths() {
    let dev = Device::Cpu;
    let mut cfg = BenchModel::Qwen2Vl2b.config();
    cfg.vision.depth = 2;
    cfg.text.num_hidden_layers = 2;
    cfg.text.vocab_size = 1000;
    cfg.image_token_id = 12;
    let vb = VarBuilder::from_tensors(random_weights(&cfg, &dev).unwrap(), DType::F32, &dev);
    let m = Qwen2VL::from_var_builder(cfg.clone(), vb, std::path::Path::new("p")).unwrap();
    // GEMM reference at the vision MLP's shape.
    for rows in [576usize, 3456] {
        let a = Tensor::randn(0f32, 1.0, (rows, 1280), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5120, 1280), &dev).unwrap();
        let _ = a.matmul(&w.t().unwrap()).unwrap();
        let (_, t) = secs(|| a.matmul(&w.t().unwrap()).unwrap());
        let (_, tc) = secs(|| a.matmul(&w.t().unwrap().contiguous().unwrap()).unwrap());
        let gf = 2.0 * rows as f64 * 1280.0 * 5120.0 / 1e9;
        println!(
            "gemm {rows}x1280x5120: {:.1} GFLOP/s (w.t()), {:.1} GFLOP/s (contiguous incl. copy)",
            gf / t,
            gf / tc
        );
    }
    for views in [1usize, 6] {
        let grid = GridThw { t: 1, h: 18, w: 32 };
        let px = Tensor::randn(0f32, 1.0, (views * 576, 1176), &dev).unwrap();
        let (feats, tv) = secs(|| m.vision.forward(&px, &vec![grid; views]).unwrap());
        let vis_gflop =
            views as f64 * 576.0 * 2.0 * 2.0 * (4.0 * 1280.0 * 1280.0 + 2.0 * 1280.0 * 5120.0)
                / 1e9;
        let mut ids: Vec<u32> = (100..115).collect();
        ids.extend(std::iter::repeat_n(12, 144));
        ids.extend(200..262);
        let (pos, _) = mrope_positions(&ids, &[grid], 12, 2, 0).unwrap();
        let embs: Vec<Tensor> = (0..views)
            .map(|v| {
                m.embed(&ids, Some(&feats.narrow(0, v * 144, 144).unwrap()))
                    .unwrap()
            })
            .collect();
        let emb = Tensor::stack(&embs, 0).unwrap();
        let p: Positions = std::array::from_fn(|a| vec![pos[a].clone(); views]);
        let (_, tt) = secs(|| {
            m.text
                .forward_embeds(&emb, &p, &mut KvCache::new(), false)
                .unwrap()
        });
        let txt_gflop = 2.0
            * 2.0
            * (views * ids.len()) as f64
            * (1536.0 * (1536.0 + 2.0 * 256.0 + 1536.0) + 3.0 * 1536.0 * 8960.0)
            / 1e9;
        println!(
            "views {views}: vision 2 blocks {tv:.2}s ({:.1} GFLOP/s), text 2 layers {tt:.2}s ({:.1} GFLOP/s)",
            vis_gflop / tv,
            txt_gflop / tt
        );
    }
}

#[test]
#[ignore]
fn profile_vision_block_parts() {
    let dev = Device::Cpu;
    let n = 576;
    let x = Tensor::randn(0f32, 1.0, (n, 1280), &dev).unwrap();
    let w = |o: usize, i: usize| Tensor::randn(0f32, 0.02, (o, i), &dev).unwrap();
    let (wqkv, wp, w1, w2) = (w(3840, 1280), w(1280, 1280), w(5120, 1280), w(1280, 5120));
    // The model's path: OpenBLAS when built with the `openblas` feature.
    let lin = |x: &Tensor, w: &Tensor| vlm3d::model::sgemm::linear_xwt(x, w).unwrap();
    let (qkv, t_qkv) = secs(|| lin(&x, &wqkv));
    let (q, t_perm) = secs(|| {
        qkv.reshape((n, 3, 16, 80))
            .unwrap()
            .permute((1, 2, 0, 3))
            .unwrap()
            .contiguous()
            .unwrap()
    });
    let qq = q.get(0).unwrap();
    let kk = q.get(1).unwrap();
    let (att, t_qk) =
        secs(|| (vlm3d::model::sgemm::batched_matmul_bt(&qq, &kk).unwrap() * 0.1).unwrap());
    let (att, t_sm) = secs(|| candle_nn::ops::softmax_last_dim(&att).unwrap());
    let (o, t_av) = secs(|| vlm3d::model::sgemm::batched_matmul(&att, &q.get(2).unwrap()).unwrap());
    let (o, t_tr) = secs(|| o.transpose(0, 1).unwrap().reshape((n, 1280)).unwrap());
    let (_, t_proj) = secs(|| lin(&o, &wp));
    let (h, t_fc1) = secs(|| lin(&x, &w1));
    let (h, t_gelu) =
        secs(|| (&h * candle_nn::ops::sigmoid(&(&h * 1.702).unwrap()).unwrap()).unwrap());
    let (_, t_fc2) = secs(|| lin(&h, &w2));
    println!(
        "qkv {t_qkv:.3} perm {t_perm:.3} qk {t_qk:.3} softmax {t_sm:.3} av {t_av:.3} transpose {t_tr:.3} proj {t_proj:.3} \
         fc1 {t_fc1:.3} gelu {t_gelu:.3} fc2 {t_fc2:.3}"
    );
}
