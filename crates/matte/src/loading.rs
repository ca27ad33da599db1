//! Finding and opening BiRefNet weights: a local `.safetensors` / `.pth` file, a local folder
//! (`model.safetensors`, the Hugging Face layout), or `hf:ORG/NAME[@REVISION][:FILE]` through
//! the Hugging Face cache (downloaded unless `HF_HUB_OFFLINE`). The Hugging Face checkpoints
//! and the repository's `.pth` releases use the same names (`bb.…`, `squeeze_module.…`,
//! `decoder.…`); a `module.` / `_orig_mod.` prefix (DDP, `torch.compile`) is skipped. The
//! model's shapes (backbone width, depths, heads, window, decoder widths) are read from the
//! tensors, so the same call opens BiRefNet, BiRefNet_lite and random test models.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use splatforge_nn::hub::{FileSource, HubConfig, HubRepo, HubSpec, LocalDir};
use splatforge_nn::weights::{MappedBackend, NameMap, Source, TensorFile};

use crate::config::{BiRefNetConfig, SwinConfig};
use crate::error::bad_file;
use crate::Result;

/// The BiRefNet repository on the Hugging Face hub (Swin-L).
pub const BIREFNET_REPO: &str = "ZhengPeng7/BiRefNet";
/// The lite model (Swin-T).
pub const BIREFNET_LITE_REPO: &str = "ZhengPeng7/BiRefNet_lite";

/// The weight file named by `spec` (see the module documentation).
pub fn resolve(spec: &str, hub: &HubConfig) -> Result<PathBuf> {
    if let Some(h) = HubSpec::parse(spec) {
        let repo = HubRepo {
            hub: hub.clone(),
            repo: h.repo,
            revision: h.revision,
        };
        let file = h.file.unwrap_or_else(|| "model.safetensors".into());
        return Ok(repo.find(&[file.as_str()])?);
    }
    let path = PathBuf::from(spec);
    if path.is_dir() {
        let dir = LocalDir {
            root: path,
            hint: format!(
                "a BiRefNet folder holds model.safetensors (as https://huggingface.co/{BIREFNET_REPO})"
            ),
        };
        return Ok(dir.find(&["model.safetensors", "pytorch_model.bin"])?);
    }
    Ok(path)
}

/// The tensor whose key locates the state dict's root in a file.
const ANCHOR: &str = "bb.patch_embed.proj.weight";

/// An opened checkpoint: the file and the prefix its keys carry.
pub struct Checkpoint {
    file: Arc<TensorFile>,
    prefix: String,
}

impl Checkpoint {
    /// Opens `path` and finds the state dict's root.
    pub fn open(path: &Path) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let prefix = file
            .names()
            .iter()
            .filter_map(|n| n.strip_suffix(ANCHOR))
            .min_by_key(|p| p.len())
            .map(str::to_string)
            .ok_or_else(|| {
                bad_file(
                    path,
                    format!("not a BiRefNet checkpoint: no `{ANCHOR}` (Swin backbone) tensor"),
                )
            })?;
        Ok(Self {
            file: Arc::new(file),
            prefix,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn dims(&self, name: &str) -> Result<Option<Vec<usize>>> {
        let key = format!("{}{name}", self.prefix);
        Ok(self.file.load(&key)?.map(|t| t.dims().to_vec()))
    }

    fn need(&self, name: &str) -> Result<Vec<usize>> {
        self.dims(name)?.ok_or_else(|| {
            bad_file(
                self.path(),
                format!("tensor `{}{name}` is missing", self.prefix),
            )
        })
    }

    /// The configuration these tensors were made for, at input side `size`.
    pub fn config(&self, size: usize) -> Result<BiRefNetConfig> {
        let embed_dim = self.need(ANCHOR)?[0];
        let mut depths = [0; 4];
        let mut num_heads = [0; 4];
        let mut window_size = 0;
        for i in 0..4 {
            while self
                .dims(&format!("bb.layers.{i}.blocks.{}.norm1.weight", depths[i]))?
                .is_some()
            {
                depths[i] += 1;
            }
            let table = self.need(&format!(
                "bb.layers.{i}.blocks.0.attn.relative_position_bias_table"
            ))?;
            num_heads[i] = *table.last().unwrap_or(&0);
            // (2·ws − 1)² rows.
            let side = (table[0] as f64).sqrt().round() as usize;
            window_size = side.div_ceil(2);
        }
        let first = |name: &str| -> Result<usize> { Ok(self.need(name)?[0]) };
        let mut config = BiRefNetConfig::published(SwinConfig {
            embed_dim,
            depths,
            num_heads,
            window_size,
        });
        config.size = size;
        config.dec_inter_channels = first("decoder.decoder_block4.conv_in.weight")?;
        config.aspp_channels =
            first("decoder.decoder_block4.dec_att.aspp1.atrous_conv.regular_conv.weight")?;
        config.ipt_inter_channels = first("decoder.ipt_blk5.conv1.weight")?;
        config.gdt_channels = first("decoder.gdt_convs_4.0.weight")?;
        config.validate()?;
        Ok(config)
    }

    /// A `VarBuilder` over the state dict's root, converting to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let prefix = self.prefix.clone();
        let map: NameMap = Arc::new(move |name: &str| Some(Source::Key(format!("{prefix}{name}"))));
        MappedBackend::new(self.file.clone(), map, "BiRefNet").into_var_builder(dtype, device)
    }
}
