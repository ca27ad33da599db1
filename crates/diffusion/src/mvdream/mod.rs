//! MVDream: text → 4 consistent views of an object.
//!
//! | module | what |
//! |---|---|
//! | [`unet`] | the multi-view UNet (cross-view self-attention, camera embedding); SD 2.1's UNet too |
//! | [`camera`] | MVDream's camera rig and the UNet's camera input |
//! | [`pipeline`] | text → views: CFG with a negative prompt, seeded noise, DDIM, VAE decode |
//! | [`loading`] | diffusers folders, LDM checkpoints, the Hugging Face cache |
//! | [`ldm`] | LDM checkpoint ↔ module tensor names (UNet, VAE, OpenCLIP) |

pub mod camera;
pub mod ldm;
pub mod loading;
pub mod pipeline;
pub mod unet;

pub use loading::{load_mvdream, LdmConfig};
pub use pipeline::{MvDreamOutput, MvDreamPipeline, MvDreamRequest};
pub use unet::{MultiViewUNet, MultiViewUNetConfig, PerLevel};

/// MVDream in diffusers layout (fp16 safetensors).
pub const DIFFUSERS_REPO: &str = "ashawkey/mvdream-sd2.1-diffusers";
/// MVDream's original release.
pub const CHECKPOINT_REPO: &str = "MVDream/MVDream";
/// MVDream's LDM checkpoint in [`CHECKPOINT_REPO`].
pub const CHECKPOINT: &str = "sd-v2.1-base-4view.pt";
/// Where an OpenAI-vocabulary CLIP `tokenizer.json` can be had (the same BPE
/// vocabulary OpenCLIP uses), for LDM checkpoints that ship no tokenizer.
pub const CLIP_TOKENIZER_REPO: &str = "openai/clip-vit-large-patch14";
