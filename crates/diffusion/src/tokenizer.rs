//! The CLIP BPE tokenizer, through the `tokenizers` crate.
//!
//! Sources, in order of preference: a `tokenizer.json` (Hugging Face fast
//! tokenizer), or the slow tokenizer's `vocab.json` + `merges.txt` (what the
//! SD 2.1 / MVDream diffusers exports ship), from which we build the same
//! pipeline as transformers' `CLIPTokenizerFast` conversion: NFC, whitespace
//! collapse, lower-casing; CLIP's split regex then byte-level; BPE with the
//! `</w>` end-of-word suffix.
//!
//! Encoding always gives exactly `max_length` ids:
//! `<|startoftext|> tokens… <|endoftext|> pad…`, truncated so that the last
//! id is `<|endoftext|>` (as both `open_clip.tokenize` and transformers with
//! `truncation=True` do). SD 2.x / MVDream pad with id 0 (`!`): OpenCLIP pads
//! with 0, and SD 2.1's `tokenizer_config.json` has `pad_token: "!"`.

use std::collections::HashMap;
use std::path::Path;

use splatforge_nn::NnError;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{DiffusionError, Result};

/// CLIP's beginning-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also its unknown token).
pub const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenisation regex (from transformers' `CLIPConverter`).
pub const CLIP_SPLIT_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer producing fixed-length id sequences.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_length: usize,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::bad_file(path, format!("cannot load tokenizer: {e}"))
}

impl ClipTokenizer {
    /// Wraps a `tokenizers::Tokenizer` that knows CLIP's BOS/EOS tokens.
    /// Pads with `pad_id` (default: the id of `!`, else EOS).
    pub fn new(inner: Tokenizer, max_length: usize) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                DiffusionError::Tokenizer(format!("the vocabulary has no `{t}` token"))
            })
        };
        let bos_id = id(BOS)?;
        let eos_id = id(EOS)?;
        let pad_id = inner.token_to_id("!").unwrap_or(eos_id);
        if max_length < 2 {
            return Err(DiffusionError::Tokenizer(format!(
                "max_length {max_length} < 2"
            )));
        }
        Ok(Self {
            inner,
            max_length,
            pad_id,
            bos_id,
            eos_id,
        })
    }

    /// From a `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path, max_length: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        Self::new(inner, max_length)
    }

    /// From the slow tokenizer's `vocab.json` + `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path, max_length: usize) -> Result<Self> {
        let vocab_text =
            std::fs::read_to_string(vocab).map_err(|e| DiffusionError::io(vocab, e))?;
        let vocab_map: HashMap<String, u32> =
            serde_json::from_str(&vocab_text).map_err(|e| tok_err(vocab, e))?;
        let merges_text =
            std::fs::read_to_string(merges).map_err(|e| DiffusionError::io(merges, e))?;
        let merges_list = parse_merges(&merges_text);
        Self::new(
            build_clip_tokenizer(vocab_map, merges_list).map_err(|e| tok_err(merges, e))?,
            max_length,
        )
    }

    /// From a tokenizer folder: `tokenizer.json`, else `vocab.json` +
    /// `merges.txt`. `tokenizer_config.json` (if present) sets the padding
    /// token (`pad_token`) and `model_max_length` (else `default_max_length`).
    pub fn from_dir(dir: &Path, default_max_length: usize) -> Result<Self> {
        let cfg = read_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let max_length = cfg
            .model_max_length
            .filter(|m| (2..=4096).contains(m))
            .unwrap_or(default_max_length);
        let json = dir.join("tokenizer.json");
        let mut tok = if json.is_file() {
            Self::from_tokenizer_json(&json, max_length)?
        } else {
            let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
            if !v.is_file() || !m.is_file() {
                return Err(NnError::MissingFile {
                    file: json,
                    hint: format!(
                        "a tokenizer folder needs tokenizer.json, or vocab.json + merges.txt (found neither in {})",
                        dir.display()
                    ),
                }
.into());
            }
            Self::from_vocab_merges(&v, &m, max_length)?
        };
        if let Some(pad) = cfg.pad_token {
            tok.pad_id = tok.inner.token_to_id(&pad).ok_or_else(|| {
                DiffusionError::Tokenizer(format!(
                    "pad_token `{pad}` of tokenizer_config.json is not in the vocabulary"
                ))
            })?;
        }
        Ok(tok)
    }

    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// `text` → exactly `max_length` ids (BOS, tokens, EOS, padding).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DiffusionError::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend(enc.get_ids().iter().copied().take(self.max_length - 2));
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }
}

#[derive(Default)]
struct TokenizerConfigJson {
    model_max_length: Option<usize>,
    pad_token: Option<String>,
}

fn read_tokenizer_config(path: &Path) -> Result<TokenizerConfigJson> {
    if !path.is_file() {
        return Ok(TokenizerConfigJson::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
    // model_max_length can be a huge float (1e30) in some exports: parse leniently.
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| tok_err(path, e))?;
    let model_max_length = v
        .get("model_max_length")
        .and_then(|m| m.as_u64())
        .map(|m| m as usize);
    let pad_token = match v.get("pad_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(m)) => m
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    };
    Ok(TokenizerConfigJson {
        model_max_length,
        pad_token,
    })
}

/// `merges.txt` lines (`a b`), skipping the `#version` header and blanks.
pub fn parse_merges(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// The `CLIPTokenizerFast` pipeline around a BPE vocabulary.
pub fn build_clip_tokenizer(
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
) -> std::result::Result<Tokenizer, String> {
    let bos = *vocab
        .get(BOS)
        .ok_or_else(|| format!("vocabulary has no {BOS}"))?;
    let eos = *vocab
        .get(EOS)
        .ok_or_else(|| format!("vocabulary has no {EOS}"))?;
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    let normalizer = NormSeq::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| e.to_string())?
        .into(),
        Lowercase.into(),
    ]);
    let pre = PreSeq::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT_REGEX.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| e.to_string())?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ]);
    tok.with_normalizer(Some(normalizer));
    tok.with_pre_tokenizer(Some(pre));
    tok.with_post_processor(Some(
        RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    tok.add_special_tokens(&[AddedToken::from(BOS, true), AddedToken::from(EOS, true)]);
    Ok(tok)
}

/// T5's padding token.
pub const T5_PAD: &str = "<pad>";
/// T5's end-of-sequence token.
pub const T5_EOS: &str = "</s>";
/// T5's unknown token.
pub const T5_UNK: &str = "<unk>";

/// The T5 (SentencePiece unigram) tokenizer of FLUX's second text encoder,
/// from its `tokenizer.json`, producing fixed-length id sequences:
/// `tokens… </s> <pad>…`, truncated to keep the final `</s>` (as
/// transformers does with `padding="max_length", truncation=True`).
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    max_length: usize,
    pad_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl T5Tokenizer {
    /// Wraps a tokenizer whose vocabulary has `<pad>` and `</s>`.
    pub fn new(inner: Tokenizer, max_length: usize) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                DiffusionError::Tokenizer(format!("the T5 vocabulary has no `{t}` token"))
            })
        };
        if max_length < 1 {
            return Err(DiffusionError::Tokenizer("max_length is 0".into()));
        }
        Ok(Self {
            pad_id: id(T5_PAD)?,
            eos_id: id(T5_EOS)?,
            inner,
            max_length,
        })
    }

    /// From a `tokenizer.json` (FLUX's `tokenizer_2/tokenizer.json`).
    pub fn from_tokenizer_json(path: &Path, max_length: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        Self::new(inner, max_length)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// `text` → exactly `max_length` ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_to(text, self.max_length)
    }

    /// `text` → exactly `len` ids (`len ≥ 1`).
    pub fn encode_to(&self, text: &str, len: usize) -> Result<Vec<u32>> {
        if len == 0 {
            return Err(DiffusionError::Tokenizer("sequence length 0".into()));
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DiffusionError::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        let mut ids: Vec<u32> = enc.get_ids().iter().copied().take(len - 1).collect();
        ids.push(self.eos_id);
        ids.resize(len, self.pad_id);
        Ok(ids)
    }
}

/// A T5-style unigram tokenizer over `pieces` (SentencePiece pieces with
/// log-probabilities; `<pad>`, `</s>`, `<unk>` must be ids 0, 1, 2):
/// whitespace collapse, `▁` metaspace pre-tokenisation, unigram model,
/// `</s>` appended by the post-processor (tiny test models).
pub fn build_t5_tokenizer(pieces: Vec<(String, f64)>) -> std::result::Result<Tokenizer, String> {
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    if pieces.len() < 3 || pieces[0].0 != T5_PAD || pieces[1].0 != T5_EOS || pieces[2].0 != T5_UNK {
        return Err("the first pieces must be <pad>, </s>, <unk>".into());
    }
    let model = tokenizers::models::unigram::Unigram::from(pieces, Some(2), false)
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r" {2,}".into()),
            " ",
        )
        .map_err(|e| e.to_string())?,
    ));
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_post_processor(Some(
        tokenizers::processors::template::TemplateProcessing::builder()
            .try_single("$A </s>")
            .map_err(|e| e.to_string())?
            .special_tokens(vec![(T5_EOS, 1)])
            .build()
            .map_err(|e| e.to_string())?,
    ));
    tok.with_decoder(Some(tokenizers::decoders::metaspace::Metaspace::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    tok.add_special_tokens(&[
        AddedToken::from(T5_PAD, true),
        AddedToken::from(T5_EOS, true),
        AddedToken::from(T5_UNK, true),
    ]);
    Ok(tok)
}
