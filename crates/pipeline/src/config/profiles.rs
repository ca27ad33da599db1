//! The built-in profiles: the YAML files of the repository's `profiles/`
//! folder, compiled into the binary.

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "balanced";

/// The built-in profiles: `(name, YAML)`, from the repository's `profiles/`.
pub const PROFILES: &[(&str, &str)] = &[
    ("speed", include_str!("../../../../profiles/speed.yaml")),
    (
        "balanced",
        include_str!("../../../../profiles/balanced.yaml"),
    ),
    ("quality", include_str!("../../../../profiles/quality.yaml")),
    ("memory", include_str!("../../../../profiles/memory.yaml")),
    (
        "development",
        include_str!("../../../../profiles/development.yaml"),
    ),
    (
        "image-quality",
        include_str!("../../../../profiles/image-quality.yaml"),
    ),
    (
        "image-speed",
        include_str!("../../../../profiles/image-speed.yaml"),
    ),
    (
        "image-development",
        include_str!("../../../../profiles/image-development.yaml"),
    ),
    (
        "text-image-quality",
        include_str!("../../../../profiles/text-image-quality.yaml"),
    ),
    (
        "text-image-speed",
        include_str!("../../../../profiles/text-image-speed.yaml"),
    ),
    (
        "text-image-development",
        include_str!("../../../../profiles/text-image-development.yaml"),
    ),
    (
        "reference-text-mv",
        include_str!("../../../../profiles/reference-text-mv.yaml"),
    ),
    (
        "reference-fast",
        include_str!("../../../../profiles/reference-fast.yaml"),
    ),
];

/// The YAML text of a built-in profile.
pub fn builtin_profile(name: &str) -> Option<&'static str> {
    PROFILES.iter().find(|(n, _)| *n == name).map(|(_, y)| *y)
}
