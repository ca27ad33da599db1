//! Reading a configuration: the profile, the config file merged over it and
//! the `--set` overrides, each source checked section by section so that an
//! error names the section of a bad key (the resolution order is in the
//! [`config`](super) module docs).

use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use splatforge_fit::FitConfig;

use super::{
    apply_set, builtin_profile, AlphaConfig, ConfigError, DiffusionConfig, FluxConfig, InitConfig,
    MatteConfig, OutputConfig, PipelineConfig, SdsConfig, TrellisConfig, DEFAULT_PROFILE, PROFILES,
};

/// Where a configuration comes from (the CLI flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    /// `--profile NAME` (None: [`DEFAULT_PROFILE`]).
    pub profile: Option<String>,
    /// `--config FILE`.
    pub config_file: Option<std::path::PathBuf>,
    /// `--set KEY=VALUE`, in order.
    pub sets: Vec<String>,
}

impl ConfigSources {
    /// Resolves the sources (see the module docs). Returns the profile's
    /// name with the configuration.
    pub fn resolve(&self) -> Result<(String, PipelineConfig), ConfigError> {
        let name = self
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        let text = builtin_profile(&name).ok_or_else(|| {
            let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
            ConfigError(format!(
                "unknown profile `{name}` (profiles: {}; use --config FILE for your own)",
                names.join(", ")
            ))
        })?;
        let mut value = parse_yaml(text, &format!("profile {name}"))?;
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let over = parse_yaml(&text, &path.display().to_string())?;
            // Check the file on its own first, so that its errors name it.
            from_value(over.clone())
                .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
            merge(&mut value, over);
        }
        for s in &self.sets {
            apply_set(&mut value, s)?;
            check_sections(&value).map_err(|e| ConfigError(format!("--set {s}: {}", e.0)))?;
        }
        let config = from_value(value)?;
        Ok((name, config))
    }
}

/// Other names accepted for keys: `(section, alias, key)`.
pub const ALIASES: &[(&str, &str, &str)] = &[("diffusion", "ref_size", "resolution")];

/// Renames aliases to their keys in one source (both in one source is an error).
fn canonicalize(value: &mut Value, what: &str) -> Result<(), ConfigError> {
    let Value::Mapping(top) = value else {
        return Ok(());
    };
    for (section, alias, key) in ALIASES {
        let Some(Value::Mapping(m)) = top.get_mut(*section) else {
            continue;
        };
        if let Some(v) = m.remove(*alias) {
            if m.contains_key(*key) {
                return Err(ConfigError(format!(
                    "{what}: {section}.{alias} and {section}.{key} are the same key; give one"
                )));
            }
            m.insert(Value::String(key.to_string()), v);
        }
    }
    Ok(())
}

fn parse_yaml(text: &str, what: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    let mut v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError(format!("{what}: {e}")))?;
    match v {
        Value::Mapping(_) => {
            canonicalize(&mut v, what)?;
            Ok(v)
        }
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        _ => Err(ConfigError(format!(
            "{what}: the configuration must be a mapping of keys"
        ))),
    }
}

/// Deep merge: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

const SECTIONS: &[&str] = &[
    "diffusion",
    "alpha",
    "init",
    "fit",
    "sds",
    "trellis",
    "matte",
    "flux",
    "output",
];

/// Deserialises a YAML tree, naming the section of a bad key.
fn from_value(value: Value) -> Result<PipelineConfig, ConfigError> {
    check_sections(&value)?;
    let config: PipelineConfig =
        serde_yaml_ng::from_value(value).map_err(|e| ConfigError(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Deserialises each section alone, so that errors carry the section's
/// name (serde's own messages name only the field).
fn check_sections(value: &Value) -> Result<(), ConfigError> {
    if let Value::Mapping(m) = value {
        for (k, v) in m {
            let Some(section) = k.as_str().filter(|s| SECTIONS.contains(s)) else {
                continue;
            };
            let r = match section {
                "diffusion" => section_check::<DiffusionConfig>(v),
                "alpha" => section_check::<AlphaConfig>(v),
                "init" => section_check::<InitConfig>(v),
                "fit" => section_check::<FitConfig>(v),
                "sds" => section_check::<SdsConfig>(v),
                "trellis" => section_check::<TrellisConfig>(v),
                "matte" => section_check::<MatteConfig>(v),
                "flux" => section_check::<FluxConfig>(v),
                _ => section_check::<OutputConfig>(v),
            };
            r.map_err(|e| ConfigError(format!("{section}: {e}")))?;
        }
    }
    Ok(())
}

fn section_check<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    serde_yaml_ng::from_value::<T>(v.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl PipelineConfig {
    /// Parses one YAML document (no profile under it) and validates it.
    pub fn from_yaml_str(text: &str) -> Result<PipelineConfig, ConfigError> {
        from_value(parse_yaml(text, "config")?)
    }

    /// A built-in profile.
    pub fn profile(name: &str) -> Result<PipelineConfig, ConfigError> {
        ConfigSources {
            profile: Some(name.to_string()),
            ..Default::default()
        }
        .resolve()
        .map(|(_, c)| c)
    }

    /// Reads a YAML file (no profile under it).
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        PipelineConfig::from_yaml_str(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }
}
