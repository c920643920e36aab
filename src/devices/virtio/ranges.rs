//! A descriptor chain as spans of guest memory: the device-readable part,
//! then the device-writable part (§2.7.4.2), every span checked to lie in
//! guest memory, and helpers to copy bytes in and out of them. Shared by
//! every device: block requests, net frames, vsock packets.

use std::io;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::chain::{Chain, ChainFault};
use crate::vstate::memory::GuestMemoryMmap;

/// A span of guest memory, already checked to be inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub addr: GuestAddress,
    pub len: u64,
}

impl GuestRange {
    pub fn new(addr: u64, len: u64) -> Self {
        Self {
            addr: GuestAddress(addr),
            len,
        }
    }
}

/// Why a chain's spans cannot be used as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("descriptor chain is broken: {0}")]
    BrokenChain(ChainFault),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideGuestMemory { addr: u64, len: u64 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain is longer than {max} descriptors")]
    TooManyDescriptors { max: usize },
    #[error("cannot access the buffer in guest memory")]
    GuestMemory,
}

/// The descriptor a chain ends with: where devices that answer in the
/// chain's last byte (block's status) put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastDescriptor {
    pub range: GuestRange,
    pub writable: bool,
}

/// One chain's spans, in chain order, empty descriptors left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainRanges {
    pub readable: Vec<GuestRange>,
    /// Up to the first defect; includes the last descriptor if writable.
    pub writable: Vec<GuestRange>,
    /// The last descriptor of the chain, even after a defect; `None` for a
    /// chain without descriptors.
    pub last: Option<LastDescriptor>,
    /// The first thing wrong with the chain that still let the walk reach
    /// its end; the spans stop there.
    pub defect: Option<RangeError>,
}

/// How far a walk goes to find the end of a chain that is already refused:
/// beyond any chain a queue holds directly, but not through a
/// 65,535-entry indirect table, which would cost 64 times as much.
const MAX_WALK: usize = 1024;

/// Splits `chain` into its readable and writable spans, accepting at most
/// `max` descriptors. After a defect (too many descriptors, a span outside
/// guest memory, readable after writable) the walk goes on, for a while,
/// only to find the last descriptor, where a device may still answer.
/// A walk that cannot reach the end at all is an error.
pub fn walk_ranges(
    mut chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    max: usize,
) -> Result<ChainRanges, RangeError> {
    let mut ranges = ChainRanges::default();
    let mut seen_writable = false;
    // The walk itself stops at the table size, so a loop ends here too.
    let give_up = max.max(MAX_WALK);
    for (count, desc) in chain.by_ref().enumerate() {
        if count >= give_up {
            return Err(RangeError::TooManyDescriptors { max });
        }
        let range = GuestRange {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        ranges.last = Some(LastDescriptor {
            range,
            writable: desc.is_write_only(),
        });
        if ranges.defect.is_some() {
            continue;
        }
        if count >= max {
            ranges.defect = Some(RangeError::TooManyDescriptors { max });
        } else if !in_guest_memory(mem, range) {
            ranges.defect = Some(RangeError::OutsideGuestMemory {
                addr: range.addr.0,
                len: range.len,
            });
        } else if desc.is_write_only() {
            seen_writable = true;
            if range.len > 0 {
                ranges.writable.push(range);
            }
        } else if seen_writable {
            ranges.defect = Some(RangeError::ReadableAfterWritable);
        } else if range.len > 0 {
            ranges.readable.push(range);
        }
    }
    match chain.fault() {
        Some(fault) => Err(RangeError::BrokenChain(fault)),
        None => Ok(ranges),
    }
}

/// Whether `range` lies entirely in guest memory.
pub fn in_guest_memory(mem: &GuestMemoryMmap, range: GuestRange) -> bool {
    // An empty descriptor is never accessed, wherever it points.
    range.len == 0
        || usize::try_from(range.len).is_ok_and(|len| GuestMemoryBackend::check_range(mem, range.addr, len))
}

pub fn total_len(ranges: &[GuestRange]) -> u64 {
    ranges.iter().map(|r| r.len).fold(0, u64::saturating_add)
}

/// Splits the first `n` bytes off `ranges`; `None` if there are fewer.
pub fn take_front(ranges: &mut Vec<GuestRange>, n: u64) -> Option<Vec<GuestRange>> {
    if total_len(ranges) < n {
        return None;
    }
    let mut front = Vec::new();
    let mut need = n;
    while need > 0 {
        let first = ranges.first_mut()?;
        if first.len <= need {
            need -= first.len;
            front.push(ranges.remove(0));
        } else {
            front.push(GuestRange {
                addr: first.addr,
                len: need,
            });
            // In guest memory, so the address cannot overflow.
            first.addr = GuestAddress(first.addr.0 + need);
            first.len -= need;
            need = 0;
        }
    }
    Some(front)
}

/// Fills `buf` from `ranges` in order (their total must cover `buf`).
pub fn read_ranges(mem: &GuestMemoryMmap, ranges: &[GuestRange], buf: &mut [u8]) -> Result<(), RangeError> {
    let mut pos = 0;
    for range in ranges {
        if pos == buf.len() {
            break;
        }
        let n = (buf.len() - pos).min(usize::try_from(range.len).unwrap_or(usize::MAX));
        mem.read_slice(&mut buf[pos..pos + n], range.addr)
            .map_err(|_| RangeError::GuestMemory)?;
        pos += n;
    }
    if pos == buf.len() {
        Ok(())
    } else {
        Err(RangeError::GuestMemory)
    }
}

/// Writes as much of `bytes` as fits into `ranges`; returns how much did.
pub fn write_ranges(mem: &GuestMemoryMmap, ranges: &[GuestRange], bytes: &[u8]) -> Result<usize, RangeError> {
    let mut pos = 0;
    for range in ranges {
        if pos == bytes.len() {
            break;
        }
        let n = (bytes.len() - pos).min(usize::try_from(range.len).unwrap_or(usize::MAX));
        mem.write_slice(&bytes[pos..pos + n], range.addr)
            .map_err(|_| RangeError::GuestMemory)?;
        pos += n;
    }
    Ok(pos)
}

/// Host views of `ranges` for vectored I/O, split where guest memory
/// regions end.
pub fn guest_slices<'m>(
    mem: &'m GuestMemoryMmap,
    ranges: &[GuestRange],
) -> io::Result<Vec<VolatileSlice<'m>>> {
    let mut slices = Vec::with_capacity(ranges.len());
    for range in ranges {
        let len = usize::try_from(range.len).map_err(io::Error::other)?;
        for slice in GuestMemoryBackend::get_slices(mem, range.addr, len) {
            slices.push(slice.map_err(io::Error::other)?);
        }
    }
    Ok(slices)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::devices::virtio::test_utils::{link, memory, r, w, write_table};

    fn range(addr: u64, len: u64) -> GuestRange {
        GuestRange::new(addr, len)
    }

    #[test]
    fn take_front_splits_ranges() {
        let mut ranges = vec![range(0x100, 10), range(0x200, 10)];
        let front = take_front(&mut ranges, 16).unwrap();
        assert_eq!(front, [range(0x100, 10), range(0x200, 6)]);
        assert_eq!(ranges, [range(0x206, 4)]);
        assert!(take_front(&mut ranges, 5).is_none());
        assert_eq!(take_front(&mut ranges, 4).unwrap(), [range(0x206, 4)]);
        assert!(ranges.is_empty());
    }

    #[test]
    fn copies_cross_ranges_and_stop_at_their_end() {
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let ranges = [range(0xffe, 4), range(0x1800, 2)];
        assert_eq!(write_ranges(&mem, &ranges, b"abcdefgh").unwrap(), 6);
        let mut buf = [0u8; 6];
        read_ranges(&mem, &ranges, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdef");
        let mut too_long = [0u8; 7];
        assert_eq!(
            read_ranges(&mem, &ranges, &mut too_long),
            Err(RangeError::GuestMemory)
        );
        // Split at the region boundary for vectored I/O.
        let lens: Vec<usize> = guest_slices(&mem, &ranges)
            .unwrap()
            .iter()
            .map(|s| s.len())
            .collect();
        assert_eq!(lens, [2, 2, 2]);
    }

    fn walk(table: &[virtio_queue::desc::RawDescriptor], max: usize) -> Result<ChainRanges, RangeError> {
        let mem = memory(&[(0, 0x10000)]);
        write_table(&mem, 0, table);
        let walked = Cell::new(0);
        walk_ranges(
            Chain::new(&mem, &walked, GuestAddress(0), 16, 0, false),
            &mem,
            max,
        )
    }

    #[test]
    fn walks_split_readable_from_writable() {
        let ranges = walk(
            &link(&[r(0x1000, 16), r(0x2000, 0), w(0x3000, 8), w(0x4000, 1)], 0),
            8,
        )
        .unwrap();
        assert_eq!(ranges.readable, [range(0x1000, 16)]);
        assert_eq!(ranges.writable, [range(0x3000, 8), range(0x4000, 1)]);
        assert_eq!(
            ranges.last,
            Some(LastDescriptor {
                range: range(0x4000, 1),
                writable: true
            })
        );
        assert_eq!(ranges.defect, None);
    }

    #[test]
    fn defects_stop_the_spans_but_not_the_walk() {
        let outside = walk(&link(&[r(0x1000, 16), r(0xfff0, 32), w(0x4000, 1)], 0), 8).unwrap();
        assert_eq!(outside.readable, [range(0x1000, 16)]);
        assert_eq!(
            outside.defect,
            Some(RangeError::OutsideGuestMemory {
                addr: 0xfff0,
                len: 32
            })
        );
        assert_eq!(outside.last.unwrap().range, range(0x4000, 1));
        let backwards = walk(&link(&[w(0x1000, 16), r(0x2000, 1), w(0x4000, 1)], 0), 8).unwrap();
        assert_eq!(backwards.defect, Some(RangeError::ReadableAfterWritable));
        let long = walk(&link(&[r(0x1000, 1), r(0x1001, 1), w(0x4000, 1)], 0), 2).unwrap();
        assert_eq!(long.defect, Some(RangeError::TooManyDescriptors { max: 2 }));
        assert_eq!(long.last.unwrap().range, range(0x4000, 1));
        let dangling = walk(&[crate::devices::virtio::test_utils::raw(0x1000, 1, 1, 99)], 8);
        assert!(matches!(dangling, Err(RangeError::BrokenChain(_))));
    }
}
