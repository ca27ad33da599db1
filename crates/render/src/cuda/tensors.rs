//! The rasterizer's inputs and outputs as candle CUDA tensors, with their
//! shape checks, and the forward state the backward pass reads.

use super::rasterizer::common_size;
use super::*;

/// Gaussian parameters as CUDA tensors, f32, pre-activation, laid out as
/// [`GaussianParams`]: `means [N,3]`, `quats [N,4]` (wxyz), `log_scales
/// [N,3]`, `opacity_logits [N]`, `sh [N,K,3]` with `K = (sh_degree+1)²`.
/// Non-contiguous tensors are accepted (copied to contiguous first).
#[derive(Debug, Clone)]
pub struct GaussianTensors {
    pub means: Tensor,
    pub quats: Tensor,
    pub log_scales: Tensor,
    pub opacity_logits: Tensor,
    pub sh: Tensor,
    pub sh_degree: u8,
}

impl GaussianTensors {
    /// Uploads host parameters to `device`.
    pub fn from_params(p: &GaussianParams<'_, f32>, device: &Device) -> Result<Self> {
        p.validate()?;
        let n = p.len();
        let k = sh_coeffs_per_channel(p.sh_degree);
        let flat3 = |v: &[[f32; 3]]| v.iter().flatten().copied().collect::<Vec<f32>>();
        Ok(GaussianTensors {
            means: Tensor::from_vec(flat3(p.means), (n, 3), device)?,
            quats: Tensor::from_vec(
                p.quats.iter().flatten().copied().collect::<Vec<f32>>(),
                (n, 4),
                device,
            )?,
            log_scales: Tensor::from_vec(flat3(p.log_scales), (n, 3), device)?,
            opacity_logits: Tensor::from_vec(p.opacity_logits.to_vec(), n, device)?,
            sh: Tensor::from_vec(p.sh.to_vec(), (n, k, 3), device)?,
            sh_degree: p.sh_degree,
        })
    }

    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.means.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn validate(&self, dev: &CudaDevice) -> Result<usize> {
        if self.sh_degree > MAX_SH_DEGREE {
            return Err(RenderError::InvalidParams(format!(
                "SH degree {} is not supported (0 to 3)",
                self.sh_degree
            ))
            .into());
        }
        let n = self.len();
        let k = sh_coeffs_per_channel(self.sh_degree);
        for (name, t, shape) in [
            ("means", &self.means, vec![n, 3]),
            ("quats", &self.quats, vec![n, 4]),
            ("log_scales", &self.log_scales, vec![n, 3]),
            ("opacity_logits", &self.opacity_logits, vec![n]),
            ("sh", &self.sh, vec![n, k, 3]),
        ] {
            check_tensor(name, t, &shape, DType::F32, dev)?;
        }
        Ok(n)
    }
}

pub(super) fn check_tensor(
    name: &str,
    t: &Tensor,
    shape: &[usize],
    dtype: DType,
    dev: &CudaDevice,
) -> Result<()> {
    match t.device() {
        Device::Cuda(d) if d.same_device(dev) => {}
        Device::Cuda(_) => return Err(bad(format!("{name} is on another CUDA device"))),
        other => {
            return Err(bad(format!(
                "{name} must be a CUDA tensor, it is on {:?}",
                other.location()
            )))
        }
    }
    if t.dtype() != dtype {
        return Err(bad(format!(
            "{name} must be {dtype:?}, got {:?}",
            t.dtype()
        )));
    }
    if t.dims() != shape {
        return Err(bad(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.dims()
        )));
    }
    Ok(())
}

/// The images of one forward call, views of one device buffer:
/// `rgb [C,H,W,3]`, `alpha [C,H,W]`, `depth [C,H,W]` (see the crate docs for
/// their meaning).
#[derive(Debug, Clone)]
pub struct RenderedTensors {
    pub rgb: Tensor,
    pub alpha: Tensor,
    pub depth: Tensor,
}

impl RenderedTensors {
    /// Copies to the host, in the CPU path's layout.
    pub fn to_images(&self) -> Result<Vec<RenderedImage<f32>>> {
        let (c, h, w, _) = self.rgb.dims4()?;
        let rgb = self.rgb.flatten_all()?.to_vec1::<f32>()?;
        let alpha = self.alpha.flatten_all()?.to_vec1::<f32>()?;
        let depth = self.depth.flatten_all()?.to_vec1::<f32>()?;
        let p = h * w;
        Ok((0..c)
            .map(|i| RenderedImage {
                width: w as u32,
                height: h as u32,
                rgb: rgb[3 * p * i..3 * p * (i + 1)].to_vec(),
                alpha: alpha[p * i..p * (i + 1)].to_vec(),
                depth: depth[p * i..p * (i + 1)].to_vec(),
            })
            .collect())
    }
}

/// Per-pixel loss gradients for [`CudaRasterizer::backward`], shaped like
/// [`RenderedTensors`]; `None` means zero.
#[derive(Debug, Clone, Default)]
pub struct ImageGradTensors {
    pub rgb: Option<Tensor>,
    pub alpha: Option<Tensor>,
    pub depth: Option<Tensor>,
}

impl ImageGradTensors {
    /// Uploads the CPU path's per-camera gradients (all cameras must agree
    /// on which outputs have a gradient).
    pub fn from_host(
        grads: &[ImageGradients<'_, f32>],
        cameras: &[Camera],
        device: &Device,
    ) -> Result<Self> {
        let (w, h) = common_size(cameras)?;
        let c = cameras.len();
        let stack = |which: usize, ch: usize| -> Result<Option<Tensor>> {
            let get = |g: &ImageGradients<'_, f32>| -> Option<Vec<f32>> {
                [g.rgb, g.alpha, g.depth][which].map(|s| s.to_vec())
            };
            if grads.iter().all(|g| get(g).is_none()) {
                return Ok(None);
            }
            let mut v = Vec::with_capacity(c * h * w * ch);
            for g in grads {
                match get(g) {
                    Some(s) if s.len() == h * w * ch => v.extend_from_slice(&s),
                    Some(s) => {
                        return Err(RenderError::GradientShape(format!(
                            "gradient has {} values, expected {}",
                            s.len(),
                            h * w * ch
                        ))
                        .into())
                    }
                    None => v.extend(std::iter::repeat_n(0.0f32, h * w * ch)),
                }
            }
            let t = if ch == 3 {
                Tensor::from_vec(v, (c, h, w, 3), device)?
            } else {
                Tensor::from_vec(v, (c, h, w), device)?
            };
            Ok(Some(t))
        };
        Ok(ImageGradTensors {
            rgb: stack(0, 3)?,
            alpha: stack(1, 1)?,
            depth: stack(2, 1)?,
        })
    }
}

/// Densification statistics as tensors (see [`DensifyStats`]): `[N]` each.
#[derive(Debug, Clone)]
pub struct DensifyStatTensors {
    pub mean2d_grad_norm: Tensor,
    pub mean2d_absgrad_norm: Tensor,
    /// U32.
    pub visible_count: Tensor,
    pub max_radius_px: Tensor,
}

/// Gradients with the shapes of [`GaussianTensors`], plus the statistics.
#[derive(Debug, Clone)]
pub struct GradientTensors {
    pub means: Tensor,
    pub quats: Tensor,
    pub log_scales: Tensor,
    pub opacity_logits: Tensor,
    pub sh: Tensor,
    pub stats: DensifyStatTensors,
}

impl GradientTensors {
    /// Copies to the host, in the CPU path's layout.
    pub fn to_gradients(&self) -> Result<Gradients<f32>> {
        let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let a3 = |x: Vec<f32>| x.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        Ok(Gradients {
            means: a3(v(&self.means)?),
            quats: v(&self.quats)?
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            log_scales: a3(v(&self.log_scales)?),
            opacity_logits: v(&self.opacity_logits)?,
            sh: v(&self.sh)?,
            stats: DensifyStats {
                mean2d_grad_norm: v(&self.stats.mean2d_grad_norm)?,
                mean2d_absgrad_norm: v(&self.stats.mean2d_absgrad_norm)?,
                visible_count: self.stats.visible_count.to_vec1::<u32>()?,
                max_radius_px: v(&self.stats.max_radius_px)?,
            },
        })
    }
}

/// What [`CudaRasterizer::backward`] needs from the forward call, on the
/// device: the cameras, the projected Gaussians, the sorted tile lists and
/// the per-pixel final transmittance, last contributor and raw depth.
pub struct CudaForwardState {
    /// Cameras (SfCamera, 256-byte aligned) then the projected Gaussians.
    pub(super) proj: CudaSlice<u8>,
    pub(super) splat_offset: usize,
    /// vals[0] (M) | vals[1] (M) | tile_start (C·T + 1).
    pub(super) isect: CudaSlice<u32>,
    pub(super) sorted_offset: usize,
    pub(super) tile_start_offset: usize,
    /// rgb 3P | alpha P | depth P | t_final P | raw_depth P | last P (u32 bits).
    pub(super) frame: Tensor,
    pub(super) intersections: Vec<u64>,
    pub(super) cameras: Vec<Camera>,
    pub(super) num_gaussians: usize,
    pub(super) sh_degree: u8,
    pub(super) options: RenderOptions,
}

impl std::fmt::Debug for CudaForwardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaForwardState")
            .field("cameras", &self.cameras.len())
            .field("num_gaussians", &self.num_gaussians)
            .field("intersections", &self.intersections)
            .finish()
    }
}

impl CudaForwardState {
    /// Number of (tile, Gaussian) pairs of camera `cam` (known on the host:
    /// it is the forward's one readback).
    pub fn num_intersections(&self, cam: usize) -> usize {
        self.intersections[cam] as usize
    }
}
