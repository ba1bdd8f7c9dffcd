//! Where the time goes at real 2B widths (2 vision blocks + 2 decoder layers), part by part: run with
//! `cargo bench --bench profile` (add `--no-default-features --features openblas` where no ROS 2 is sourced).
//! A profile prints timings; it asserts nothing, so it is a benchmark target, not a test.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vlm3d::bench::forward::{random_weights, BenchModel};
use vlm3d::model::qwen2vl::{mrope_positions, GridThw, KvCache, Positions, Qwen2VL};

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

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

fn profile_vision_block_parts() {
    let dev = Device::Cpu;
    let w = |o: usize, i: usize| Tensor::randn(0f32, 0.02, (o, i), &dev).unwrap();
    let (wqkv, wp, w1, w2) = (w(3840, 1280), w(1280, 1280), w(5120, 1280), w(1280, 5120));
    let (bqkv, b1) = (
        w(1, 3840).squeeze(0).unwrap(),
        w(1, 5120).squeeze(0).unwrap(),
    );
    let ln = candle_nn::LayerNorm::new(
        Tensor::ones(1280, DType::F32, &dev).unwrap(),
        Tensor::zeros(1280, DType::F32, &dev).unwrap(),
        1e-6,
    );
    // The model's path: OpenBLAS when built with the `openblas` feature.
    let lin = |x: &Tensor, w: &Tensor| vlm3d::model::cpu::sgemm::linear_xwt(x, w).unwrap();
    for views in [1usize, 6] {
        let n = 576 * views;
        let x = Tensor::randn(0f32, 1.0, (n, 1280), &dev).unwrap();
        let (h, t_ln) = secs(|| candle_nn::Module::forward(&ln, &x).unwrap());
        let (_, t_qkv) = secs(|| lin(&h, &wqkv));
        let (qkv, t_bias) =
            secs(|| vlm3d::model::cpu::sgemm::linear_xwt_bias(&h, &wqkv, Some(&bqkv)).unwrap());
        let (q, t_perm) = secs(|| {
            qkv.reshape((n, 3, 16, 80))
                .unwrap()
                .permute((1, 2, 0, 3))
                .unwrap()
                .contiguous()
                .unwrap()
        });
        let (qq, kk, vv) = (q.get(0).unwrap(), q.get(1).unwrap(), q.get(2).unwrap());
        let cs = Tensor::randn(0f32, 1.0, (n, 40), &dev).unwrap();
        let (_, t_rope) = secs(|| {
            let r = |t: &Tensor| {
                candle_nn::rotary_emb::rope(&t.unsqueeze(0).unwrap(), &cs, &cs)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
            };
            (r(&qq), r(&kk))
        });
        let (_, t_res) = secs(|| (&x + &x).unwrap());
        // The whole attention (rotary, scores, softmax, values), fused against candle's ops; best of 3.
        let segs: Vec<usize> = (0..=views).map(|v| v * 576).collect();
        let best = |f: &dyn Fn() -> Tensor| (0..3).map(|_| secs(f).1).fold(f64::INFINITY, f64::min);
        let t_att_fused = best(&|| {
            vlm3d::model::cpu::fused::segment_attention(&qkv, &cs, &cs, &segs, 16).unwrap()
        });
        let t_att_unfused = best(&|| {
            vlm3d::model::cpu::fused::segment_attention_unfused(&qkv, &cs, &cs, &segs, 16).unwrap()
        });
        // All views and heads in one batched product (the path off the f32 CPU: CUDA, Metal).
        let t_att_batched = best(&|| {
            vlm3d::model::qwen2vl::vision::segment_attention_batched(
                &qkv, &cs, &cs, &segs, 16, false,
            )
            .unwrap()
        });
        let (mut t_qk, mut t_sm, mut t_av) = (0.0, 0.0, 0.0);
        let mut outs = vec![];
        for v in 0..views {
            let nar = |t: &Tensor| t.narrow(1, v * 576, 576).unwrap();
            let (att, t) = secs(|| {
                vlm3d::model::cpu::sgemm::batched_matmul_bt_scaled(&nar(&qq), &nar(&kk), 0.1)
                    .unwrap()
            });
            t_qk += t;
            let (att, t) = secs(|| candle_nn::ops::softmax_last_dim(&att).unwrap());
            t_sm += t;
            let (o, t) =
                secs(|| vlm3d::model::cpu::sgemm::batched_matmul(&att, &nar(&vv)).unwrap());
            t_av += t;
            outs.push(o);
        }
        let (o, t_tr) = secs(|| {
            Tensor::cat(&outs, 1)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .reshape((n, 1280))
                .unwrap()
        });
        let (_, t_proj) = secs(|| lin(&o, &wp));
        let (_, t_fc1) = secs(|| lin(&x, &w1));
        let (h, t_bias1) =
            secs(|| vlm3d::model::cpu::sgemm::linear_xwt_bias(&x, &w1, Some(&b1)).unwrap());
        let (_, t_gelu_unfused) =
            secs(|| (&h * candle_nn::ops::sigmoid(&(&h * 1.702).unwrap()).unwrap()).unwrap());
        let (h, t_gelu) = secs(|| vlm3d::model::cpu::fused::quick_gelu(&h).unwrap());
        let (_, t_fc2) = secs(|| lin(&h, &w2));
        println!(
            "views {views}: ln {t_ln:.3} qkv {t_qkv:.3} qkv+bias {t_bias:.3} attention {t_att_fused:.3} (unfused {t_att_unfused:.3}, batched {t_att_batched:.3}) perm {t_perm:.3} rope {t_rope:.3} residual {t_res:.3} qk {t_qk:.3} softmax {t_sm:.3} \
             av {t_av:.3} cat+transpose {t_tr:.3} proj {t_proj:.3} fc1 {t_fc1:.3} fc1+bias {t_bias1:.3} gelu {t_gelu:.3} \
             (unfused {t_gelu_unfused:.3}) fc2 {t_fc2:.3}"
        );
    }
}

fn profile_text_layer_parts() {
    use vlm3d::model::cpu::sgemm::{
        batched_matmul, batched_matmul_bt_scaled, linear_xwt, linear_xwt_bias,
    };
    let dev = Device::Cpu;
    let w = |o: usize, i: usize| Tensor::randn(0f32, 0.02, (o, i), &dev).unwrap();
    let best = |f: &dyn Fn() -> Tensor| (0..3).map(|_| secs(f).1).fold(f64::INFINITY, f64::min);
    let (b, s, h, nh, nkv, hd, ff) = (
        6usize, 221usize, 1536usize, 12usize, 2usize, 128usize, 8960usize,
    );
    let rows = b * s;
    let x = Tensor::randn(0f32, 1.0, (rows, h), &dev).unwrap();
    let (wq, wk, wo) = (w(h, h), w(nkv * hd, h), w(h, h));
    let bq = w(1, h).squeeze(0).unwrap();
    let (wg, wu, wd) = (w(ff, h), w(ff, h), w(h, ff));
    let wgu = Tensor::cat(&[&wg, &wu], 0).unwrap();
    let nw = Tensor::ones(h, DType::F32, &dev).unwrap();
    let t_norm = best(&|| candle_nn::ops::rms_norm(&x, &nw, 1e-6).unwrap());
    let t_q = best(&|| linear_xwt_bias(&x, &wq, Some(&bq)).unwrap());
    let t_k = best(&|| linear_xwt(&x, &wk).unwrap());
    let t_o = best(&|| linear_xwt(&x, &wo).unwrap());
    let q = linear_xwt(&x, &wq).unwrap();
    let heads = |t: &Tensor, n: usize| {
        t.reshape((b, s, n, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let t_split = best(&|| heads(&q, nh));
    let qh = heads(&q, nh);
    let kh = heads(&linear_xwt(&x, &wk).unwrap(), nkv);
    let cs = Tensor::randn(0f32, 1.0, (b, s, hd / 2), &dev).unwrap();
    let t_rope = best(&|| candle_nn::rotary_emb::rope(&qh, &cs, &cs).unwrap());
    let expand = |t: &Tensor| {
        t.unsqueeze(2)
            .unwrap()
            .expand((b, nkv, nh / nkv, s, hd))
            .unwrap()
            .reshape((b, nh, s, hd))
            .unwrap()
    };
    let t_expand = best(&|| expand(&kh));
    let ke = expand(&kh);
    let t_qk = best(&|| batched_matmul_bt_scaled(&qh, &ke, 0.1).unwrap());
    let att = batched_matmul_bt_scaled(&qh, &ke, 0.1).unwrap();
    let mask = Tensor::zeros((s, s), DType::F32, &dev).unwrap();
    let t_mask = best(&|| att.broadcast_add(&mask).unwrap());
    let t_sm = best(&|| candle_nn::ops::softmax_last_dim(&att).unwrap());
    let t_av = best(&|| batched_matmul(&att, &ke).unwrap());
    let o = batched_matmul(&att, &ke).unwrap();
    let t_merge = best(&|| o.transpose(1, 2).unwrap().reshape((rows, h)).unwrap());
    let t_gate = best(&|| linear_xwt(&x, &wg).unwrap());
    let t_gu = best(&|| linear_xwt(&x, &wgu).unwrap());
    let (g, u) = (linear_xwt(&x, &wg).unwrap(), linear_xwt(&x, &wu).unwrap());
    let t_act = best(&|| vlm3d::model::cpu::fused::silu_mul(&g, &u).unwrap());
    let t_down = best(&|| linear_xwt(&g, &wd).unwrap());
    let t_res = best(&|| (&x + &x).unwrap());
    println!(
        "text layer, {b}×{s} rows: norm {t_norm:.3} q {t_q:.3} k/v {t_k:.3} o {t_o:.3} split {t_split:.3} \
         rope {t_rope:.3} expand {t_expand:.3} qk {t_qk:.3} mask {t_mask:.3} softmax {t_sm:.3} av {t_av:.3} \
         merge {t_merge:.3} gate/up {t_gate:.3} (both in one {t_gu:.3}) silu·mul {t_act:.3} down {t_down:.3} \
         residual {t_res:.3}"
    );
}

fn main() {
    profile_2b_widths();
    profile_vision_block_parts();
    profile_text_layer_parts();
}
