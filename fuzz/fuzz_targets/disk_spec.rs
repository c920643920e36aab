//! Parses arbitrary strings as `--disk` specs. No panic; a refusal is one
//! line; an accepted spec has a path without commas and an id of at most
//! 20 printable characters, writes back (rate limits included) to a canonical spec that parses to
//! the same disk, and carries an id the block device accepts too (so it
//! cannot pass the command line only to fail when the VM starts).
#![no_main]

use kiln::backends::CacheMode;
use kiln::config::DiskConfig;
use kiln::devices::virtio::block::{BlockConfig, BlockDevice, BlockError};
use kiln_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::tempfile::TempFile;

/// The spec that names every field of `disk`, each once.
fn canonical(disk: &DiskConfig) -> String {
    let b = &disk.block;
    let switch = |on: bool| if on { "on" } else { "off" };
    let cache = match b.cache {
        CacheMode::Unsafe => "unsafe",
        CacheMode::Writeback => "writeback",
        CacheMode::None => "none",
    };
    let mut spec = format!("path={}", b.path.display());
    if disk.root {
        spec.push_str(",root");
    }
    spec.push_str(&format!(
        ",readonly={},cache={cache},shared={}",
        switch(b.read_only),
        switch(b.shared)
    ));
    if let Some(id) = &b.id {
        spec.push_str(&format!(",id={id}"));
    }
    let limits = [("bw", &b.rate_limiter.bandwidth), ("ops", &b.rate_limiter.ops)];
    for (key, bucket) in limits {
        if let Some(bucket) = bucket {
            spec.push_str(&format!(",{key}={}/{}", bucket.size, bucket.refill_time));
            if let Some(burst) = bucket.one_time_burst {
                spec.push_str(&format!(",{key}-burst={burst}"));
            }
        }
    }
    spec
}

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

    let again = canonical(&disk);
    let reparsed = again
        .parse::<DiskConfig>()
        .unwrap_or_else(|e| panic!("{spec:?} gave {again:?}, which does not parse: {e}"));
    assert_eq!(reparsed, disk, "{spec:?} and its canonical form {again:?} differ");
    assert_eq!(canonical(&reparsed), again);

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
