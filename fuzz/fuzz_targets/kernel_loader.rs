//! Loads arbitrary bytes as a guest kernel through kiln's real loader
//! (`load_kernel` on a file: the ELF path with its note walk, and the
//! bzImage path) into a small guest, then writes the boot information the
//! loaded kernel asks for. Nothing may panic, errors must be one line, and
//! a kernel that loads must fit the guest. Memory and time are bounded by
//! libFuzzer's -rss_limit_mb and -timeout.
#![no_main]

use std::io::Write;

use kiln::arch::x86_64::boot::{load_kernel, write_boot_info, BootInfo};
use kiln::arch::x86_64::layout;
use kiln::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use kiln_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::tempfile::TempFile;

/// Small, but room for a tiny kernel decompressing at 16 MiB.
const GUEST_MEM: u64 = 32 << 20;

thread_local! {
    static FIXTURE: (GuestMemoryMmap, TempFile) =
        (create_guest_memory(GUEST_MEM, false).unwrap(), scratch_file());
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|(mem, kernel)| {
        let mut file = kernel.as_file();
        file.set_len(0).unwrap();
        file.write_all(data).unwrap();
        // Written through this handle's offset; the loader opens the path.
        let _ = std::io::Seek::rewind(&mut file);
        let loaded = match load_kernel(mem, kernel.as_path()) {
            Ok(k) => k,
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg}");
                return;
            }
        };
        let limit = loaded.cmdline_limit();
        assert!(
            (1..=layout::CMDLINE_MAX_SIZE).contains(&limit),
            "command line limit {limit}"
        );
        let info = BootInfo {
            mem_size: GUEST_MEM,
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: limit - 1,
            initrd: None,
            rsdp: None,
        };
        if let Err(e) = write_boot_info(mem, &loaded, &info) {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
        }
    });
});
