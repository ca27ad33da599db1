//! The floating-point precision a model runs in.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// Floating-point precision of a model's weights and activations. Written
/// `fp32`, `fp16`, `bf16` (profiles, `--print-config`); read also as `f32`,
/// `float32`, `f16`, `float16`, `bfloat16`, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Precision {
    #[serde(rename = "fp32", alias = "f32", alias = "float32")]
    F32,
    #[serde(rename = "fp16", alias = "f16", alias = "float16")]
    F16,
    #[serde(rename = "bf16", alias = "bfloat16")]
    Bf16,
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "fp32",
            Precision::F16 => "fp16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// An unknown precision name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision `{0}` (fp32, fp16, bf16)")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::F32),
            "fp16" | "f16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(UnknownPrecision(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            let yaml = serde_json::to_string(&p).unwrap();
            assert_eq!(yaml, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&yaml).unwrap(), p);
        }
        assert_eq!("F16".parse::<Precision>(), Ok(Precision::F16));
        assert_eq!("bfloat16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!(
            serde_json::from_str::<Precision>("\"f32\"").unwrap(),
            Precision::F32
        );
        assert_eq!(Precision::Bf16.dtype(), DType::BF16);
        let e = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp8") && e.contains("bf16"), "{e}");
        assert!(serde_json::from_str::<Precision>("\"fp8\"").is_err());
    }
}
