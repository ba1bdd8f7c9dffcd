//! BEV rotated-rectangle intersection and exact 3D IoU of yaw-rotated boxes, with its exact gradient.
//!
//! The intersection of two yaw-rotated boxes is (BEV convex-polygon intersection area) × (vertical overlap).
//! The same code runs on `f64` and on forward-mode dual numbers carrying 14 partial derivatives (7 per box),
//! so the gradient is the exact derivative of the computed IoU, not a separate hand derivation that could drift.
use std::ops::{Add, Div, Mul, Neg, Sub};

use super::Box3D;

/// Scalars the IoU code runs on: `f64`, and [`Dual`] for the gradient.
trait Real:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    fn cst(v: f64) -> Self;
    fn val(self) -> f64;
    fn sin_cos(self) -> (Self, Self);
    fn max(self, o: Self) -> Self {
        if self.val() >= o.val() {
            self
        } else {
            o
        }
    }
    fn min(self, o: Self) -> Self {
        if self.val() <= o.val() {
            self
        } else {
            o
        }
    }
}

impl Real for f64 {
    fn cst(v: f64) -> Self {
        v
    }
    fn val(self) -> f64 {
        self
    }
    fn sin_cos(self) -> (Self, Self) {
        f64::sin_cos(self)
    }
}

const N: usize = 14;

/// A forward-mode dual number: value plus the partial derivatives with respect to both boxes' 7 parameters.
#[derive(Clone, Copy, Debug)]
struct Dual {
    v: f64,
    d: [f64; N],
}

impl Dual {
    fn var(v: f64, i: usize) -> Self {
        let mut d = [0.0; N];
        d[i] = 1.0;
        Dual { v, d }
    }
    fn zip(self, o: Self, f: impl Fn(f64, f64) -> f64) -> [f64; N] {
        std::array::from_fn(|i| f(self.d[i], o.d[i]))
    }
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual {
            v: self.v + o.v,
            d: self.zip(o, |a, b| a + b),
        }
    }
}
impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        Dual {
            v: self.v - o.v,
            d: self.zip(o, |a, b| a - b),
        }
    }
}
#[allow(clippy::suspicious_arithmetic_impl)] // product rule
impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual {
            v: self.v * o.v,
            d: self.zip(o, |a, b| a * o.v + self.v * b),
        }
    }
}
#[allow(clippy::suspicious_arithmetic_impl)] // quotient rule
impl Div for Dual {
    type Output = Dual;
    fn div(self, o: Dual) -> Dual {
        let inv = 1.0 / o.v;
        Dual {
            v: self.v * inv,
            d: self.zip(o, |a, b| (a - self.v * inv * b) * inv),
        }
    }
}
impl Neg for Dual {
    type Output = Dual;
    fn neg(self) -> Dual {
        Dual {
            v: -self.v,
            d: self.d.map(|a| -a),
        }
    }
}
impl Real for Dual {
    fn cst(v: f64) -> Self {
        Dual { v, d: [0.0; N] }
    }
    fn val(self) -> f64 {
        self.v
    }
    fn sin_cos(self) -> (Self, Self) {
        let (s, c) = self.v.sin_cos();
        (
            Dual {
                v: s,
                d: self.d.map(|a| a * c),
            },
            Dual {
                v: c,
                d: self.d.map(|a| -a * s),
            },
        )
    }
}

type P<T> = [T; 2];

/// BEV corners of a box given as [x, y, z, l, w, h, yaw], counter-clockwise.
fn rect<T: Real>(b: &[T; 7]) -> Vec<P<T>> {
    let (s, c) = b[6].sin_cos();
    let half = T::cst(0.5);
    let (hl, hw) = (b[3] * half, b[4] * half);
    [(hl, hw), (-hl, hw), (-hl, -hw), (hl, -hw)]
        .iter()
        .map(|&(u, v)| [b[0] + c * u - s * v, b[1] + s * u + c * v])
        .collect()
}

fn cross<T: Real>(o: P<T>, a: P<T>, b: P<T>) -> T {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Clips the convex polygon `subject` by the convex counter-clockwise polygon `clip` (Sutherland–Hodgman).
fn clip_convex<T: Real>(subject: Vec<P<T>>, clip: &[P<T>]) -> Vec<P<T>> {
    let mut out = subject;
    for i in 0..clip.len() {
        if out.is_empty() {
            break;
        }
        let (a, b) = (clip[i], clip[(i + 1) % clip.len()]);
        let input = std::mem::take(&mut out);
        for j in 0..input.len() {
            let (p, q) = (input[j], input[(j + 1) % input.len()]);
            let (sp, sq) = (cross(a, b, p), cross(a, b, q));
            let (p_in, q_in) = (sp.val() >= 0.0, sq.val() >= 0.0);
            if p_in {
                out.push(p);
            }
            if p_in != q_in {
                // Edge p→q crosses the clip line: the crossing point at parameter t = sp / (sp - sq).
                let t = sp / (sp - sq);
                out.push([p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t]);
            }
        }
    }
    out
}

fn polygon_area<T: Real>(poly: &[P<T>]) -> T {
    let mut acc = T::cst(0.0);
    for i in 0..poly.len() {
        let (p, q) = (poly[i], poly[(i + 1) % poly.len()]);
        acc = acc + (p[0] * q[1] - q[0] * p[1]);
    }
    acc * T::cst(0.5)
}

fn bev_inter<T: Real>(a: &[T; 7], b: &[T; 7]) -> T {
    if a[3].val() <= 0.0 || a[4].val() <= 0.0 || b[3].val() <= 0.0 || b[4].val() <= 0.0 {
        return T::cst(0.0);
    }
    let poly = clip_convex(rect(a), &rect(b));
    if poly.len() < 3 {
        return T::cst(0.0);
    }
    polygon_area(&poly).max(T::cst(0.0))
}

fn iou_generic<T: Real>(a: &[T; 7], b: &[T; 7]) -> T {
    let zero = T::cst(0.0);
    let half = T::cst(0.5);
    let top = (a[2] + a[5] * half).min(b[2] + b[5] * half);
    let bottom = (a[2] - a[5] * half).max(b[2] - b[5] * half);
    let dz = (top - bottom).max(zero);
    let inter = bev_inter(a, b) * dz;
    let union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter;
    let (i, u) = (inter.val(), union.val());
    let valid = i.is_finite() && u.is_finite() && i > 0.0 && u > 0.0;
    if !valid {
        return zero;
    }
    // Floating-point clipping can overshoot by an ulp on identical boxes; IoU stays in [0, 1].
    let iou = inter / union;
    if iou.val() > 1.0 {
        T::cst(1.0)
    } else {
        iou
    }
}

/// Area of the intersection of two boxes' bird's-eye-view rectangles (m²).
pub fn bev_intersection_area(a: &Box3D, b: &Box3D) -> f64 {
    bev_inter(&a.params(), &b.params())
}

/// Bird's-eye-view IoU of two boxes' rotated rectangles; 0 for degenerate boxes.
pub fn bev_iou(a: &Box3D, b: &Box3D) -> f64 {
    let inter = bev_intersection_area(a, b);
    let [la, wa, _] = a.size();
    let [lb, wb, _] = b.size();
    let union = la * wa + lb * wb - inter;
    if inter > 0.0 && union > 0.0 {
        (inter / union).min(1.0)
    } else {
        0.0
    }
}

/// Exact 3D IoU of two yaw-rotated boxes: BEV polygon intersection × vertical overlap over the union volume.
/// Degenerate boxes (a zero dimension) and disjoint or touching boxes give 0, never NaN.
pub fn iou_3d(a: &Box3D, b: &Box3D) -> f64 {
    iou_generic(&a.params(), &b.params())
}

/// The 3D IoU and its gradient with respect to both boxes' [x, y, z, l, w, h, yaw].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iou3dGrad {
    /// The IoU itself (equal to [`iou_3d`]).
    pub iou: f64,
    /// ∂IoU/∂a for a = [x, y, z, l, w, h, yaw] of the first box.
    pub d_a: [f64; 7],
    /// ∂IoU/∂b for the second box.
    pub d_b: [f64; 7],
}

/// 3D IoU with its exact gradient (forward-mode differentiation of the same computation as [`iou_3d`]).
///
/// Where the IoU is not differentiable (boxes exactly touching, a polygon vertex switching) this returns the
/// one-sided derivative of the branch taken; where the IoU is 0 the gradient is 0.
pub fn iou_3d_with_grad(a: &Box3D, b: &Box3D) -> Iou3dGrad {
    let (pa, pb) = (a.params(), b.params());
    let da: [Dual; 7] = std::array::from_fn(|i| Dual::var(pa[i], i));
    let db: [Dual; 7] = std::array::from_fn(|i| Dual::var(pb[i], 7 + i));
    let r = iou_generic(&da, &db);
    Iou3dGrad {
        iou: r.v,
        d_a: std::array::from_fn(|i| r.d[i]),
        d_b: std::array::from_fn(|i| r.d[7 + i]),
    }
}
