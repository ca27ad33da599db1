//! Densification on the GPU (`cuda/densify.cu`): statistics, clone /
//! split / prune in one classify + scatter pass, opacity reset, and the
//! optimiser reset of SDS refinement.

use super::*;

impl CudaBackend {
    pub(super) fn try_densify(&mut self, p: &DensifyParams) -> Result<DensifyReport> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        let cs = stream.cu_stream() as *mut c_void;
        let n0 = self.n;
        let k = self.k();
        if n0 == 0 {
            return Ok(DensifyReport::default());
        }
        const SPLIT_N: usize = 2;
        let shrink = (0.8 * SPLIT_N as f32).ln();
        let mut flags = alloc::<i32>(&stream, 4 * n0)?;
        let mut offsets = alloc::<i32>(&stream, 4 * n0)?;
        let mut totals = stream
            .alloc_zeros::<i32>(8)
            .map_err(|e| dev_err("alloc", e))?;
        let mut host = [0i32; 8];
        let params_ptr = tensor_address::<f32>(&self.params, &stream)?;
        let a = ffi::SffClassifyArgs {
            params: params_ptr,
            grad_accum: slice_address(&self.grad_accum, &stream),
            denom: slice_address(&self.denom, &stream),
            max_radii: slice_address(&self.max_radii, &stream),
            n: n0 as i64,
            sh_coeffs: k as c_int,
            grad_threshold: p.grad_threshold,
            size_limit: p.percent_dense * p.extent,
            min_opacity: p.min_opacity,
            use_screen_size: p.max_screen_size.is_some() as c_int,
            max_screen_size: p.max_screen_size.unwrap_or(0.0),
            max_world: 0.1 * p.extent,
            shrink,
            flags: slice_address_mut(&mut flags, &stream),
            offsets: slice_address_mut(&mut offsets, &stream),
            totals: slice_address_mut(&mut totals, &stream),
            totals_host: host.as_mut_ptr(),
        };
        // SAFETY: `a`'s flag, offset and total buffers were allocated above
        // for `n` Gaussians on this stream; `host` outlives the call.
        check("densify classify", unsafe {
            ffi::sff_densify_classify(&a, cs)
        })?;
        self.syncs.densify_readbacks += 1;
        // The stream is idle here: read the loss ring too.
        self.read_stats()?;
        let [kept_orig, kept_clone, kept_child, splits, clones, ..] = host.map(|x| x as usize);
        let after = kept_orig + kept_clone + 2 * kept_child;
        // The CPU's split samples, drawn in its order.
        let normals: Vec<f32> = (0..SPLIT_N * splits * 3)
            .map(|_| self.rng.normal() as f32)
            .collect();
        let normals_dev = stream
            .clone_htod(if normals.is_empty() {
                &[0.0f32][..]
            } else {
                &normals[..]
            })
            .map_err(|e| dev_err("upload", e))?;
        let rf = row_floats(k);
        let mut params_new = alloc::<f32>(&stream, (after * rf).max(1))?;
        let mut m_new = stream
            .alloc_zeros::<f32>((after * rf).max(1))
            .map_err(|e| dev_err("alloc", e))?;
        let mut v_new = stream
            .alloc_zeros::<f32>((after * rf).max(1))
            .map_err(|e| dev_err("alloc", e))?;
        let sa = ffi::SffScatterArgs {
            params: params_ptr,
            m: slice_address(&self.m, &stream),
            v: slice_address(&self.v, &stream),
            flags: slice_address(&flags, &stream),
            offsets: slice_address(&offsets, &stream),
            normals: slice_address(&normals_dev, &stream),
            n: n0 as i64,
            n_new: after as i64,
            sh_coeffs: k as c_int,
            kept_orig: kept_orig as c_int,
            kept_clone: kept_clone as c_int,
            kept_child: kept_child as c_int,
            splits: splits as c_int,
            shrink,
            params_new: slice_address_mut(&mut params_new, &stream),
            m_new: slice_address_mut(&mut m_new, &stream),
            v_new: slice_address_mut(&mut v_new, &stream),
        };
        // SAFETY: the new parameter and moment buffers hold the classify
        // pass's total; the old ones are this optimiser's live buffers.
        check("densify scatter", unsafe {
            ffi::sff_densify_scatter(&sa, cs)
        })?;
        let params = wrap_slice(params_new, &self.dev);
        self.params = if after == 0 {
            params.narrow(0, 0, 0)?
        } else {
            params
        };
        self.m = m_new;
        self.v = v_new;
        let zeros = |len: usize| {
            stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(|e| dev_err("alloc", e))
        };
        self.grad_accum = zeros(after)?;
        self.denom = zeros(after)?;
        self.max_radii = zeros(after)?;
        self.n = after;
        let total = n0 + clones + SPLIT_N * splits;
        Ok(DensifyReport {
            before: n0,
            cloned: clones,
            split: splits,
            pruned: total - after - splits,
            after,
        })
    }

    pub(super) fn try_reset_optimizer(&mut self) -> Result<()> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        stream
            .memset_zeros(&mut self.m)
            .map_err(|e| dev_err("reset optimizer", e))?;
        stream
            .memset_zeros(&mut self.v)
            .map_err(|e| dev_err("reset optimizer", e))?;
        self.adam_steps = [0; 6];
        Ok(())
    }

    pub(super) fn try_reset_opacity(&mut self) -> Result<()> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let n = self.n;
        if n == 0 {
            return Ok(());
        }
        let params_ptr = tensor_address::<f32>(&self.params, &stream)?;
        let off = (10 * n * 4) as u64;
        let a = ffi::SffResetOpacityArgs {
            opacity: params_ptr + off,
            m: slice_address_mut(&mut self.m, &stream) + off,
            v: slice_address_mut(&mut self.v, &stream) + off,
            n: n as i64,
            cap: logit(0.01),
        };
        // SAFETY: the pointers address the opacity rows of this optimiser's
        // live parameter and moment buffers, `n` entries each.
        check("reset opacity", unsafe { ffi::sff_reset_opacity(&a, cs) })
    }
}
