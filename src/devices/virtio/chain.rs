//! Walking one descriptor chain the driver made available (virtio 1.2
//! §2.7.5), in guest memory.
//!
//! Our own walker rather than virtio-queue's so that it can refuse what the
//! driver did not negotiate (indirect tables), say why a walk stopped, and
//! count every descriptor it reads into the pass budget: a chain through a
//! 65,535-entry indirect table costs a walk of that length.

use std::cell::Cell;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::vstate::memory::GuestMemoryMmap;

/// Size of one split-ring descriptor.
const DESCRIPTOR_LEN: u32 = 16;

/// Why a walk ended before a descriptor without NEXT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    #[error("descriptor index {index} is past the end of a table of {len}")]
    IndexOutOfRange { index: u16, len: u16 },
    #[error("the chain visits more descriptors than its table of {len} holds: it loops")]
    Loop { len: u16 },
    #[error("descriptor {index} cannot be read from guest memory")]
    Unreadable { index: u16 },
    #[error("the chain uses an indirect table, but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated,
    #[error("an indirect table refers to another indirect table")]
    NestedIndirect,
    #[error("a descriptor has both INDIRECT and NEXT set")]
    IndirectWithNext,
    #[error("an indirect table of {len} bytes is not 1 to 65535 16-byte descriptors")]
    BadIndirectTable { len: u32 },
    #[error("the chain's buffers add up to 4 GiB or more")]
    TooManyBytes,
}

/// The descriptors of one chain, in order. Iteration stops at the last
/// descriptor or at the first fault ([`Chain::fault`] tells which).
///
/// A walk reads at most the queue size plus 65,535 descriptors.
pub struct Chain<'a> {
    mem: &'a GuestMemoryMmap,
    /// Descriptors read by every chain of the current pass.
    walked: &'a Cell<u64>,
    head: u16,
    table: GuestAddress,
    table_len: u16,
    /// The next descriptor to read; `None` once the walk is over.
    next: Option<u16>,
    /// Reads left in the current table before the chain must be looping.
    ttl: u16,
    bytes: u32,
    indirect_allowed: bool,
    in_indirect: bool,
    fault: Option<ChainFault>,
}

impl<'a> Chain<'a> {
    /// The chain starting at `head` of the descriptor table at `table`
    /// (`queue_size` entries). `head` must be below `queue_size`.
    pub(crate) fn new(
        mem: &'a GuestMemoryMmap,
        walked: &'a Cell<u64>,
        table: GuestAddress,
        queue_size: u16,
        head: u16,
        indirect_allowed: bool,
    ) -> Self {
        Self {
            mem,
            walked,
            head,
            table,
            table_len: queue_size,
            next: Some(head),
            ttl: queue_size,
            bytes: 0,
            indirect_allowed,
            in_indirect: false,
            fault: None,
        }
    }

    /// The descriptor index the driver made available; it goes back on the
    /// used ring.
    pub fn head_index(&self) -> u16 {
        self.head
    }

    /// Why the walk stopped early, if it did.
    pub fn fault(&self) -> Option<ChainFault> {
        self.fault
    }

    fn stop(&mut self, fault: ChainFault) -> Option<Descriptor> {
        self.fault = Some(fault);
        self.next = None;
        None
    }

    /// Switches the walk to the indirect table `desc` refers to.
    fn enter_indirect(&mut self, desc: &Descriptor) -> Result<(), ChainFault> {
        if !self.indirect_allowed {
            return Err(ChainFault::IndirectNotNegotiated);
        }
        if self.in_indirect {
            return Err(ChainFault::NestedIndirect);
        }
        // What would follow the table is ambiguous (§2.7.5.3.1).
        if desc.has_next() {
            return Err(ChainFault::IndirectWithNext);
        }
        let len = desc.len();
        let entries = len / DESCRIPTOR_LEN;
        let table_len = match u16::try_from(entries) {
            Ok(n) if n > 0 && len.is_multiple_of(DESCRIPTOR_LEN) => n,
            _ => return Err(ChainFault::BadIndirectTable { len }),
        };
        self.table = desc.addr();
        self.table_len = table_len;
        self.ttl = table_len;
        self.next = Some(0);
        self.in_indirect = true;
        Ok(())
    }
}

impl Iterator for Chain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            let index = self.next?;
            if index >= self.table_len {
                return self.stop(ChainFault::IndexOutOfRange {
                    index,
                    len: self.table_len,
                });
            }
            if self.ttl == 0 {
                return self.stop(ChainFault::Loop { len: self.table_len });
            }
            self.ttl -= 1;
            self.walked.set(self.walked.get() + 1);
            let desc = match self
                .table
                .0
                .checked_add(u64::from(index) * u64::from(DESCRIPTOR_LEN))
                .map(|addr| self.mem.read_obj::<Descriptor>(GuestAddress(addr)))
            {
                Some(Ok(desc)) => desc,
                _ => return self.stop(ChainFault::Unreadable { index }),
            };
            if desc.refers_to_indirect_table() {
                if let Err(fault) = self.enter_indirect(&desc) {
                    return self.stop(fault);
                }
                continue;
            }
            // §2.7.5.2: a chain is shorter than 4 GiB in total.
            match self.bytes.checked_add(desc.len()) {
                Some(bytes) => self.bytes = bytes,
                None => return self.stop(ChainFault::TooManyBytes),
            }
            self.next = desc.has_next().then(|| desc.next());
            return Some(desc);
        }
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
