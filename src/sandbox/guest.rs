//! The sandbox guest's agent, built statically by `build.rs` from
//! `resources/agent` and embedded here, and where kiln writes it out for
//! the sandbox initramfs.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The `kiln-agent` binary for the guest (static x86_64 Linux).
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-agent"));

/// Writes the embedded agent to `dir/agent/<content key>/kiln-agent`
/// (once; later calls find it) and returns its path.
pub fn write_agent(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    AGENT.hash(&mut hasher);
    let path = dir.join(format!("agent/{:016x}/kiln-agent", hasher.finish()));
    if std::fs::read(&path).is_ok_and(|b| b == AGENT) {
        return Ok(path);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Beside and rename: a concurrent kiln never runs half a binary.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, AGENT)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_agent_is_a_static_x86_64_executable() {
        assert_eq!(&AGENT[..4], b"\x7fELF", "not an ELF file");
        assert_eq!(AGENT[4], 2, "not 64-bit");
        assert_eq!(u16::from_le_bytes([AGENT[18], AGENT[19]]), 62, "not x86_64");
        // No PT_INTERP program header: it needs no dynamic loader (the
        // sandbox initramfs has no libc).
        let phoff = u64::from_le_bytes(AGENT[32..40].try_into().unwrap()) as usize;
        let phentsize = usize::from(u16::from_le_bytes([AGENT[54], AGENT[55]]));
        let phnum = usize::from(u16::from_le_bytes([AGENT[56], AGENT[57]]));
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(AGENT[at..at + 4].try_into().unwrap());
            assert_ne!(p_type, 3, "the agent asks for a dynamic loader (PT_INTERP)");
        }
    }

    #[test]
    fn the_agent_is_written_once_and_executable() {
        let dir = std::env::temp_dir().join(format!("kiln-agent-write-{}", std::process::id()));
        let first = write_agent(&dir).unwrap();
        let second = write_agent(&dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&first).unwrap(), AGENT);
        let mode = std::os::unix::fs::PermissionsExt::mode(&first.metadata().unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
