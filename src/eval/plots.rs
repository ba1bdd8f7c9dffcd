//! PNG plots of `vlm3d eval` and of a training run, drawn with `plotters` into an RGB buffer and encoded
//! with `image`.
//!
//! * [`category_bars`]: per category, the mean IoU and the nuScenes AP at 2 m of each predictor (grouped bars, two
//!   panels).
//! * [`pr_curves`]: precision–recall at one centre-distance threshold, all categories pooled, one curve per
//!   predictor; the points come from [`pr_curve`], which matches as `metrics::evaluate` does for AP.
//! * [`training_curves`]: the loss terms and the learning rate of the trainer's `metrics.jsonl` against step.
//! * [`open_set_bars`]: mIoU, mAP and Acc@0.25 of the seen and the held-out (unseen) categories.
//!
//! Text is rasterised by `ab_glyph` from the DejaVu Sans bytes embedded in the binary
//! (`assets/fonts/DejaVuSans.ttf`, licence beside it), so no fontconfig or system font is needed. Empty inputs
//! give a plot with its axes and a note saying what is missing, never a panic.
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use serde::Deserialize;

use super::metrics::{CategoryMetrics, Metrics, Query};
use super::openset::OpenSetSplit;
use crate::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family every text style here names; the embedded font is registered under it (it is also plotters'
/// default family, so mesh and legend text without an explicit font find it too).
pub const FONT: &str = "sans-serif";

/// Series colours (matplotlib's tab10): the first predictor blue, the second orange, …
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Sizes in pixels: the bars' width grows with the categories.
const BARS_HEIGHT: u32 = 900;
const PR_SIZE: (u32, u32) = (900, 750);
const TRAINING_SIZE: (u32, u32) = (1100, 850);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn colour(k: usize) -> RGBColor {
    PALETTE[k % PALETTE.len()]
}

/// Registers the embedded font under [`FONT`] (once per process); every picture the crate draws calls it first.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "plot font",
            "the embedded DejaVuSans.ttf does not parse",
        ))
    }
}

/// Draws with `draw` on a white `size` canvas and writes it to `path` as PNG (its folder created).
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<()> {
    ensure_font()?;
    let plot_err =
        |e: Box<dyn std::error::Error>| Error::invalid("plot", format!("{}: {e}", path.display()));
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let drawn = (|| -> DrawResult {
            root.fill(&WHITE)?;
            draw(&root)?;
            root.present()?;
            Ok(())
        })();
        drawn.map_err(plot_err)?;
    }
    save_png(path, (w, h), buf, "plot")
}

/// Writes an RGB8 buffer of `w`×`h` to `path` as PNG (its folder created); `what` names the picture in errors.
pub fn save_png(path: &Path, (w, h): (u32, u32), buf: Vec<u8>, what: &str) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| {
        Error::invalid(
            what,
            format!("{}: buffer does not match {w}×{h}", path.display()),
        )
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(io) => Error::io(path, io),
            e => Error::invalid(what, format!("{}: {e}", path.display())),
        })
}

/// An f64 axis ticked (and gridded) exactly at `ticks`; plotters' own `WithKeyPoints` wrapper loses the f64
/// axis' label formatter.
struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Self {
            inner: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

/// A grey note centred in `area` (what is missing).
fn note(area: &Area<'_>, text: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 20).into_font())
        .color(&RGBColor(90, 90, 90))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))?;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A number for an axis label: fixed for ordinary magnitudes, scientific otherwise.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (0.01..10_000.0).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        // 2.50e-5 → 2.5e-5, 1.00e-3 → 1e-3.
        let s = format!("{v:.2e}");
        match s.split_once('e') {
            Some((m, e)) if m.contains('.') => {
                format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per-category bars.

/// Grouped bars per category of the mean IoU (top panel) and the nuScenes AP at 2 m (bottom panel), one colour
/// per predictor (`results`: name and metrics, e.g. the model and the mean-box baseline). Writes a PNG to `path`.
pub fn category_bars(path: &Path, results: &[(&str, &Metrics)]) -> Result<()> {
    let cats: Vec<&str> = results
        .iter()
        .flat_map(|(_, m)| m.categories.keys().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Room per category: its name at 14 px (≈ 8.5 px a character) and a readable bar per predictor.
    let longest = cats.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let per_cat = (longest * 9 + 24).max(40 * results.len() + 30).max(90);
    let width = (160 + per_cat * cats.len().max(1)).clamp(900, 6000) as u32;
    let title = if results.is_empty() {
        "Per-category IoU and AP@2 m (no predictor)".to_string()
    } else {
        format!(
            "Per-category IoU and AP@2 m: {}",
            results
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" vs ")
        )
    };
    render(path, (width, BARS_HEIGHT), |root| {
        let body = root.titled(&title, (FONT, 26))?;
        let panels = body.split_evenly((2, 1));
        bar_panel(
            &panels[0],
            "Mean 3D IoU of each ground-truth box with its match (0 when unmatched)",
            "IoU (unitless, 0–1)",
            &cats,
            results,
            |c| c.iou,
        )?;
        bar_panel(
            &panels[1],
            "nuScenes AP, BEV centre distance < 2 m",
            "AP@2 m (unitless, 0–1)",
            &cats,
            results,
            |c| c.ap[2],
        )?;
        Ok(())
    })
}

fn bar_panel(
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    cats: &[&str],
    results: &[(&str, &Metrics)],
    value: fn(&CategoryMetrics) -> f64,
) -> DrawResult {
    let n = cats.len();
    let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
    // Up to 1 on the y axis; the headroom above holds the legend and the bars' value labels.
    let y_ticks: Vec<f64> = (0..=5).map(|k| k as f64 * 0.2).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            Ticked::new(0.0..n.max(1) as f64, centres),
            Ticked::new(0.0..1.3, y_ticks),
        )?;
    let x_fmt = |x: &f64| {
        cats.get(x.max(0.0) as usize)
            .map(|c| c.to_string())
            .unwrap_or_default()
    };
    let y_fmt = |y: &f64| format!("{y:.1}");
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("category (prompt name)")
        .y_desc(y_desc)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let k_all = results.len().max(1) as f64;
    let slot = 0.8 / k_all;
    let value_style =
        TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (k, (name, m)) in results.iter().enumerate() {
        let c = colour(k);
        let bars: Vec<(f64, f64, f64)> = cats
            .iter()
            .enumerate()
            .filter_map(|(i, cat)| {
                let v = value(m.categories.get(*cat)?);
                let x0 = i as f64 + 0.1 + k as f64 * slot;
                Some((
                    x0,
                    x0 + slot * 0.9,
                    if v.is_finite() {
                        v.clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                ))
            })
            .collect();
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x0, x1, v)| Rectangle::new([(x0, 0.0), (x1, v)], c.filled())),
            )?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        chart.draw_series(bars.iter().map(|&(x0, x1, v)| {
            Text::new(
                format!("{v:.2}"),
                ((x0 + x1) / 2.0, v + 0.01),
                value_style.clone(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    if n == 0 {
        note(
            &chart.plotting_area().strip_coord_spec(),
            "no categories to plot",
        )?;
    } else if results.is_empty() {
        note(
            &chart.plotting_area().strip_coord_spec(),
            "no predictor results",
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Precision–recall.

/// Every prediction of `queries` as (score, true positive) under the nuScenes rule of `metrics::evaluate`: per
/// (sample, category) query, predictions by descending score each take the nearest not yet matched ground-truth
/// centre in the BEV closer than `distance_m`; and the number of ground-truth boxes.
fn scored_hits(queries: &[Query], distance_m: f64) -> (Vec<(f32, bool)>, usize) {
    let mut scored = Vec::new();
    let mut n_truth = 0;
    for q in queries {
        n_truth += q.truth.len();
        let centres: Vec<[f64; 3]> = q.truth.iter().map(|t| t.center()).collect();
        let mut order: Vec<usize> = (0..q.predicted.len()).collect();
        order.sort_by(|&a, &b| q.predicted[b].score.total_cmp(&q.predicted[a].score));
        let mut taken = vec![false; centres.len()];
        for &i in &order {
            let p = q.predicted[i].center();
            let best = centres
                .iter()
                .enumerate()
                .filter(|(g, _)| !taken[*g])
                .map(|(g, t)| (g, (t[0] - p[0]).hypot(t[1] - p[1])))
                .filter(|(_, dist)| *dist < distance_m)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((g, _)) = best {
                taken[g] = true;
            }
            scored.push((q.predicted[i].score, best.is_some()));
        }
    }
    (scored, n_truth)
}

/// The precision–recall curve of `queries` (all categories pooled) at the BEV centre-distance threshold
/// `distance_m`: matches made per query as `metrics::evaluate` makes them for AP, then all predictions sorted by
/// descending score (ties in query order), one (recall, precision) point after each prediction. Empty when there
/// is no ground truth or no prediction (recall or precision undefined).
pub fn pr_curve(queries: &[Query], distance_m: f64) -> Vec<(f64, f64)> {
    let (mut scored, n_truth) = scored_hits(queries, distance_m);
    if n_truth == 0 || scored.is_empty() {
        return Vec::new();
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    scored
        .iter()
        .map(|&(_, hit)| {
            if hit {
                tp += 1;
            } else {
                fp += 1;
            }
            (tp as f64 / n_truth as f64, tp as f64 / (tp + fp) as f64)
        })
        .collect()
}

/// Precision–recall curves at `distance_m` (BEV centre distance), all categories pooled, one per predictor
/// (`results`: name and its queries). Writes a PNG to `path`.
pub fn pr_curves(path: &Path, results: &[(&str, &[Query])], distance_m: f64) -> Result<()> {
    if !(distance_m.is_finite() && distance_m > 0.0) {
        return Err(Error::invalid(
            "PR distance threshold",
            format!("{distance_m} m (must be a positive number of metres)"),
        ));
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|(name, q)| {
            let truth: usize = q.iter().map(|q| q.truth.len()).sum();
            let predicted: usize = q.iter().map(|q| q.predicted.len()).sum();
            let pts = pr_curve(q, distance_m);
            let label = if pts.is_empty() {
                format!(
                    "{name} (no curve: {truth} ground truth, {predicted} prediction{})",
                    plural(predicted)
                )
            } else {
                format!(
                    "{name} ({truth} ground truth, {predicted} prediction{})",
                    plural(predicted)
                )
            };
            (label, pts)
        })
        .collect();
    let title = format!(
        "Precision–recall, BEV centre distance < {} m, all categories pooled",
        fmt_num(distance_m)
    );
    render(path, PR_SIZE, |root| {
        let body = root.titled(&title, (FONT, 22))?;
        let mut chart = ChartBuilder::on(&body)
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(
                Ticked::new(0.0..1.0, linear_ticks(&(0.0..1.0), 10)),
                Ticked::new(0.0..1.02, linear_ticks(&(0.0..1.0), 10)),
            )?;
        let fmt = |v: &f64| format!("{v:.1}");
        chart
            .configure_mesh()
            .x_desc("recall (share of ground-truth boxes found, 0–1)")
            .y_desc("precision (share of predictions correct, 0–1)")
            .x_label_formatter(&fmt)
            .y_label_formatter(&fmt)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()?;
        for (k, (label, pts)) in curves.iter().enumerate() {
            let c = colour(k);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            if pts.len() <= 60 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        if curves.iter().all(|(_, p)| p.is_empty()) {
            let why = if curves.is_empty() {
                "no predictor results"
            } else {
                "no curve: needs ground truth and predictions"
            };
            note(&chart.plotting_area().strip_coord_spec(), why)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Training curves.

/// The fields of a `metrics.jsonl` line (`train::trainer::StepMetrics`) that the plot reads.
#[derive(Debug, Clone, Deserialize)]
struct LogLine {
    step: usize,
    loss: f64,
    mse: f64,
    iou_loss: f64,
    confidence: f64,
    /// Absent in logs from before the readout (and 0 when its weight is 0).
    #[serde(default)]
    localization: f64,
    /// Absent in logs from before the presence map (and 0 when its weight is 0).
    #[serde(default)]
    presence: f64,
    lr: f64,
}

/// The log's lines by step; a step logged again (a run resumed from an earlier checkpoint appends to the same
/// file) keeps its last line.
fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut by_step = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: LogLine = serde_json::from_str(line)
            .map_err(|e| Error::format(path, Some(format!("line {}", i + 1)), e.to_string()))?;
        let values = [
            row.loss,
            row.mse,
            row.iou_loss,
            row.confidence,
            row.localization,
            row.presence,
            row.lr,
        ];
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::format(
                path,
                Some(format!("line {}", i + 1)),
                "a non-finite value",
            ));
        }
        by_step.insert(row.step, row);
    }
    Ok(by_step.into_values().collect())
}

/// A range over `lo..hi` with some room, never empty.
fn padded(lo: f64, hi: f64, pad: f64) -> Range<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return lo - d..hi + d;
    }
    let d = (hi - lo) * pad;
    lo - d..hi + d
}

/// About `n` round tick values (1, 2 or 5 × 10^k apart, the spacing nearest span / n) inside `range`.
fn linear_ticks(range: &Range<f64>, n: usize) -> Vec<f64> {
    let span = range.end - range.start;
    if !(span.is_finite() && span > 0.0) || n == 0 {
        return Vec::new();
    }
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .unwrap_or(mag);
    let first = (range.start / step).ceil() as i64;
    let last = (range.end / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Steps per moving-average window of a training log of `n` steps: 1 (no smoothing) up to 100 steps, then about
/// a fiftieth of the log.
fn smoothing_window(n: usize) -> usize {
    if n <= 100 {
        1
    } else {
        (n / 50).max(2)
    }
}

/// Centred moving average over `window` values (shorter at the ends).
fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let half = window / 2;
    (0..values.len())
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + window - half).min(values.len());
            values[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// Whether loss values are drawn on a log scale: unless more than 1 in 20 are 0 or less (a term that is off).
/// The few steps whose batch held no box (box terms 0) then sit on the plot's floor instead of flattening every
/// curve onto a linear axis.
fn log_scale(values: &[f64]) -> bool {
    let non_positive = values.iter().filter(|v| **v <= 0.0).count();
    non_positive < values.len() && non_positive * 20 <= values.len()
}

/// Plots the loss terms (total, embedding MSE, 1 − IoU3D, confidence BCE, and the readout's localization
/// cross-entropy and the presence map's focal loss when the run used them) against the optimizer step, on a log
/// scale when every value is positive, above the learning rate, from the trainer's `metrics.jsonl`. Writes a PNG
/// to `path`; a long log is drawn faint with a moving average on top; a malformed line is an [`Error::Format`] naming it.
pub fn training_curves(path: &Path, metrics_jsonl: &Path) -> Result<()> {
    let rows = read_log(metrics_jsonl)?;
    let name = metrics_jsonl
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "Training: {name} ({} step{})",
        rows.len(),
        plural(rows.len())
    );
    let steps = match (rows.first(), rows.last()) {
        (Some(a), Some(b)) if b.step > a.step => a.step as f64..b.step as f64,
        (Some(a), _) => a.step as f64 - 1.0..a.step as f64 + 1.0,
        _ => 0.0..1.0,
    };
    type Term = (&'static str, fn(&LogLine) -> f64);
    let mut terms: Vec<Term> = vec![
        ("total loss (weighted)", |r| r.loss),
        ("embedding MSE", |r| r.mse),
        ("1 − IoU3D of matched boxes", |r| r.iou_loss),
        ("confidence (BCE; dense head: heat-map focal)", |r| {
            r.confidence
        }),
    ];
    if rows.iter().any(|r| r.localization > 0.0) {
        terms.push(("localization (readout CE; dense head: centre L1)", |r| {
            r.localization
        }));
    }
    if rows.iter().any(|r| r.presence > 0.0) {
        terms.push(("presence focal loss", |r| r.presence));
    }
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|r| terms.iter().map(move |(_, f)| f(r)))
        .collect();
    let log = log_scale(&all);
    let zeros = all.iter().any(|v| *v <= 0.0);
    // On a log scale the y coordinate is log10 of the value, ticked at decades (and 2, 5 between when they are few);
    // linear: round ticks.
    let (lo, hi) = all
        .iter()
        .filter(|v| !log || **v > 0.0)
        .map(|&v| if log { v.log10() } else { v })
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let y_range = if all.is_empty() {
        0.0..1.0
    } else if log {
        padded(lo, hi, 0.05)
    } else {
        padded(lo.min(0.0), hi, 0.05)
    };
    let floor = y_range.start;
    let to_y = |v: f64| match (log, v > 0.0) {
        (true, true) => v.log10(),
        (true, false) => floor,
        (false, _) => v,
    };
    let y_ticks: Vec<f64> = if log {
        let (d0, d1) = (y_range.start.floor() as i32, y_range.end.ceil() as i32);
        let few = d1 - d0 <= 3;
        (d0..=d1)
            .flat_map(|d| {
                let d = d as f64;
                if few {
                    vec![d, d + 2f64.log10(), d + 5f64.log10()]
                } else {
                    vec![d]
                }
            })
            .filter(|y| y_range.contains(y))
            .collect()
    } else {
        linear_ticks(&y_range, 6)
    };
    // Steps are whole numbers: integer ticks only.
    let step_ticks: Vec<f64> = linear_ticks(&steps, 8)
        .into_iter()
        .filter(|x| x.fract() == 0.0)
        .collect();
    let lr_hi = rows.iter().map(|r| r.lr).fold(0.0, f64::max);
    // Headroom above the largest rate for the legend.
    let markers = rows.len() <= 30;
    let lr_range = if lr_hi > 0.0 {
        0.0..lr_hi * 1.35
    } else {
        0.0..1.0
    };
    render(path, TRAINING_SIZE, |root| {
        let body = root.titled(&title, (FONT, 24))?;
        let (top, bottom) = body.split_vertically((68).percent());
        let x_fmt = |x: &f64| format!("{}", x.round() as i64);
        // Losses.
        let y_desc = if log && zeros {
            "loss (unitless, log scale; 0 on the floor)"
        } else if log {
            "loss (unitless, log scale)"
        } else {
            "loss (unitless)"
        };
        let y_fmt = |y: &f64| fmt_num(if log { 10f64.powf(*y) } else { *y });
        let mut chart = ChartBuilder::on(&top)
            .caption("Loss terms (mean over the step's examples)", (FONT, 18))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Ticked::new(steps.clone(), step_ticks.clone()),
                Ticked::new(y_range.clone(), y_ticks.clone()),
            )?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc(y_desc)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()?;
        for (k, (label, f)) in terms.iter().enumerate() {
            let c = colour(k);
            let values: Vec<f64> = rows.iter().map(f).collect();
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .zip(&values)
                .map(|(r, v)| (r.step as f64, to_y(*v)))
                .collect();
            if markers {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
            // A long noisy log: the raw steps thin and faint (wide zigzag lines grow miter spikes), and a
            // moving average on top, which is what the eye should follow.
            let window = smoothing_window(rows.len());
            let (raw_style, label) = if window > 1 {
                (
                    c.mix(0.25).stroke_width(1),
                    format!("{label} (mean of {window} steps)"),
                )
            } else {
                (c.stroke_width(2), label.to_string())
            };
            let series = chart.draw_series(LineSeries::new(pts.clone(), raw_style))?;
            let series = if window > 1 {
                let smooth: Vec<(f64, f64)> = moving_average(&values, window)
                    .into_iter()
                    .zip(&pts)
                    .map(|(v, p)| (p.0, to_y(v)))
                    .collect();
                chart.draw_series(LineSeries::new(smooth, c.stroke_width(2)))?
            } else {
                series
            };
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        if rows.is_empty() {
            note(&chart.plotting_area().strip_coord_spec(), "no steps logged")?;
        }
        // Learning rate.
        let lr_fmt = |y: &f64| fmt_num(*y);
        let mut chart = ChartBuilder::on(&bottom)
            .caption("Learning rate", (FONT, 18))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Ticked::new(steps.clone(), step_ticks.clone()),
                Ticked::new(lr_range.clone(), linear_ticks(&lr_range, 4)),
            )?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("learning rate (per step)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&lr_fmt)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()?;
        let c = colour(4);
        if markers {
            chart.draw_series(
                rows.iter()
                    .map(|r| Circle::new((r.step as f64, r.lr), 3, c.filled())),
            )?;
        }
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.step as f64, r.lr)),
                c.stroke_width(2),
            ))?
            .label("learning rate")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Open set: seen vs unseen.

/// Size of the open-set plot, pixels.
const OPEN_SET_SIZE: (u32, u32) = (1000, 700);

/// A summary number of a [`Metrics`].
type MetricOf = fn(&Metrics) -> f64;

/// Grouped bars of mIoU, nuScenes mAP and Acc@0.25 for the seen and the unseen (held-out) categories, one colour
/// per (predictor, side) (`results`: name and split, e.g. the model and the mean-box baseline). Writes a PNG.
pub fn open_set_bars(path: &Path, results: &[(&str, &OpenSetSplit)]) -> Result<()> {
    let metrics: [(&str, MetricOf); 3] = [
        ("mIoU", |m| m.miou),
        ("nuScenes mAP", |m| m.nusc_map),
        ("Acc@0.25", |m| m.acc_25),
    ];
    let held = results
        .first()
        .map(|(_, s)| s.holdout.join(", "))
        .unwrap_or_default();
    let title = format!("Open set: seen vs held-out (unseen) categories [{held}]");
    render(path, OPEN_SET_SIZE, |root| {
        let body = root.titled(&title, (FONT, 22))?;
        let n = metrics.len();
        let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
        let y_ticks: Vec<f64> = (0..=5).map(|k| k as f64 * 0.2).collect();
        let mut chart = ChartBuilder::on(&body)
            .caption(
                "Each side scored on its own categories (paper's prompt; IoU ≥ 0.25 Hungarian, nuScenes AP)",
                (FONT, 16),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(
                Ticked::new(0.0..n as f64, centres),
                Ticked::new(0.0..1.3, y_ticks),
            )?;
        let x_fmt = |x: &f64| {
            metrics
                .get(x.max(0.0) as usize)
                .map(|m| m.0.to_string())
                .unwrap_or_default()
        };
        let y_fmt = |y: &f64| format!("{y:.1}");
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("metric")
            .y_desc("score (unitless, 0–1)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()?;
        let series = results.len() * 2;
        let slot = 0.8 / series.max(1) as f64;
        let value_style =
            TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (k, (name, s)) in results.iter().enumerate() {
            for (side, (label, m)) in [("seen", &s.seen), ("unseen", &s.unseen)]
                .into_iter()
                .enumerate()
            {
                let j = 2 * k + side;
                let c = colour(j);
                let cats = m.categories.values().filter(|c| c.truth > 0).count();
                let bars: Vec<(f64, f64, f64)> = metrics
                    .iter()
                    .enumerate()
                    .map(|(i, (_, f))| {
                        let x0 = i as f64 + 0.1 + j as f64 * slot;
                        let v = f(m);
                        (
                            x0,
                            x0 + slot * 0.9,
                            if v.is_finite() {
                                v.clamp(0.0, 1.0)
                            } else {
                                0.0
                            },
                        )
                    })
                    .collect();
                chart
                    .draw_series(
                        bars.iter()
                            .map(|&(x0, x1, v)| Rectangle::new([(x0, 0.0), (x1, v)], c.filled())),
                    )?
                    .label(format!(
                        "{name}: {label} ({cats} categor{} with ground truth)",
                        if cats == 1 { "y" } else { "ies" }
                    ))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled())
                    });
                chart.draw_series(bars.iter().map(|&(x0, x1, v)| {
                    Text::new(
                        format!("{v:.2}"),
                        ((x0 + x1) / 2.0, v + 0.01),
                        value_style.clone(),
                    )
                }))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        if results.is_empty() {
            note(
                &chart.plotting_area().strip_coord_spec(),
                "no predictor results",
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Box3D;
    use crate::perception::Detection;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vlm3d-plots-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Removes a test's folder, unless VLM3D_KEEP_PLOTS is set (to look at the PNGs; the path is printed).
    fn done(d: &Path) {
        if std::env::var_os("VLM3D_KEEP_PLOTS").is_some() {
            eprintln!("plots kept in {}", d.display());
        } else {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    fn b(x: f64, y: f64) -> Box3D {
        Box3D::from_params([x, y, 0.0, 4.0, 2.0, 1.5, 0.0]).unwrap()
    }

    fn det(x: f64, y: f64, score: f32) -> Detection {
        Detection::new([x, y, 0.0, 4.0, 2.0, 1.5, 0.0], score)
    }

    fn q(sample: &str, category: &str, truth: Vec<Box3D>, predicted: Vec<Detection>) -> Query {
        Query {
            sample: sample.into(),
            category: category.into(),
            truth,
            predicted,
        }
    }

    /// Decodes the PNG, checks its size, and returns its distinct colours.
    fn colours(path: &Path, size: (u32, u32)) -> BTreeSet<[u8; 3]> {
        assert!(path.is_file(), "{} missing", path.display());
        let img = crate::perception::image::read_image_file(path).unwrap();
        assert_eq!(img.dimensions(), size, "{}", path.display());
        let set: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(set.len() > 1, "{} is blank", path.display());
        set
    }

    /// Queries whose greedy matches were worked out by hand (see `pr_curve_matches_a_hand_computed_case`).
    fn hand_queries() -> Vec<Query> {
        vec![
            // 0.9 takes (0, 0) at 0.5 m; 0.8 is 20 m from anything; 0.3 is 1.5 m from (10, 0).
            q(
                "s1",
                "car",
                vec![b(0.0, 0.0), b(10.0, 0.0)],
                vec![det(0.5, 0.0, 0.9), det(30.0, 0.0, 0.8), det(10.0, 1.5, 0.3)],
            ),
            // 0.7 takes the only truth; 0.6, nearer still (0.2 m), finds it taken.
            q(
                "s1",
                "pedestrian",
                vec![b(5.0, 5.0)],
                vec![det(5.0, 5.1, 0.7), det(5.2, 5.0, 0.6)],
            ),
            // Ground truth nobody predicted.
            q("s2", "car", vec![b(0.0, 0.0)], vec![]),
            // A prediction for an absent category.
            q("s2", "bus", vec![], vec![det(50.0, 50.0, 0.1)]),
        ]
    }

    fn assert_curve(got: &[(f64, f64)], want: &[(f64, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g.0 - w.0).abs() < 1e-12 && (g.1 - w.1).abs() < 1e-12,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn pr_curve_matches_a_hand_computed_case() {
        // 4 ground-truth boxes. Pooled by score at 2 m: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.3 TP, 0.1 FP.
        let qs = hand_queries();
        assert_curve(
            &pr_curve(&qs, 2.0),
            &[
                (0.25, 1.0),
                (0.25, 0.5),
                (0.5, 2.0 / 3.0),
                (0.5, 0.5),
                (0.75, 0.6),
                (0.75, 0.5),
            ],
        );
        // At 1.5 m the 1.5 m match is lost (strictly closer, as metrics.rs): 0.3 turns FP.
        assert_curve(
            &pr_curve(&qs, 1.5),
            &[
                (0.25, 1.0),
                (0.25, 0.5),
                (0.5, 2.0 / 3.0),
                (0.5, 0.5),
                (0.5, 0.4),
                (0.5, 2.0 / 6.0),
            ],
        );
        // Nothing within 0.05 m: recall stays 0.
        assert!(pr_curve(&qs, 0.05).iter().all(|p| *p == (0.0, 0.0)));
        assert!(pr_curve(&[], 2.0).is_empty());
        assert!(
            pr_curve(&qs[3..], 2.0).is_empty(),
            "no ground truth: no curve"
        );
        assert!(
            pr_curve(&qs[2..3], 2.0).is_empty(),
            "no prediction: no curve"
        );
    }

    #[test]
    fn the_matching_is_the_one_metrics_uses_for_ap() {
        // One category: the devkit AP of the pooled hits equals evaluate()'s AP at every threshold.
        let qs: Vec<Query> = hand_queries()
            .into_iter()
            .filter(|q| q.category == "car")
            .collect();
        let m = super::super::metrics::evaluate(&qs).unwrap();
        for (k, d) in super::super::metrics::DISTANCES_M.iter().enumerate() {
            let (hits, n) = scored_hits(&qs, *d);
            let ap = super::super::metrics::nuscenes_ap(hits, n);
            assert!(
                (ap - m.categories["car"].ap[k]).abs() < 1e-12,
                "{d} m: {ap} vs {:?}",
                m.categories["car"].ap
            );
        }
    }

    fn metrics(cats: &[(&str, f64, f64)]) -> Metrics {
        let mut m = Metrics::default();
        for &(c, iou, ap2) in cats {
            m.categories.insert(
                c.into(),
                CategoryMetrics {
                    iou,
                    ap: [0.0, ap2 / 2.0, ap2, ap2],
                    ..Default::default()
                },
            );
        }
        m
    }

    #[test]
    fn category_bars_render() {
        let d = tmp("bars");
        let model = metrics(&[
            ("car", 0.62, 0.81),
            ("pedestrian", 0.31, 0.44),
            ("traffic_cone", 0.05, 0.12),
        ]);
        let base = metrics(&[("car", 0.2, 0.3), ("pedestrian", 0.1, 0.05)]);
        let p = d.join("bars.png");
        category_bars(&p, &[("model", &model), ("mean box", &base)]).unwrap();
        let c = colours(&p, (900, BARS_HEIGHT));
        assert!(
            c.contains(&[31, 119, 180]) && c.contains(&[255, 127, 14]),
            "both predictors' bars drawn"
        );
        assert!(c.len() > 10, "antialiased text drawn: {} colours", c.len());
        // Empty inputs: a plot with a note, no panic.
        let p = d.join("empty.png");
        category_bars(&p, &[]).unwrap();
        colours(&p, (900, BARS_HEIGHT));
        let p = d.join("no-categories.png");
        category_bars(&p, &[("model", &Metrics::default())]).unwrap();
        colours(&p, (900, BARS_HEIGHT));
        // Many categories with long names widen the canvas.
        let many: Vec<(String, f64, f64)> = (0..12)
            .map(|i| (format!("construction_vehicle_{i}"), 0.5, 0.5))
            .collect();
        let many: Vec<(&str, f64, f64)> =
            many.iter().map(|(c, a, b)| (c.as_str(), *a, *b)).collect();
        let p = d.join("wide.png");
        category_bars(&p, &[("model", &metrics(&many))]).unwrap();
        let w = 160 + (23 * 9 + 24) * 12;
        colours(&p, (w as u32, BARS_HEIGHT));
        done(&d);
    }

    #[test]
    fn pr_curves_render() {
        let d = tmp("pr");
        let model = hand_queries();
        let base = vec![q("s1", "car", vec![b(0.0, 0.0)], vec![det(3.0, 0.0, 0.5)])];
        let p = d.join("sub/pr.png");
        pr_curves(&p, &[("model", &model), ("mean box", &base)], 2.0).unwrap();
        let c = colours(&p, PR_SIZE);
        assert!(
            c.contains(&[31, 119, 180]) && c.contains(&[255, 127, 14]),
            "both curves drawn"
        );
        let p = d.join("empty.png");
        pr_curves(&p, &[], 2.0).unwrap();
        colours(&p, PR_SIZE);
        pr_curves(&p, &[("model", &[])], 2.0).unwrap();
        colours(&p, PR_SIZE);
        assert!(pr_curves(&p, &[("model", &model)], 0.0).is_err());
        assert!(pr_curves(&p, &[("model", &model)], f64::NAN).is_err());
        done(&d);
    }

    #[test]
    fn training_curves_render_and_reject_bad_lines() {
        let d = tmp("train");
        let log = d.join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=40 {
            let s = step as f64;
            // Fields as StepMetrics writes them (extra ones ignored); step 10 logged twice (a resumed run).
            text.push_str(&format!(
                "{{\"step\":{step},\"epoch\":0,\"stage\":1,\"lr\":{},\"loss\":{},\"mse\":{},\"iou_loss\":{},\"confidence\":{},\"grad_norm\":1.0,\"examples_per_s\":2.0}}\n",
                1e-4 * (s / 40.0).min(1.0),
                5.0 / s,
                2.0 / s.powi(2),
                0.9 - s / 100.0,
                0.7 / s.sqrt()
            ));
            if step == 10 {
                text.push('\n');
            }
        }
        std::fs::write(&log, &text).unwrap();
        let p = d.join("training.png");
        training_curves(&p, &log).unwrap();
        let c = colours(&p, TRAINING_SIZE);
        for k in [0, 1, 2, 3, 4] {
            assert!(
                c.contains(&<[u8; 3]>::from(colour(k).rgb())),
                "series {k} drawn"
            );
        }
        assert_eq!(read_log(&log).unwrap().len(), 40);
        // The scale: log with up to 1 in 20 values at 0 (drawn on the floor), linear with more or none positive.
        let mut v = vec![0.5; 40];
        assert!(log_scale(&v));
        v[3] = 0.0;
        v[7] = 0.0;
        assert!(log_scale(&v));
        v[9] = 0.0;
        assert!(!log_scale(&v));
        assert!(!log_scale(&[0.0, 0.0]) && !log_scale(&[]));
        let mut zero_step = text.replacen("\"mse\":0.5,", "\"mse\":0.0,", 1);
        zero_step = zero_step.replacen("\"iou_loss\":0.89,", "\"iou_loss\":0.0,", 1);
        std::fs::write(&log, &zero_step).unwrap();
        let p = d.join("floor.png");
        training_curves(&p, &log).unwrap();
        colours(&p, TRAINING_SIZE);
        // A zero loss term: linear scale.
        std::fs::write(
            &log,
            "{\"step\":1,\"lr\":0.0,\"loss\":1.0,\"mse\":0.0,\"iou_loss\":1.0,\"confidence\":0.5}\n",
        )
        .unwrap();
        let p = d.join("linear.png");
        training_curves(&p, &log).unwrap();
        colours(&p, TRAINING_SIZE);
        // Empty log: a plot with a note.
        std::fs::write(&log, "").unwrap();
        let p = d.join("empty.png");
        training_curves(&p, &log).unwrap();
        colours(&p, TRAINING_SIZE);
        // Malformed third line: a format error naming the file and the line.
        std::fs::write(
            &log,
            "{\"step\":1,\"lr\":0.1,\"loss\":1.0,\"mse\":0.5,\"iou_loss\":1.0,\"confidence\":0.5}\n\n{\"step\":2,\"lr\":0.1,\"loss\":\"x\"}\n",
        )
        .unwrap();
        match training_curves(&p, &log) {
            Err(Error::Format { path, record, .. }) => {
                assert_eq!(path, log);
                assert_eq!(record.as_deref(), Some("line 3"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            training_curves(&p, &d.join("missing.jsonl")),
            Err(Error::Io { .. })
        ));
        done(&d);
    }

    #[test]
    fn ticks_are_round() {
        let t = linear_ticks(&(0.0..1.0), 5);
        assert_eq!(t.len(), 6, "{t:?}");
        for (k, v) in t.iter().enumerate() {
            assert!((v - 0.2 * k as f64).abs() < 1e-12, "{t:?}");
        }
        assert_eq!(linear_ticks(&(0.03..0.97), 4).len(), 4);
        assert!(linear_ticks(&(1.0..1.0), 5).is_empty());
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(1e-4), "1e-4");
        assert_eq!(fmt_num(2.5e-5), "2.5e-5");
        assert_eq!(fmt_num(6.000000000000001e-5), "6e-5");
        assert_eq!(fmt_num(123456.0), "1.23e5");
        assert_eq!(fmt_num(0.0), "0");
    }

    #[test]
    fn open_set_bars_show_both_sides_of_each_predictor() {
        let d = tmp("open-set");
        let split = crate::eval::openset::split(&hand_queries(), &["pedestrian".into()]).unwrap();
        let p = d.join("open_set.png");
        open_set_bars(&p, &[("model", &split), ("mean-box baseline", &split)]).unwrap();
        let set = colours(&p, OPEN_SET_SIZE);
        for k in 0..4 {
            let c = colour(k);
            assert!(set.contains(&[c.0, c.1, c.2]), "series {k} not drawn");
        }
        let empty = d.join("empty.png");
        open_set_bars(&empty, &[]).unwrap();
        colours(&empty, OPEN_SET_SIZE);
        done(&d);
    }

    #[test]
    fn moving_average_is_centred_and_short_at_the_ends() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(super::moving_average(&v, 1), v.to_vec());
        assert_eq!(super::moving_average(&v, 3), vec![1.5, 2.0, 3.0, 4.0, 4.5]);
        assert_eq!(super::smoothing_window(100), 1);
        assert_eq!(super::smoothing_window(1280), 25);
    }
}
