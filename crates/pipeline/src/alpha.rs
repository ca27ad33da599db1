//! Foreground alpha by white-background separation.
//!
//! MVDream draws objects on a plain white background, so the background is
//! whatever is (nearly) white and connected to the image border. For an
//! image `rgb` in [0, 1], [`foreground_alpha`]:
//!
//! 1. **Distance from white**: `d = max(1 − r, 1 − g, 1 − b)`, the largest
//!    channel deficit (a saturated colour is far from white even when it is
//!    bright, unlike a luminance test).
//! 2. **Soft threshold**: `soft = smoothstep(low, high, d)`: 0 at or below
//!    `low` (JPEG-like noise and faint shading of the background), 1 at or
//!    above `high`, a smooth ramp between (anti-aliased edges keep
//!    fractional alpha).
//! 3. **Binary mask** `soft ≥ 0.5`, cleaned up morphologically:
//!    - *opening* (erosion then dilation) with a `(2·open_radius + 1)²`
//!      square removes specks and one-pixel threads;
//!    - connected foreground components (4-neighbourhood) smaller than
//!      `min_component` of the image are removed;
//!    - with `fill_holes`, background regions that do not touch the border
//!      become foreground: white parts *inside* an object (highlights, a
//!      white label) stay opaque. (A real see-through hole, e.g. a mug's
//!      handle, is filled too; the fit then learns it from the other views.)
//! 4. **Final alpha**: inside the cleaned mask, `soft` (filled holes: 1);
//!    outside it, `soft` within one pixel of the mask (the anti-aliased
//!    rim) and 0 elsewhere.
//!
//! [`straight_rgba`] then un-composites the colour from the white
//! background, `f = (c − (1 − α)) / α`, so that the view composited over
//! white gives back exactly the generated image (and over black, the
//! object alone), as the fit's random backgrounds need.

use crate::config::AlphaConfig;

/// `d = max_c (1 − c)`, clamped to [0, 1], per pixel of `[y][x][rgb]`.
pub fn distance_from_white(rgb: &[f32]) -> Vec<f32> {
    rgb.chunks_exact(3)
        .map(|c| (1.0 - c[0].min(c[1]).min(c[2])).clamp(0.0, 1.0))
        .collect()
}

/// Hermite smoothstep from `lo` to `hi`.
pub fn smoothstep(lo: f32, hi: f32, x: f32) -> f32 {
    let t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Square (Chebyshev) dilation of a `w × h` mask by `r` pixels.
pub fn dilate(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    morph(mask, w, h, r, true)
}

/// Square erosion; pixels outside the image count as background.
pub fn erode(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    morph(mask, w, h, r, false)
}

/// Separable sliding max (dilate) or min (erode) over a `(2r+1)` window.
fn morph(mask: &[bool], w: usize, h: usize, r: usize, dilate: bool) -> Vec<bool> {
    if r == 0 {
        return mask.to_vec();
    }
    // Count of set pixels in the window along rows, then columns.
    let pass =
        |src: &[bool], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| -> Vec<bool> {
            let mut out = vec![false; src.len()];
            for line in 0..lines {
                let mut count = 0usize;
                // Window [i − r, i + r] ∩ [0, len).
                for k in 0..r.min(len) {
                    count += src[at(line, k)] as usize;
                }
                for i in 0..len {
                    if i + r < len {
                        count += src[at(line, i + r)] as usize;
                    }
                    if i > r {
                        count -= src[at(line, i - r - 1)] as usize;
                    }
                    let window = (i + r).min(len - 1) + 1 - i.saturating_sub(r);
                    out[at(line, i)] = if dilate {
                        count > 0
                    } else {
                        // Outside the image is background: a window that leaves
                        // the image erodes.
                        count == window && i >= r && i + r < len
                    };
                }
            }
            out
        };
    let rows = pass(mask, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// Labels 4-connected components of `mask`; returns per pixel the component
/// id (`u32::MAX` for unset pixels) and each component's size.
pub fn components(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut label = vec![u32::MAX; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != u32::MAX {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0;
        label[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = (p % w, p / w);
            let mut visit = |q: usize| {
                if mask[q] && label[q] == u32::MAX {
                    label[q] = id;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < w {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - w);
            }
            if y + 1 < h {
                visit(p + w);
            }
        }
        sizes.push(size);
    }
    (label, sizes)
}

/// Background pixels (`!mask`) not 4-connected to the image border.
pub fn enclosed_background(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let background: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let (label, sizes) = components(&background, w, h);
    let mut touches = vec![false; sizes.len()];
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                let l = label[y * w + x];
                if l != u32::MAX {
                    touches[l as usize] = true;
                }
            }
        }
    }
    label
        .iter()
        .map(|&l| l != u32::MAX && !touches[l as usize])
        .collect()
}

/// Foreground alpha of an image on a white background (see the module
/// docs). `rgb` is `[y][x][rgb]` in [0, 1]; the result is `[y][x]`.
pub fn foreground_alpha(rgb: &[f32], w: usize, h: usize, p: &AlphaConfig) -> Vec<f32> {
    assert_eq!(rgb.len(), 3 * w * h, "image size");
    let soft: Vec<f32> = distance_from_white(rgb)
        .into_iter()
        .map(|d| smoothstep(p.low, p.high, d))
        .collect();
    let raw: Vec<bool> = soft.iter().map(|&a| a >= 0.5).collect();
    let opened = dilate(&erode(&raw, w, h, p.open_radius), w, h, p.open_radius);
    // Opening never adds pixels the raw mask did not have.
    let mut mask: Vec<bool> = opened.iter().zip(&raw).map(|(&o, &r)| o && r).collect();
    let min_area = (p.min_component as f64 * (w * h) as f64).ceil() as usize;
    if min_area > 1 {
        let (label, sizes) = components(&mask, w, h);
        for (m, &l) in mask.iter_mut().zip(&label) {
            if l != u32::MAX && sizes[l as usize] < min_area {
                *m = false;
            }
        }
    }
    let filled = if p.fill_holes {
        enclosed_background(&mask, w, h)
    } else {
        vec![false; mask.len()]
    };
    let fg: Vec<bool> = mask.iter().zip(&filled).map(|(&m, &f)| m || f).collect();
    let rim = dilate(&fg, w, h, 1);
    (0..w * h)
        .map(|i| {
            if filled[i] {
                1.0
            } else if fg[i] || rim[i] {
                soft[i]
            } else {
                0.0
            }
        })
        .collect()
}

/// Straight (un-premultiplied) RGBA `[y][x][rgba]` from an image composited
/// over white and its alpha: `f = (c − (1 − α)) / α`, clamped to [0, 1]
/// (`c` itself where α < 1e-3).
pub fn straight_rgba(rgb: &[f32], alpha: &[f32]) -> Vec<f32> {
    assert_eq!(rgb.len(), 3 * alpha.len(), "image size");
    let mut out = Vec::with_capacity(alpha.len() * 4);
    for (c, &a) in rgb.chunks_exact(3).zip(alpha) {
        for &v in c {
            out.push(if a < 1e-3 {
                v
            } else {
                ((v - (1.0 - a)) / a).clamp(0.0, 1.0)
            });
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 48;
    const H: usize = 40;

    fn white() -> Vec<f32> {
        vec![1.0; W * H * 3]
    }

    fn paint(img: &mut [f32], x: usize, y: usize, c: [f32; 3]) {
        img[(y * W + x) * 3..(y * W + x) * 3 + 3].copy_from_slice(&c);
    }

    /// A red disc of radius `r` centred in the image.
    fn disc(img: &mut [f32], r: f32, c: [f32; 3]) {
        for y in 0..H {
            for x in 0..W {
                let (dx, dy) = (
                    x as f32 + 0.5 - W as f32 / 2.0,
                    y as f32 + 0.5 - H as f32 / 2.0,
                );
                if dx * dx + dy * dy <= r * r {
                    paint(img, x, y, c);
                }
            }
        }
    }

    fn params() -> AlphaConfig {
        AlphaConfig::default()
    }

    #[test]
    fn white_is_background_and_a_disc_is_foreground() {
        let a = foreground_alpha(&white(), W, H, &params());
        assert!(a.iter().all(|&v| v == 0.0));
        let mut img = white();
        disc(&mut img, 10.0, [0.9, 0.1, 0.1]);
        let a = foreground_alpha(&img, W, H, &params());
        let centre = (H / 2) * W + W / 2;
        assert_eq!(a[centre], 1.0);
        assert_eq!(a[0], 0.0);
        let inside = a.iter().filter(|&&v| v > 0.5).count() as f32;
        let area = std::f32::consts::PI * 100.0;
        assert!((inside - area).abs() < 0.1 * area, "{inside} vs {area}");
        // A bright but saturated colour is still foreground (max channel deficit).
        let mut yellow = white();
        disc(&mut yellow, 10.0, [1.0, 1.0, 0.2]);
        assert_eq!(foreground_alpha(&yellow, W, H, &params())[centre], 1.0);
    }

    #[test]
    fn soft_threshold_is_a_monotone_ramp_between_low_and_high() {
        let p = params();
        assert_eq!(smoothstep(p.low, p.high, 0.0), 0.0);
        assert_eq!(smoothstep(p.low, p.high, p.low), 0.0);
        assert_eq!(smoothstep(p.low, p.high, p.high), 1.0);
        let mid = smoothstep(p.low, p.high, 0.5 * (p.low + p.high));
        assert!((mid - 0.5).abs() < 1e-6);
        let mut last = 0.0;
        for i in 0..=100 {
            let v = smoothstep(p.low, p.high, i as f32 / 100.0);
            assert!(v >= last);
            last = v;
        }
        assert_eq!(
            distance_from_white(&[1.0, 0.5, 0.9, 1.0, 1.0, 1.0]),
            vec![0.5, 0.0]
        );
        // Faint background shading stays transparent.
        let mut img = white();
        for v in img.iter_mut() {
            *v = 0.98;
        }
        assert!(foreground_alpha(&img, W, H, &p).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn edges_keep_fractional_alpha() {
        let mut img = white();
        disc(&mut img, 10.0, [0.0, 0.0, 0.0]);
        // An anti-aliased rim: a half-grey ring just outside the disc.
        for y in 0..H {
            for x in 0..W {
                let (dx, dy) = (
                    x as f32 + 0.5 - W as f32 / 2.0,
                    y as f32 + 0.5 - H as f32 / 2.0,
                );
                let d = (dx * dx + dy * dy).sqrt();
                if d > 10.0 && d <= 11.0 {
                    paint(&mut img, x, y, [0.92, 0.92, 0.92]);
                }
            }
        }
        let a = foreground_alpha(&img, W, H, &params());
        let fractional = a.iter().filter(|&&v| v > 0.0 && v < 1.0).count();
        assert!(fractional > 20, "{fractional}");
        let straight = straight_rgba(&img, &a);
        // Over white, the straight colour gives the image back.
        for (i, c) in img.chunks_exact(3).enumerate() {
            let al = straight[i * 4 + 3];
            for k in 0..3 {
                let back = straight[i * 4 + k] * al + (1.0 - al);
                assert!((back - c[k]).abs() < 1e-5, "pixel {i}: {back} vs {}", c[k]);
            }
        }
    }

    #[test]
    fn specks_and_small_blobs_are_removed() {
        let mut img = white();
        disc(&mut img, 8.0, [0.2, 0.3, 0.9]);
        // Isolated dark pixels (noise) and a 3×3 blob far from the disc.
        for &(x, y) in &[(2usize, 3usize), (45, 2), (5, 37), (40, 30)] {
            paint(&mut img, x, y, [0.0, 0.0, 0.0]);
        }
        for y in 1..4 {
            for x in 20..23 {
                paint(&mut img, x, y, [0.0, 0.0, 0.0]);
            }
        }
        let p = AlphaConfig {
            open_radius: 1,
            min_component: 0.01,
            ..params()
        };
        let a = foreground_alpha(&img, W, H, &p);
        for &(x, y) in &[(2usize, 3usize), (45, 2), (5, 37), (40, 30), (21, 2)] {
            assert_eq!(a[y * W + x], 0.0, "({x}, {y})");
        }
        assert_eq!(a[(H / 2) * W + W / 2], 1.0);
        // Without cleanup the speck stays.
        let none = AlphaConfig {
            open_radius: 0,
            min_component: 0.0,
            ..params()
        };
        assert!(foreground_alpha(&img, W, H, &none)[3 * W + 2] > 0.5);
    }

    #[test]
    fn enclosed_white_is_filled_only_with_fill_holes() {
        let mut img = white();
        disc(&mut img, 14.0, [0.1, 0.6, 0.1]);
        disc(&mut img, 5.0, [1.0, 1.0, 1.0]); // a white centre: highlight or hole
        let centre = (H / 2) * W + W / 2;
        let filled = foreground_alpha(
            &img,
            W,
            H,
            &AlphaConfig {
                fill_holes: true,
                ..params()
            },
        );
        assert_eq!(filled[centre], 1.0);
        let open = foreground_alpha(
            &img,
            W,
            H,
            &AlphaConfig {
                fill_holes: false,
                ..params()
            },
        );
        assert_eq!(open[centre], 0.0);
        assert_eq!(filled[0], 0.0);
    }

    #[test]
    fn morphology_matches_brute_force() {
        let mut state = 12345u64;
        let mask: Vec<bool> = (0..W * H)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 60) < 6
            })
            .collect();
        for r in 0..3usize {
            let d = dilate(&mask, W, H, r);
            let e = erode(&mask, W, H, r);
            for y in 0..H {
                for x in 0..W {
                    let mut any = false;
                    let mut all = true;
                    for yy in y as isize - r as isize..=y as isize + r as isize {
                        for xx in x as isize - r as isize..=x as isize + r as isize {
                            let v = yy >= 0
                                && xx >= 0
                                && (yy as usize) < H
                                && (xx as usize) < W
                                && mask[yy as usize * W + xx as usize];
                            any |= v;
                            all &= v;
                        }
                    }
                    assert_eq!(d[y * W + x], any, "dilate r={r} ({x},{y})");
                    assert_eq!(e[y * W + x], all, "erode r={r} ({x},{y})");
                }
            }
        }
    }
}
