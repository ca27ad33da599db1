//! Real spherical harmonics in the 3DGS convention (degree ≤ 3), and their
//! rotation.

/// The 16 SH basis functions of degree ≤ 3 at unit direction `d`, with the
/// constants and signs of 3DGS's `eval_sh`, in coefficient order
/// (DC first). A colour is `0.5 + Σ coeff_k · basis_k`.
pub fn sh_basis(d: [f32; 3]) -> [f32; 16] {
    const C1: f32 = 0.488_602_52;
    const C2: [f32; 5] = [1.092_548_5, -1.092_548_5, 0.315_391_57, -1.092_548_5, 0.546_274_24];
    const C3: [f32; 7] = [
        -0.590_043_6,
        2.890_611_4,
        -0.457_045_8,
        0.373_176_33,
        -0.457_045_8,
        1.445_305_7,
        -0.590_043_6,
    ];
    let [x, y, z] = d;
    let (xx, yy, zz) = (x * x, y * y, z * z);
    [
        crate::SH_C0,
        -C1 * y,
        C1 * z,
        -C1 * x,
        C2[0] * x * y,
        C2[1] * y * z,
        C2[2] * (2.0 * zz - xx - yy),
        C2[3] * x * z,
        C2[4] * (xx - yy),
        C3[0] * y * (3.0 * xx - yy),
        C3[1] * x * y * z,
        C3[2] * y * (4.0 * zz - xx - yy),
        C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
        C3[4] * x * (4.0 * zz - xx - yy),
        C3[5] * z * (xx - yy),
        C3[6] * x * (xx - 3.0 * yy),
    ]
}

/// Linear maps that rotate SH coefficients, one square matrix per band
/// 1..=degree (band 0 is invariant).
#[derive(Debug, Clone)]
pub struct ShRotation {
    /// `bands[l-1]` is a (2l+1)×(2l+1) row-major matrix.
    bands: Vec<Vec<f64>>,
}

impl ShRotation {
    /// The coefficient maps for rotating a function on the sphere by the
    /// 3×3 rotation `r` (row-major): the new function is `f'(d) = f(rᵀ d)`.
    ///
    /// Each band is spanned by its own basis functions, so sampling the
    /// basis at 2l+1 generic directions and solving the linear system gives
    /// the exact band matrix.
    pub fn new(r: [[f32; 3]; 3], degree: u8) -> ShRotation {
        let dirs: Vec<[f32; 3]> = (0..7)
            .map(|i| {
                let t = i as f32 * 0.9 + 0.3;
                let (a, b) = (t * 2.1, (t * 0.77).sin() * 1.3);
                [b.cos() * a.cos(), b.sin(), b.cos() * a.sin()]
            })
            .collect();
        let rotate_back = |d: [f32; 3]| -> [f32; 3] {
            std::array::from_fn(|j| (0..3).map(|i| r[i][j] * d[i]).sum())
        };
        let bands = (1..=degree as usize)
            .map(|l| {
                let m = 2 * l + 1;
                let first = l * l;
                let basis = |d| -> Vec<f64> { sh_basis(d)[first..first + m].iter().map(|&v| v as f64).collect() };
                let b: Vec<Vec<f64>> = dirs[..m].iter().map(|&d| basis(d)).collect();
                let br: Vec<Vec<f64>> = dirs[..m].iter().map(|&d| basis(rotate_back(d))).collect();
                solve(b, br)
            })
            .collect();
        ShRotation { bands }
    }

    /// Rotates one Gaussian's higher-order coefficients in place, laid out
    /// `[coefficient][channel]` without the DC term.
    pub fn apply(&self, rest: &mut [f32]) {
        for (band, mat) in self.bands.iter().enumerate() {
            let l = band + 1;
            let m = 2 * l + 1;
            let first = l * l - 1;
            for c in 0..3 {
                let old: Vec<f64> = (0..m).map(|k| rest[(first + k) * 3 + c] as f64).collect();
                for (row, k) in (0..m).enumerate() {
                    let v: f64 = (0..m).map(|j| mat[row * m + j] * old[j]).sum();
                    rest[(first + k) * 3 + c] = v as f32;
                }
            }
        }
    }
}

/// Solves `a · x = b` for square `a` (rows given) and matrix `b`, returning
/// `x` row-major, by Gauss–Jordan elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = a[col][col];
        for row in 0..n {
            if row != col {
                let f = a[row][col] / p;
                for k in 0..n {
                    a[row][k] -= f * a[col][k];
                    b[row][k] -= f * b[col][k];
                }
            }
        }
    }
    (0..n).flat_map(|i| (0..n).map(move |k| (i, k))).map(|(i, k)| b[i][k] / a[i][i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(coeffs: &[f32], d: [f32; 3]) -> f32 {
        sh_basis(d).iter().zip(coeffs).map(|(b, c)| b * c).sum()
    }

    #[test]
    fn rotated_coefficients_evaluate_to_the_rotated_function() {
        // 37° about a tilted axis, built from a unit quaternion.
        let (w, x, y, z) = (0.948_323_6_f32, 0.1, -0.25, 0.17);
        let n = (w * w + x * x + y * y + z * z).sqrt();
        let (w, x, y, z) = (w / n, x / n, y / n, z / n);
        let r = [
            [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
            [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
            [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
        ];
        let coeffs: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let mut rest: Vec<f32> = coeffs[1..].iter().flat_map(|&c| [c, 2.0 * c, -c]).collect();
        ShRotation::new(r, 3).apply(&mut rest);
        let rotated: Vec<f32> = std::iter::once(coeffs[0]).chain((0..15).map(|k| rest[k * 3])).collect();
        for i in 0..20 {
            let t = i as f32 * 0.37;
            let d = [t.cos() * (t * 1.3).sin(), (t * 1.3).cos(), t.sin() * (t * 1.3).sin()];
            let rd: [f32; 3] = std::array::from_fn(|a| (0..3).map(|b| r[a][b] * d[b]).sum());
            assert!((eval(&rotated, rd) - eval(&coeffs, d)).abs() < 1e-4, "direction {i}");
        }
    }
}
