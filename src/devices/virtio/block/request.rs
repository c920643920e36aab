//! Turns a descriptor chain into a validated block request.
//!
//! No descriptor layout is assumed (§2.7.4): the header is the first 16
//! device-readable bytes, the status is the last byte of the chain, which
//! must be device-writable; what lies between is the data. Every address is
//! checked against guest memory and every sector range against the image
//! before anything is executed.

use vm_memory::GuestAddress;

use super::request_status::{IOERR, UNSUPP};
use super::request_type::{DISCARD, FLUSH, GET_ID, IN, OUT, WRITE_ZEROES};
use super::SECTOR_SIZE;
use crate::devices::virtio::queue::Chain;
pub use crate::devices::virtio::ranges::GuestRange;
use crate::devices::virtio::ranges::{
    in_guest_memory, read_ranges, take_front, total_len, walk_ranges, RangeError,
};
use crate::vstate::memory::GuestMemoryMmap;

const HEADER_LEN: u64 = 16;
/// Size of one `virtio_blk_discard_write_zeroes` segment.
const SEGMENT_LEN: u64 = 16;
const SEGMENT_FLAG_UNMAP: u32 = 1;

/// A byte range of the image for discard / write-zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Operation {
    Read { offset: u64, data: Vec<GuestRange> },
    Write { offset: u64, data: Vec<GuestRange> },
    Flush,
    GetId { data: Vec<GuestRange> },
    Discard(Vec<Extent>),
    WriteZeroes(Vec<Extent>),
}

impl Operation {
    /// Bytes of the image this request reads or writes (zeroes included);
    /// what it costs the VMM thread, give or take.
    pub fn io_bytes(&self) -> u64 {
        match self {
            Self::Read { data, .. } | Self::Write { data, .. } => total_len(data),
            Self::WriteZeroes(extents) => extents.iter().map(|e| e.len).sum(),
            // Deallocation writes no data; the pass's time limit covers a
            // slow one, and a slow flush.
            Self::Flush | Self::GetId { .. } | Self::Discard(_) => 0,
        }
    }
}

/// The outcome of parsing one chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Execute `op`, then write its status at `status`.
    Valid { op: Operation, status: GuestAddress },
    /// Reply `error.status()` at `status` without doing anything.
    Invalid {
        error: RequestError,
        status: GuestAddress,
    },
    /// There is no usable status byte: return the chain with nothing written.
    Unanswerable(RequestError),
}

/// What the device accepts; see the config space for the guest's view.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Image size in bytes.
    pub capacity: u64,
    pub read_only: bool,
    pub max_descriptors: usize,
    /// Largest IN/OUT data length in bytes.
    pub max_data_len: u64,
    pub max_discard_sectors: u32,
    pub max_discard_segments: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_segments: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Chain(#[from] RangeError),
    #[error("descriptor chain does not end in a device-writable status byte")]
    NoStatus,
    #[error("request header is {len} bytes; it needs 16")]
    ShortHeader { len: u64 },
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("{kind} request has {len} bytes of device-readable data")]
    UnexpectedReadable { kind: &'static str, len: u64 },
    #[error("{kind} request has {len} bytes of device-writable data")]
    UnexpectedWritable { kind: &'static str, len: u64 },
    #[error("data length {len} is not a multiple of 512")]
    NotSectorMultiple { len: u64 },
    #[error("{len} bytes at sector {sector} run past the end of the disk ({capacity} bytes)")]
    OutOfRange { sector: u64, len: u64, capacity: u64 },
    #[error("request of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("GET_ID request has no buffer for the id")]
    NoIdBuffer,
    #[error("{kind} segment table of {len} bytes is not 1 to {max} 16-byte segments")]
    BadSegmentTable { kind: &'static str, len: u64, max: u32 },
    #[error("{kind} segment has unknown flags {flags:#x}")]
    UnknownFlags { kind: &'static str, flags: u32 },
    #[error("discard segment asks to unmap")]
    UnmapOnDiscard,
    #[error("{kind} segment of {sectors} sectors is over the {max}-sector limit")]
    SegmentTooLarge {
        kind: &'static str,
        sectors: u32,
        max: u32,
    },
}

impl RequestError {
    /// The virtio status the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::UnknownFlags { .. } | Self::UnmapOnDiscard => UNSUPP,
            _ => IOERR,
        }
    }
}

/// Parses and validates one chain. Never touches memory outside the
/// guest's or bytes outside the image.
pub fn parse(chain: Chain<'_>, mem: &GuestMemoryMmap, limits: &Limits) -> Parsed {
    let walk = match walk_chain(chain, mem, limits.max_descriptors) {
        Ok(walk) => walk,
        Err(error) => return Parsed::Unanswerable(error),
    };
    let status = walk.status;
    let decoded = match walk.defect {
        Some(error) => Err(error),
        None => decode(walk.readable, walk.writable, mem, limits),
    };
    match decoded {
        Ok(op) => Parsed::Valid { op, status },
        Err(error) => Parsed::Invalid { error, status },
    }
}

struct Walk {
    readable: Vec<GuestRange>,
    /// Device-writable data, without the status byte.
    writable: Vec<GuestRange>,
    status: GuestAddress,
    /// A fault found on the way that still leaves the status byte usable.
    defect: Option<RequestError>,
}

fn walk_chain(chain: Chain<'_>, mem: &GuestMemoryMmap, max: usize) -> Result<Walk, RequestError> {
    // A walk that ends early leaves no status descriptor to answer in.
    let ranges = walk_ranges(chain, mem, max)?;
    let defect = ranges.defect.map(RequestError::from);
    let last = ranges.last.ok_or(RequestError::NoStatus)?;
    if !last.writable || last.range.len == 0 || !in_guest_memory(mem, last.range) {
        return Err(defect.unwrap_or(RequestError::NoStatus));
    }
    let status = GuestAddress(last.range.addr.0 + (last.range.len - 1));
    let mut writable = ranges.writable;
    if defect.is_none() {
        // Without a defect the last writable range is the last descriptor.
        if let Some(tail) = writable.last_mut() {
            tail.len -= 1;
            if tail.len == 0 {
                writable.pop();
            }
        }
    }
    Ok(Walk {
        readable: ranges.readable,
        writable,
        status,
        defect,
    })
}

fn decode(
    mut readable: Vec<GuestRange>,
    writable: Vec<GuestRange>,
    mem: &GuestMemoryMmap,
    limits: &Limits,
) -> Result<Operation, RequestError> {
    let header_ranges = take_front(&mut readable, HEADER_LEN).ok_or(RequestError::ShortHeader {
        len: total_len(&readable),
    })?;
    let mut header = [0u8; HEADER_LEN as usize];
    read_ranges(mem, &header_ranges, &mut header)?;
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(s);
    let out_len = total_len(&readable);
    let in_len = total_len(&writable);
    let no_readable = |kind: &'static str| match out_len {
        0 => Ok(()),
        len => Err(RequestError::UnexpectedReadable { kind, len }),
    };
    let no_writable = |kind: &'static str| match in_len {
        0 => Ok(()),
        len => Err(RequestError::UnexpectedWritable { kind, len }),
    };
    match kind {
        IN => {
            no_readable("read")?;
            let offset = check_io(sector, in_len, limits)?;
            Ok(Operation::Read {
                offset,
                data: writable,
            })
        }
        OUT => {
            no_writable("write")?;
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let offset = check_io(sector, out_len, limits)?;
            Ok(Operation::Write {
                offset,
                data: readable,
            })
        }
        FLUSH => {
            no_readable("flush")?;
            no_writable("flush")?;
            Ok(Operation::Flush)
        }
        GET_ID => {
            no_readable("get-id")?;
            if in_len == 0 {
                return Err(RequestError::NoIdBuffer);
            }
            Ok(Operation::GetId { data: writable })
        }
        DISCARD | WRITE_ZEROES => {
            let discard = kind == DISCARD;
            let name = if discard { "discard" } else { "write-zeroes" };
            no_writable(name)?;
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let extents = parse_segments(name, discard, &readable, mem, limits)?;
            Ok(if discard {
                Operation::Discard(extents)
            } else {
                Operation::WriteZeroes(extents)
            })
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Validates an IN/OUT transfer; returns its byte offset in the image.
fn check_io(sector: u64, len: u64, limits: &Limits) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple { len });
    }
    if len > limits.max_data_len {
        return Err(RequestError::TooLarge {
            len,
            max: limits.max_data_len,
        });
    }
    image_range(sector, len, limits.capacity)
}

fn image_range(sector: u64, len: u64, capacity: u64) -> Result<u64, RequestError> {
    let out_of_range = RequestError::OutOfRange {
        sector,
        len,
        capacity,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range.clone())?;
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(offset),
        _ => Err(out_of_range),
    }
}

fn parse_segments(
    kind: &'static str,
    discard: bool,
    table: &[GuestRange],
    mem: &GuestMemoryMmap,
    limits: &Limits,
) -> Result<Vec<Extent>, RequestError> {
    let (max_sectors, max_segments) = if discard {
        (limits.max_discard_sectors, limits.max_discard_segments)
    } else {
        (limits.max_write_zeroes_sectors, limits.max_write_zeroes_segments)
    };
    let len = total_len(table);
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN) || len / SEGMENT_LEN > u64::from(max_segments) {
        return Err(RequestError::BadSegmentTable {
            kind,
            len,
            max: max_segments,
        });
    }
    // Bounded by max_segments * 16 bytes just above.
    let mut raw = vec![0u8; len as usize];
    read_ranges(mem, table, &mut raw)?;
    let mut extents = Vec::with_capacity(raw.len() / SEGMENT_LEN as usize);
    for segment in raw.chunks_exact(SEGMENT_LEN as usize) {
        let field = |at: usize| [segment[at], segment[at + 1], segment[at + 2], segment[at + 3]];
        let sector = u64::from(u32::from_le_bytes(field(0))) | u64::from(u32::from_le_bytes(field(4))) << 32;
        let sectors = u32::from_le_bytes(field(8));
        let flags = u32::from_le_bytes(field(12));
        if flags & !SEGMENT_FLAG_UNMAP != 0 {
            return Err(RequestError::UnknownFlags { kind, flags });
        }
        let unmap = flags & SEGMENT_FLAG_UNMAP != 0;
        if discard && unmap {
            return Err(RequestError::UnmapOnDiscard);
        }
        if sectors > max_sectors {
            return Err(RequestError::SegmentTooLarge {
                kind,
                sectors,
                max: max_sectors,
            });
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let offset = image_range(sector, len, limits.capacity)?;
        extents.push(Extent { offset, len, unmap });
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_range_checks_overflow_and_limits() {
        let limits = Limits {
            capacity: 1 << 20,
            read_only: false,
            max_descriptors: 4,
            max_data_len: 4096,
            max_discard_sectors: 8,
            max_discard_segments: 1,
            max_write_zeroes_sectors: 8,
            max_write_zeroes_segments: 1,
        };
        assert_eq!(check_io(2, 512, &limits), Ok(1024));
        assert_eq!(check_io(2047, 512, &limits), Ok((1 << 20) - 512));
        assert!(matches!(
            check_io(2048, 512, &limits),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            check_io(u64::MAX, 512, &limits),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            check_io(u64::MAX / 512, 1024, &limits),
            Err(RequestError::OutOfRange { .. })
        ));
        assert_eq!(
            check_io(0, 4608, &limits),
            Err(RequestError::TooLarge { len: 4608, max: 4096 })
        );
        assert_eq!(
            check_io(0, u64::from(u32::MAX), &limits),
            Err(RequestError::NotSectorMultiple {
                len: u64::from(u32::MAX)
            })
        );
        assert_eq!(check_io(2048, 0, &limits), Ok(1 << 20));
    }

    #[test]
    fn statuses_follow_the_spec() {
        assert_eq!(RequestError::Unsupported(99).status(), UNSUPP);
        assert_eq!(RequestError::UnmapOnDiscard.status(), UNSUPP);
        assert_eq!(
            RequestError::UnknownFlags {
                kind: "discard",
                flags: 2
            }
            .status(),
            UNSUPP
        );
        assert_eq!(RequestError::ReadOnly.status(), IOERR);
        assert_eq!(RequestError::ShortHeader { len: 3 }.status(), IOERR);
    }
}
