//! One pass over a queue: what it serves, when it notifies, how it stops,
//! and what a driver that races, lies or never stops can do to it.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use virtio_queue::Queue;

use super::*;
use crate::devices::virtio::test_utils::{
    indirect, link, memory, r, raw, w, write_table, DriverRing, RacingQueue, Recheck, NEXT,
};

const SIZE: u16 = 16;
const RING: u64 = 0x1000;
/// Where the tests' buffers and indirect tables live.
const DATA: u64 = 0x10_0000;
const NO_NOTIFY: u16 = 1;

fn mem() -> GuestMemoryMmap {
    memory(&[(0, 0x40_0000)])
}

/// Exactly reproducible passes: counts only, no clock.
fn rules(budget: PassBudget) -> QueueRules {
    QueueRules {
        indirect: true,
        budget: PassBudget { time: None, ..budget },
    }
}

fn unbounded() -> QueueRules {
    rules(PassBudget {
        chains: u32::MAX,
        descriptors: u64::MAX,
        bytes: u64::MAX,
        time: None,
    })
}

/// `count` one-descriptor chains at heads 0.., published.
fn ring_with_chains(mem: &GuestMemoryMmap, size: u16, count: u16) -> DriverRing {
    let ring = DriverRing::at(mem, RING, size);
    for i in 0..size {
        ring.set_desc_table(mem, i, &[raw(DATA + 0x100 * u64::from(i), 0x100, 0, 0)]);
    }
    ring.publish(mem, &(0..count).map(|i| i % size).collect::<Vec<_>>());
    ring
}

/// A device that walks the chain and reports how many descriptors it had.
fn walk_all(chain: Chain<'_>) -> Served {
    Served {
        used_len: chain.count() as u32,
        bytes: 0,
    }
}

#[test]
fn drains_every_chain_and_fills_used_ring() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 3);
    let mut q = ring.queue();
    let mut heads = Vec::new();
    let pass = drain_queue(&mut q, &mem, &unbounded(), |chain| {
        heads.push(chain.head_index());
        Served {
            used_len: 7,
            bytes: 0,
        }
    })
    .unwrap();
    assert_eq!(
        pass,
        Pass {
            end: PassEnd::Drained,
            notify: true,
            served: 3
        }
    );
    assert_eq!(heads, [0, 1, 2]);
    assert_eq!(ring.used_idx(&mem), 3);
    assert_eq!(ring.used(&mem, 2), (2, 7));
    assert_eq!(ring.used_flags(&mem), 0, "notifications back on");
}

#[test]
fn empty_queue_needs_no_notification() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    let pass = drain_queue(&mut ring.queue(), &mem, &unbounded(), walk_all).unwrap();
    assert_eq!((pass.end, pass.notify, pass.served), (PassEnd::Drained, false, 0));
}

/// Issue 7, item 1: a leftover kick finds the ring empty; the driver
/// publishes between that read and the re-check after notifications are
/// back on. The buffer must be served; the old loop took "nothing popped,
/// yet more work" for a broken ring and had the device reset.
#[test]
fn a_buffer_published_during_the_recheck_is_served() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    let published = Cell::new(false);
    let mut q = RacingQueue {
        inner: ring.queue(),
        race: Box::new(|step| {
            if step == Recheck::Before && !published.replace(true) {
                ring.publish(&mem, &[5]);
            }
        }),
    };
    let pass = drain_queue(&mut q, &mem, &unbounded(), walk_all).unwrap();
    assert!(published.get());
    assert_eq!((pass.end, pass.served, pass.notify), (PassEnd::Drained, 1, true));
    assert_eq!(ring.used_heads(&mem, 0), [5]);

    // The same after a pass that did serve something.
    ring.publish(&mem, &[1, 2]);
    published.set(false);
    let pass = drain_queue(&mut q, &mem, &unbounded(), walk_all).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Drained, 3));
    assert_eq!(ring.used_heads(&mem, 0), [5, 1, 2, 5]);
}

/// A driver that raises its index for the re-check and lowers it again
/// before the next read would keep a pass re-checking forever.
#[test]
fn a_driver_flipping_its_index_cannot_hold_a_pass() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    let rechecks = Cell::new(0u32);
    let mut q = RacingQueue {
        inner: ring.queue(),
        race: Box::new(|step| match step {
            Recheck::Before => {
                rechecks.set(rechecks.get() + 1);
                ring.set_avail_idx(&mem, 1);
            }
            Recheck::After => ring.set_avail_idx(&mem, 0),
        }),
    };
    let budget = PassBudget {
        chains: 10,
        ..PassBudget::DEFAULT
    };
    let pass = drain_queue(&mut q, &mem, &rules(budget), walk_all).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 0));
    assert_eq!(rechecks.get(), 10);
}

#[test]
fn passes_stop_at_the_chain_budget_and_resume() {
    let mem = mem();
    let ring = ring_with_chains(&mem, 64, 40);
    let mut q = ring.queue();
    let budget = rules(PassBudget {
        chains: 16,
        ..PassBudget::DEFAULT
    });
    let mut ends = Vec::new();
    loop {
        let pass = drain_queue(&mut q, &mem, &budget, walk_all).unwrap();
        ends.push((pass.end, pass.served));
        if pass.end == PassEnd::Yielded {
            // Notifications stay off: the device comes back by itself.
            assert_eq!(ring.used_flags(&mem), NO_NOTIFY);
        } else {
            break;
        }
    }
    use PassEnd::*;
    assert_eq!(ends, [(Yielded, 16), (Yielded, 16), (Drained, 8)]);
    assert_eq!(ring.used_idx(&mem), 40);
    assert_eq!(ring.used_flags(&mem), 0);
}

#[test]
fn passes_stop_at_the_byte_budget() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 10);
    let budget = rules(PassBudget {
        bytes: 4 << 20,
        ..PassBudget::DEFAULT
    });
    let mut q = ring.queue();
    let one_mib = |_: Chain<'_>| Served {
        used_len: 1,
        bytes: 1 << 20,
    };
    let pass = drain_queue(&mut q, &mem, &budget, one_mib).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 4));
    // A request bigger than the whole budget still goes through, alone.
    let huge = |_: Chain<'_>| Served {
        used_len: 1,
        bytes: 1 << 30,
    };
    let pass = drain_queue(&mut q, &mem, &budget, huge).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 1));
}

#[test]
fn passes_stop_at_the_descriptor_budget() {
    let mem = mem();
    let ring = DriverRing::at(&mem, RING, SIZE);
    // One chain of ten descriptors at head 0, made available eight times.
    let ten: Vec<_> = (0..10).map(|i| r(DATA + 0x100 * i, 0x10)).collect();
    ring.set_desc_table(&mem, 0, &link(&ten, 0));
    ring.publish(&mem, &[0; 8]);
    let budget = rules(PassBudget {
        descriptors: 25,
        ..PassBudget::DEFAULT
    });
    let pass = drain_queue(&mut ring.queue(), &mem, &budget, walk_all).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 3));
}

/// Every ring entry points at a 65,535-entry indirect table: one such
/// chain exceeds the default descriptor budget, so a pass serves one.
#[test]
fn a_pass_serves_one_largest_indirect_chain() {
    let mem = mem();
    let entries = u16::MAX;
    let table: Vec<_> = (0..entries)
        .map(|i| {
            raw(
                DATA,
                1,
                if i + 1 == entries { 0 } else { NEXT },
                i.wrapping_add(1),
            )
        })
        .collect();
    write_table(&mem, DATA, &table);
    let ring = DriverRing::at(&mem, RING, 256);
    ring.set_desc_table(&mem, 0, &link(&[indirect(DATA, u32::from(entries))], 0));
    ring.publish(&mem, &[0; 256]);
    let mut q = ring.queue();
    let start = std::time::Instant::now();
    let pass = drain_queue(&mut q, &mem, &rules(PassBudget::DEFAULT), walk_all).unwrap();
    let took = start.elapsed();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 1));
    assert_eq!(ring.used(&mem, 0), (0, u32::from(entries)));
    eprintln!("one pass over 65,535-entry indirect chains: {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

/// A driver that refills its ring as fast as the device empties it: the
/// old loop never returned. A pass ends at the budget.
#[test]
fn a_driver_refilling_forever_cannot_hold_a_pass() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, SIZE);
    let mut q = ring.queue();
    let refills = Cell::new(0u32);
    let pass = drain_queue(&mut q, &mem, &rules(PassBudget::DEFAULT), |chain| {
        let head = chain.head_index();
        ring.publish(&mem, &[head]);
        refills.set(refills.get() + 1);
        walk_all(chain)
    })
    .unwrap();
    assert_eq!(
        (pass.end, pass.served),
        (PassEnd::Yielded, PassBudget::DEFAULT.chains)
    );
    assert_eq!(refills.get(), PassBudget::DEFAULT.chains);
}

#[test]
fn passes_stop_at_the_time_budget() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 5);
    let budget = QueueRules {
        indirect: true,
        budget: PassBudget {
            time: Some(Duration::from_millis(1)),
            ..PassBudget::DEFAULT
        },
    };
    let slow = |chain: Chain<'_>| {
        std::thread::sleep(Duration::from_millis(2));
        walk_all(chain)
    };
    let pass = drain_queue(&mut ring.queue(), &mem, &budget, slow).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Yielded, 1));
}

#[test]
fn refuses_avail_index_beyond_queue_size() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    ring.set_avail_idx(&mem, SIZE + 1);
    let mut calls = 0;
    let err = drain_queue(&mut ring.queue(), &mem, &unbounded(), |c| {
        calls += 1;
        walk_all(c)
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::AvailIndexTooFar {
                pending: 17,
                size: 16
            }
        ),
        "{err}"
    );
    assert_eq!(calls, 0);
}

#[test]
fn head_index_past_queue_is_an_error_not_a_hang() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    ring.publish(&mem, &[200]);
    let err = drain_queue(&mut ring.queue(), &mem, &unbounded(), |_| {
        panic!("must not be handled")
    })
    .unwrap_err();
    assert!(
        matches!(err, QueueError::HeadOutOfRange { head: 200, size: 16 }),
        "{err}"
    );
}

/// A queue the driver made smaller than the device's maximum: indices
/// wrap at its size, and nothing past it is accepted.
#[test]
fn queue_smaller_than_its_maximum() {
    let mem = mem();
    let ring = ring_with_chains(&mem, 8, 0);
    let mut q = ring.queue();
    assert_eq!((q.max_size(), q.size()), (256, 8));
    for round in 0..3u16 {
        ring.publish(&mem, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let pass = drain_queue(&mut q, &mem, &unbounded(), walk_all).unwrap();
        assert_eq!(pass.served, 8);
        assert_eq!(ring.used_idx(&mem), 8 * (round + 1));
    }
    assert_eq!(ring.used(&mem, 23), (7, 1));
    // A next index of 8 is past this queue even though 256 would fit.
    ring.set_desc_table(&mem, 0, &[raw(DATA, 1, NEXT, 8)]);
    ring.publish(&mem, &[0]);
    let mut fault = None;
    drain_queue(&mut q, &mem, &unbounded(), |mut chain| {
        chain.by_ref().for_each(drop);
        fault = chain.fault();
        Served::default()
    })
    .unwrap();
    assert_eq!(fault, Some(ChainFault::IndexOutOfRange { index: 8, len: 8 }));
    ring.publish(&mem, &[8]);
    assert!(matches!(
        drain_queue(&mut q, &mem, &unbounded(), walk_all),
        Err(QueueError::HeadOutOfRange { head: 8, size: 8 })
    ));
    ring.set_avail_idx(&mem, ring.avail_idx(&mem).wrapping_add(9));
    assert!(matches!(
        drain_queue(&mut q, &mem, &unbounded(), walk_all),
        Err(QueueError::AvailIndexTooFar { pending: 9, size: 8 })
    ));
}

#[test]
fn indices_across_the_u16_wrap() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 0);
    let mut q = ring.queue_from(&mem, 65_530);
    ring.publish(&mem, &(0..12).collect::<Vec<_>>());
    assert_eq!(ring.avail_idx(&mem), 6);
    let pass = drain_queue(&mut q, &mem, &unbounded(), walk_all).unwrap();
    assert_eq!((pass.end, pass.served), (PassEnd::Drained, 12));
    assert_eq!(ring.used_idx(&mem), 6);
    assert_eq!(ring.used_heads(&mem, 65_530), (0..12).collect::<Vec<_>>());
    assert_eq!((q.next_avail(), q.next_used()), (6, 6));
}

/// `used_event` (VIRTIO_F_RING_EVENT_IDX): notify only when the used index
/// passes it during this pass, whether it is ahead, behind or across the
/// wrap from where the pass started.
#[test]
fn event_idx_used_event_ahead_behind_and_wrapping() {
    let mem = mem();
    // (start, chains served, used_event, notify?)
    let cases = [
        (0, 2, 5, false),          // ahead
        (0, 6, 5, true),           // passed during the pass
        (10, 3, 10, true),         // right at the start
        (10, 3, 9, false),         // behind: notified before
        (10, 3, 13, false),        // one past the end
        (65_534, 4, 65_535, true), // before the wrap
        (65_534, 4, 1, true),      // after the wrap
        (65_534, 4, 2, false),     // ahead after the wrap
        (65_534, 4, 65_533, false),
    ];
    for (start, n, used_event, notify) in cases {
        let ring = ring_with_chains(&mem, SIZE, 0);
        let mut q = ring.queue_from(&mem, start);
        q.set_event_idx(true);
        ring.set_used_event(&mem, used_event);
        ring.publish(&mem, &(0..n).collect::<Vec<_>>());
        let pass = drain_queue(&mut q, &mem, &unbounded(), walk_all).unwrap();
        assert_eq!(pass.served, u32::from(n));
        assert_eq!(
            pass.notify, notify,
            "start {start}, {n} served, used_event {used_event}"
        );
        // The device asks to be kicked at the next buffer published.
        let avail_event: u16 = mem
            .read_obj(GuestAddress(ring.used + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        assert_eq!(avail_event, start.wrapping_add(n));
    }
}

/// Rings laid over one another: whatever the device reads is garbage,
/// but a pass ends, stays within its budget and never panics.
#[test]
fn overlapping_rings_end_in_bounded_passes() {
    let mem = mem();
    let size = 16u64;
    let layouts = [
        // used ring on the available ring: completing moves the avail index
        (RING, RING + 0x400, RING + 0x400),
        // available ring inside the descriptor table
        (RING, RING + 0x20, RING + 0x800),
        // everything at one place
        (RING, RING, RING),
        // used ring inside the descriptor table
        (RING, RING + 0x400, RING + 0x10),
    ];
    for (desc, avail, used) in layouts {
        let ring = DriverRing::with_layout(&mem, size as u16, desc, avail, used);
        ring.publish(&mem, &[0, 1, 2, 3]);
        for i in 0..size {
            // Where they still hold, plausible chains.
            let at = desc + 16 * i;
            if at + 16 <= avail || at >= avail + 6 + 2 * size {
                write_table(&mem, at, &link(&[r(DATA, 16), w(DATA + 16, 1)], i as u16));
            }
        }
        let mut q = ring.queue();
        let budget = rules(PassBudget::DEFAULT);
        for _ in 0..4 {
            match drain_queue(&mut q, &mem, &budget, walk_all) {
                Ok(pass) => assert!(pass.served <= budget.budget.chains),
                Err(_) => break,
            }
        }
    }
}

/// The walked count seen by the device's handler includes indirect reads;
/// a pass hands each chain over with the negotiated indirect rule.
#[test]
fn indirect_rule_follows_negotiation() {
    let mem = mem();
    let ring = DriverRing::at(&mem, RING, SIZE);
    write_table(&mem, DATA, &link(&[r(DATA + 0x100, 16), w(DATA + 0x200, 1)], 0));
    ring.set_desc_table(&mem, 0, &link(&[indirect(DATA, 2)], 0));
    let faults = RefCell::new(Vec::new());
    for negotiated in [true, false] {
        let rules = QueueRules::negotiated(if negotiated {
            1 << VIRTIO_F_INDIRECT_DESC
        } else {
            0
        });
        let mut q: Queue = ring.queue_from(&mem, 0);
        ring.publish(&mem, &[0]);
        drain_queue(&mut q, &mem, &rules, |mut chain| {
            chain.by_ref().for_each(drop);
            faults.borrow_mut().push(chain.fault());
            Served::default()
        })
        .unwrap();
    }
    assert_eq!(
        faults.into_inner(),
        [None, Some(ChainFault::IndirectNotNegotiated)]
    );
}

/// The driver moves its index too far while a round is being served: the
/// round finishes what its one read announced, the next read finds the
/// lie. (virtio-queue's own pop read the index again for every chain and
/// logged an error of its own when it had moved too far.)
#[test]
fn avail_index_raised_too_far_mid_round_is_caught_at_the_next_read() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 3);
    let mut q = ring.queue();
    let mut served = 0;
    let err = drain_queue(&mut q, &mem, &unbounded(), |chain| {
        served += 1;
        ring.set_avail_idx(&mem, 3 + SIZE + 1);
        walk_all(chain)
    })
    .unwrap_err();
    assert_eq!(served, 3);
    assert_eq!(ring.used_idx(&mem), 3);
    assert!(
        matches!(
            err,
            QueueError::AvailIndexTooFar {
                pending: 17,
                size: 16
            }
        ),
        "{err}"
    );
}

/// A device whose backend is full turns a chain down: it stays available,
/// untouched, the pass ends with notifications still off (the device
/// resumes on its own), and the next pass starts with it.
#[test]
fn a_chain_the_device_cannot_take_stays_on_the_ring() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 3);
    let mut q = ring.queue();
    let mut offered = Vec::new();
    let result = drain_queue_or_wait(&mut q, &mem, &unbounded(), |chain| {
        offered.push(chain.head_index());
        if offered.len() == 2 {
            Take::Wait
        } else {
            Take::Done(walk_all(chain))
        }
    })
    .unwrap();
    assert_eq!(
        result,
        WaitingPass {
            pass: Pass {
                end: PassEnd::Drained,
                notify: true,
                served: 1
            },
            waiting: true
        }
    );
    assert_eq!(offered, [0, 1]);
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(ring.used_flags(&mem), NO_NOTIFY, "the driver need not notify");

    let mut heads = Vec::new();
    let result = drain_queue_or_wait(&mut q, &mem, &unbounded(), |chain| {
        heads.push(chain.head_index());
        Take::Done(walk_all(chain))
    })
    .unwrap();
    assert!(!result.waiting);
    assert_eq!(result.pass.end, PassEnd::Drained);
    assert_eq!(heads, [1, 2]);
    assert_eq!(ring.used_heads(&mem, 0), [0, 1, 2]);
    assert_eq!(ring.used_flags(&mem), 0, "notifications back on");
}

/// Taking chains one at a time (net receive) sees only what the driver
/// published, and refuses an index moved past the queue size.
#[test]
fn take_available_hands_out_published_heads_only() {
    let mem = mem();
    let ring = ring_with_chains(&mem, SIZE, 2);
    let mut q = ring.queue();
    assert_eq!(take_available(&mut q, &mem).unwrap(), Some(0));
    assert_eq!(take_available(&mut q, &mem).unwrap(), Some(1));
    assert_eq!(take_available(&mut q, &mem).unwrap(), None);
    assert_eq!(q.next_avail(), 2);
    let walked = Cell::new(0);
    assert_eq!(chain_at(&q, &mem, &walked, &unbounded(), 1).count(), 1);
    assert_eq!(walked.get(), 1);
    ring.set_avail_idx(&mem, 2 + SIZE + 1);
    let err = take_available(&mut q, &mem).unwrap_err();
    assert!(matches!(err, QueueError::AvailIndexTooFar { .. }), "{err}");
}
