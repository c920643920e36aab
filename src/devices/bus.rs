//! Address → device dispatch for port I/O and MMIO exits.
//!
//! The bus is built once before the vCPUs start and is then read-only, so
//! vCPU threads share it through an `Arc` without locking the map itself;
//! each device has its own lock.

use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A device that answers guest reads and writes inside its address window.
///
/// `offset` is relative to the start of the window the device was inserted
/// at. Implementations must accept any offset and any access size the guest
/// chooses: the guest is not trusted.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    #[error("device window at {base:#x} has zero length")]
    Empty { base: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A sorted set of non-overlapping device windows.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { base });
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap { base, len })?;
        let pos = self.entries.partition_point(|e| e.base < base);
        let clashes_prev = pos > 0 && {
            let p = &self.entries[pos - 1];
            p.base + p.len > base
        };
        let clashes_next = self.entries.get(pos).is_some_and(|n| n.base < end);
        if clashes_prev || clashes_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - e.base;
        (offset < e.len).then_some((e, offset))
    }

    /// Dispatches a guest read. Returns false when nothing lives at `addr`;
    /// `data` is then filled with ones, as an unclaimed bus reads on x86.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.read_repeated(addr, data.len(), data)
    }

    /// Dispatches a guest write. Returns false when nothing lives at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.write_repeated(addr, data.len(), data)
    }

    /// Dispatches `data` as consecutive reads of `size` bytes each from the
    /// same address, as a string instruction (`rep insb`) makes them: the
    /// device sees every access, in order.
    pub fn read_repeated(&self, addr: u64, size: usize, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((e, offset)) => {
                let mut device = lock(&e.device);
                for access in data.chunks_mut(size.max(1)) {
                    device.read(offset, access);
                }
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches `data` as consecutive writes of `size` bytes each to the
    /// same address, as a string instruction (`rep outsb`) makes them.
    pub fn write_repeated(&self, addr: u64, size: usize, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((e, offset)) => {
                let mut device = lock(&e.device);
                for access in data.chunks(size.max(1)) {
                    device.write(offset, access);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
        writes: Vec<Vec<u8>>,
        reads: u8,
    }

    impl BusDevice for Recorder {
        /// Answers with the offset plus how many reads came before.
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill((offset as u8).wrapping_add(self.reads));
            self.reads = self.reads.wrapping_add(1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
            self.writes.push(data.to_vec());
        }
    }

    #[test]
    fn dispatches_by_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![7])));
    }

    /// `rep outsw` of three words and `rep insb` of four bytes: one device
    /// access per element, not one for the whole buffer.
    #[test]
    fn repeated_accesses_reach_the_device_one_by_one() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.write_repeated(0x3f8, 2, b"abcdef"));
        assert_eq!(dev.lock().unwrap().writes, [b"ab", b"cd", b"ef"]);
        let mut b = [0u8; 4];
        assert!(bus.read_repeated(0x3f9, 1, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
        // A zero size (KVM never sends one) means bytes, not a panic.
        assert!(bus.write_repeated(0x3f8, 0, b"xy"));
        assert_eq!(dev.lock().unwrap().writes[3..], [b"x", b"y"]);
        let mut b = [0u8; 3];
        assert!(!Bus::new().read_repeated(0x80, 1, &mut b));
        assert_eq!(b, [0xff; 3]);
    }

    #[test]
    fn unclaimed_reads_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn refuses_overlaps_and_empty_windows() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as Arc<Mutex<dyn BusDevice>>;
        bus.insert(0x100, 0x10, d()).unwrap();
        assert!(bus.insert(0x10f, 1, d()).is_err());
        assert!(bus.insert(0xf8, 9, d()).is_err());
        assert!(bus.insert(0x90, 0, d()).is_err());
        bus.insert(0x110, 1, d()).unwrap();
        bus.insert(0xf0, 0x10, d()).unwrap();
        assert!(bus.insert(u64::MAX, 2, d()).is_err());
    }
}
