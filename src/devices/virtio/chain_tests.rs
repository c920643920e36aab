//! The chain walker against what a hostile driver can put in its tables.

use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::test_utils::{
    indirect, link, memory, r, raw, w, write_table, INDIRECT_FLAG, NEXT,
};

const TABLE: u64 = 0x1000;
const INDIRECT_TABLE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;

/// Walks the chain at `head` of the table at `TABLE`; returns what it
/// yielded, why it stopped, and how many descriptors it read.
fn walk(
    mem: &GuestMemoryMmap,
    head: u16,
    indirect_allowed: bool,
) -> (Vec<(u64, u32)>, Option<ChainFault>, u64) {
    let walked = Cell::new(0);
    let mut chain = Chain::new(
        mem,
        &walked,
        GuestAddress(TABLE),
        QUEUE_SIZE,
        head,
        indirect_allowed,
    );
    assert_eq!(chain.head_index(), head);
    let descs = chain.by_ref().map(|d| (d.addr().0, d.len())).collect();
    (descs, chain.fault(), walked.get())
}

fn mem() -> GuestMemoryMmap {
    memory(&[(0, 0x20_0000)])
}

#[test]
fn direct_chain_in_order() {
    let mem = mem();
    // Head 3: the link helper numbers them 3, 4, 5.
    write_table(
        &mem,
        TABLE + 3 * 16,
        &link(&[r(0x100, 16), w(0x200, 512), w(0x300, 1)], 3),
    );
    let (descs, fault, walked) = walk(&mem, 3, false);
    assert_eq!(descs, [(0x100, 16), (0x200, 512), (0x300, 1)]);
    assert_eq!((fault, walked), (None, 3));
}

#[test]
fn indirect_table_is_followed_when_negotiated() {
    let mem = mem();
    write_table(&mem, INDIRECT_TABLE, &link(&[r(0x100, 16), w(0x300, 1)], 0));
    write_table(&mem, TABLE, &link(&[indirect(INDIRECT_TABLE, 2)], 0));
    let (descs, fault, walked) = walk(&mem, 0, true);
    assert_eq!(descs, [(0x100, 16), (0x300, 1)]);
    assert_eq!((fault, walked), (None, 3), "the indirect descriptor is read too");
}

#[test]
fn indirect_table_is_refused_when_not_negotiated() {
    let mem = mem();
    write_table(&mem, INDIRECT_TABLE, &link(&[r(0x100, 16), w(0x300, 1)], 0));
    write_table(&mem, TABLE, &link(&[indirect(INDIRECT_TABLE, 2)], 0));
    let (descs, fault, _) = walk(&mem, 0, false);
    assert!(descs.is_empty());
    assert_eq!(fault, Some(ChainFault::IndirectNotNegotiated));
}

#[test]
fn indirect_table_may_end_a_direct_chain() {
    // §2.7.5.3.2: zero or more direct descriptors, then one indirect.
    let mem = mem();
    write_table(&mem, INDIRECT_TABLE, &link(&[w(0x200, 512), w(0x300, 1)], 0));
    write_table(
        &mem,
        TABLE,
        &link(&[r(0x100, 16), indirect(INDIRECT_TABLE, 2)], 0),
    );
    let (descs, fault, _) = walk(&mem, 0, true);
    assert_eq!(descs, [(0x100, 16), (0x200, 512), (0x300, 1)]);
    assert_eq!(fault, None);
}

#[test]
fn indirect_with_next_is_refused() {
    let mem = mem();
    write_table(&mem, INDIRECT_TABLE, &link(&[w(0x300, 1)], 0));
    write_table(
        &mem,
        TABLE,
        &[
            raw(INDIRECT_TABLE, 16, INDIRECT_FLAG | NEXT, 1),
            raw(0x300, 1, 2, 0),
        ],
    );
    let (descs, fault, _) = walk(&mem, 0, true);
    assert!(descs.is_empty());
    assert_eq!(fault, Some(ChainFault::IndirectWithNext));
}

#[test]
fn nested_and_malformed_indirect_tables_are_refused() {
    let mem = mem();
    write_table(&mem, INDIRECT_TABLE, &[raw(INDIRECT_TABLE, 16, INDIRECT_FLAG, 0)]);
    write_table(&mem, TABLE, &link(&[indirect(INDIRECT_TABLE, 1)], 0));
    assert_eq!(walk(&mem, 0, true).1, Some(ChainFault::NestedIndirect));
    for len in [0, 15, 17, 16 * 65_536, u32::MAX] {
        write_table(&mem, TABLE, &[raw(INDIRECT_TABLE, len, INDIRECT_FLAG, 0)]);
        assert_eq!(
            walk(&mem, 0, true).1,
            Some(ChainFault::BadIndirectTable { len }),
            "{len}"
        );
    }
}

#[test]
fn loops_and_bad_indices_end_the_walk() {
    let mem = mem();
    // 0 -> 1 -> 0 -> ...: at most the queue size is read.
    write_table(&mem, TABLE, &[raw(0x100, 16, NEXT, 1), raw(0x200, 1, NEXT, 0)]);
    let (descs, fault, walked) = walk(&mem, 0, true);
    assert_eq!(fault, Some(ChainFault::Loop { len: QUEUE_SIZE }));
    assert_eq!((descs.len(), walked), (16, 16));

    write_table(&mem, TABLE, &[raw(0x100, 16, NEXT, QUEUE_SIZE)]);
    let (_, fault, _) = walk(&mem, 0, true);
    assert_eq!(
        fault,
        Some(ChainFault::IndexOutOfRange {
            index: QUEUE_SIZE,
            len: QUEUE_SIZE
        })
    );

    // A loop inside an indirect table is bounded by the table's size.
    write_table(
        &mem,
        INDIRECT_TABLE,
        &[raw(0x100, 1, NEXT, 1), raw(0x100, 1, NEXT, 0)],
    );
    write_table(&mem, TABLE, &link(&[indirect(INDIRECT_TABLE, 2)], 0));
    let (descs, fault, walked) = walk(&mem, 0, true);
    assert_eq!(fault, Some(ChainFault::Loop { len: 2 }));
    assert_eq!((descs.len(), walked), (2, 3));
}

#[test]
fn a_chain_of_four_gib_or_more_ends() {
    let mem = mem();
    write_table(&mem, TABLE, &link(&[w(0x100, u32::MAX), w(0x200, 1)], 0));
    let (descs, fault, _) = walk(&mem, 0, true);
    assert_eq!(descs, [(0x100, u32::MAX)]);
    assert_eq!(fault, Some(ChainFault::TooManyBytes));
}

#[test]
fn tables_outside_memory_and_across_regions() {
    // Two regions with a gap between them, like RAM below and above the
    // 32-bit MMIO hole.
    let low_end = 0x10_0000u64;
    let high = 1u64 << 32;
    let mem = memory(&[(0, low_end as usize), (high, 0x10_0000)]);
    // An indirect table straddling the end of low memory: the entries in
    // the gap cannot be read.
    let straddling = low_end - 32;
    write_table(
        &mem,
        straddling,
        &[raw(0x100, 16, NEXT, 1), raw(0x200, 16, NEXT, 2)],
    );
    write_table(&mem, TABLE, &link(&[indirect(straddling, 4)], 0));
    let (descs, fault, _) = walk(&mem, 0, true);
    assert_eq!(descs.len(), 2);
    assert_eq!(fault, Some(ChainFault::Unreadable { index: 2 }));

    // An indirect table above 4 GiB is fine; one in the gap is not.
    write_table(&mem, high + 0x800, &link(&[r(high, 16), w(high + 16, 1)], 0));
    write_table(&mem, TABLE, &link(&[indirect(high + 0x800, 2)], 0));
    let (descs, fault, _) = walk(&mem, 0, true);
    assert_eq!((descs, fault), (vec![(high, 16), (high + 16, 1)], None));
    write_table(&mem, TABLE, &link(&[indirect(0xc000_0000, 2)], 0));
    assert_eq!(walk(&mem, 0, true).1, Some(ChainFault::Unreadable { index: 0 }));

    // Adjacent regions behave as one: a table across their boundary reads.
    let mem = memory(&[(0, 0x10_0000), (0x10_0000, 0x10_0000)]);
    let across = 0x10_0000 - 24;
    write_table(&mem, across, &link(&[r(0x100, 16), r(0x200, 16), w(0x300, 1)], 0));
    write_table(&mem, TABLE, &link(&[indirect(across, 3)], 0));
    let (descs, fault, _) = walk(&mem, 0, true);
    assert_eq!((descs.len(), fault), (3, None));
}

/// The largest table a driver can build: 65,535 linked entries. The walk
/// reads every one, counts every one, and stays quick even unoptimised.
#[test]
fn largest_indirect_table_is_walked_in_bounded_time() {
    let mem = mem();
    let entries = u16::MAX;
    let table: Vec<_> = (0..entries)
        .map(|i| {
            let last = i + 1 == entries;
            raw(0x100, 1, if last { 2 } else { NEXT }, i.wrapping_add(1))
        })
        .collect();
    write_table(&mem, INDIRECT_TABLE, &table);
    write_table(
        &mem,
        TABLE,
        &link(&[indirect(INDIRECT_TABLE, u32::from(entries))], 0),
    );
    let start = Instant::now();
    let (descs, fault, walked) = walk(&mem, 0, true);
    let took = start.elapsed();
    assert_eq!((descs.len(), fault), (usize::from(entries), None));
    assert_eq!(walked, u64::from(entries) + 1);
    eprintln!("65,535-entry indirect walk: {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}
