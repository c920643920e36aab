//! Parses arbitrary strings as `--disk` specs. No panic; a refusal is one
//! line; an accepted spec has a path without commas and an id of at most
//! 20 printable characters, writes back (its Display, rate limits included) to a spec that parses to
//! the same disk, and carries an id the block device accepts too (so it
//! cannot pass the command line only to fail when the VM starts).
#![no_main]

use kiln::backends::CacheMode;
use kiln::config::DiskConfig;
use kiln::devices::virtio::block::{BlockConfig, BlockDevice, BlockError};
use kiln_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::tempfile::TempFile;

thread_local! {
    static IMAGE: TempFile = {
        let image = scratch_file();
        image.as_file().set_len(4096).unwrap();
        image
    };
}

fuzz_target!(|spec: &str| {
    let disk = match spec.parse::<DiskConfig>() {
        Ok(disk) => disk,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            return;
        }
    };
    let path = disk.block.path.to_str().expect("parsed from a str");
    assert!(!path.is_empty() && !path.contains(','), "path {path:?}");
    if let Some(id) = &disk.block.id {
        assert!(
            id.len() <= 20 && id.bytes().all(|b| b.is_ascii_graphic()),
            "id {id:?}"
        );
    }

    let again = disk.to_string();
    let reparsed = again
        .parse::<DiskConfig>()
        .unwrap_or_else(|e| panic!("{spec:?} gave {again:?}, which does not parse: {e}"));
    assert_eq!(reparsed, disk, "{spec:?} and its canonical form {again:?} differ");
    assert_eq!(reparsed.to_string(), again);

    if disk.block.id.is_some() {
        IMAGE.with(|image| {
            let config = BlockConfig {
                path: image.as_path().to_path_buf(),
                // O_DIRECT may not be available where the image lives.
                cache: CacheMode::Writeback,
                ..disk.block.clone()
            };
            if let Err(e @ BlockError::InvalidId { .. }) = BlockDevice::new(config) {
                panic!("{spec:?} passed the command line but the device refuses it: {e}");
            }
        });
    }
});
