//! `--set a.b.c=VALUE`: one override applied to a YAML tree.

use serde_yaml_ng::{Mapping, Value};

use super::{ConfigError, ALIASES};

/// Applies one `a.b.c=VALUE` override to a YAML tree.
pub fn apply_set(value: &mut Value, set: &str) -> Result<(), ConfigError> {
    let (key, raw) = set.split_once('=').ok_or_else(|| {
        ConfigError(format!(
            "--set {set}: expected KEY=VALUE (e.g. fit.iters=300)"
        ))
    })?;
    let key = key.trim();
    let mut parts: Vec<&str> = key.split('.').collect();
    if let [section, name] = parts[..] {
        if let Some((_, _, k)) = ALIASES.iter().find(|(s, a, _)| *s == section && *a == name) {
            parts[1] = k;
        }
    }
    if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError(format!(
            "--set {set}: `{key}` is not a key path (e.g. sds.sds_iters)"
        )));
    }
    let parsed: Value = if raw.trim().is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw)
            .map_err(|e| ConfigError(format!("--set {key}: cannot parse `{raw}`: {e}")))?
    };
    let mut node = value;
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            Value::Null => {
                *node = Value::Mapping(Mapping::new());
                match node {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => {
                return Err(ConfigError(format!(
                    "--set {key}: `{}` is a value, not a section",
                    parts[..i].join(".")
                )))
            }
        };
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, parsed);
            return Ok(());
        }
        if !map.contains_key(&k) {
            map.insert(k.clone(), Value::Mapping(Mapping::new()));
        }
        node = map.get_mut(&k).expect("inserted");
    }
    unreachable!("the loop returns at the last part")
}
