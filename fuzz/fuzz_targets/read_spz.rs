//! Any bytes into the SPZ reader (every flavour, detected by magic): an
//! error is fine, a panic or an unbounded allocation is a bug. A decoded
//! splat with finite values must survive encoding again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splatforge_splat::spz::{read_spz, write_spz, SpzFlavor};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = read_spz(data) {
        let bytes = write_spz(&g, SpzFlavor::Zstd404).expect("a decoded splat re-encodes");
        let back = read_spz(&bytes).expect("our own output reads back");
        assert_eq!(back.len(), g.len());
    }
});
