//! Any bytes into the PLY reader: an error is fine, a panic or an
//! allocation beyond the input's size is a bug. A decoded splat must
//! survive writing and reading back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splatforge_splat::ply::{read_ply, write_ply, PlyWriteOptions};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = read_ply(data) {
        let bytes = write_ply(&g, PlyWriteOptions::default()).expect("a decoded splat is consistent");
        let back = read_ply(&bytes).expect("our own output reads back");
        assert_eq!(back.len(), g.len());
    }
});
