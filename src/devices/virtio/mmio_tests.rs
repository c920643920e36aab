use std::sync::Mutex;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::queue::QueueError;
use crate::devices::virtio::INTERRUPT_VRING;

const OFFERED: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_RING_EVENT_IDX | 1 << 3;
const ALL_UP: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

#[derive(Default)]
struct Record {
    activations: Vec<u64>,
    resets: usize,
    /// (queue index, queue size, descriptor table, event idx)
    processed: Vec<(usize, u16, u64, bool)>,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_process: bool,
    /// Passes end with work left.
    yield_pass: bool,
}

struct FakeDevice {
    record: Arc<Mutex<Record>>,
    config: [u8; 8],
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        7
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn device_features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.record
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        self.record.lock().unwrap().activations.push(ctx.acked_features);
        Ok(())
    }
    fn process_queue(&mut self, index: usize, queues: &mut [Queue]) -> Result<PassEnd, QueueError> {
        let queue = &queues[index];
        let mut record = self.record.lock().unwrap();
        record
            .processed
            .push((index, queue.size(), queue.desc_table(), queue.event_idx_enabled()));
        if record.fail_process {
            return Err(QueueError::HeadOutOfRange { head: 9, size: 8 });
        }
        Ok(if record.yield_pass {
            PassEnd::Yielded
        } else {
            PassEnd::Drained
        })
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
}

struct Fixture {
    t: MmioTransport<FakeDevice>,
    record: Arc<Mutex<Record>>,
    irq: Arc<IrqfdInterrupt>,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let record = Arc::new(Mutex::new(Record::default()));
    let device = FakeDevice {
        record: record.clone(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(device, mem, irq.clone()).unwrap();
    Fixture { t, record, irq }
}

impl Fixture {
    fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0xaa; 4];
        self.t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    fn device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read(reg::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns
    /// the status read back, as a driver checks it.
    fn negotiate(&mut self, features: u64) -> u32 {
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, ACKNOWLEDGE);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
        assert_eq!(self.read(reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.read(reg::STATUS)
    }

    fn setup_queue(&mut self, index: u32, size: u32, base: u64) {
        self.write(reg::QUEUE_SEL, index);
        assert_eq!(self.read(reg::QUEUE_READY), 0);
        assert_ne!(self.read(reg::QUEUE_NUM_MAX), 0);
        self.write(reg::QUEUE_NUM, size);
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, base),
            (reg::QUEUE_DRIVER_LOW, base + 0x1000),
            (reg::QUEUE_DEVICE_LOW, base + 0x2000),
        ] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
    }

    /// The Linux virtio_mmio probe sequence.
    fn boot(&mut self) {
        let features = self.device_features() & !(1 << 3);
        assert_eq!(self.negotiate(features), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.setup_queue(0, 16, 0x1000);
        self.setup_queue(1, 8, 0x8000);
        self.write(reg::STATUS, ALL_UP);
        assert_eq!(self.read(reg::STATUS), ALL_UP);
        assert!(self.t.is_active());
    }
}

#[test]
fn identifies_as_virtio_mmio_v2() {
    let mut f = fixture();
    assert_eq!(f.read(reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.read(reg::VERSION), 2);
    assert_eq!(f.read(reg::DEVICE_ID), 7);
    assert_eq!(f.read(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(f.device_features(), OFFERED);
    f.write(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(f.read(reg::DEVICE_FEATURES), 0);
    assert_eq!(f.read(reg::CONFIG_GENERATION), 0);
    assert_eq!(f.read(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(f.read(reg::SHM_BASE_HIGH), u32::MAX);
    assert_eq!(f.read(reg::QUEUE_NUM), 0, "write-only registers read 0");
}

#[test]
fn driver_init_sequence_activates_with_negotiated_queues() {
    let mut f = fixture();
    f.boot();
    let acked = OFFERED & !(1 << 3);
    assert_eq!(f.record.lock().unwrap().activations, [acked]);
    f.write(reg::QUEUE_NOTIFY, 0);
    f.t.notify_queue(1);
    let processed = f.record.lock().unwrap().processed.clone();
    assert_eq!(processed, [(0, 16, 0x1000, true), (1, 8, 0x8000, true)]);
}

#[test]
fn event_idx_follows_negotiation() {
    let mut f = fixture();
    assert_eq!(f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK, FEATURES_OK);
    f.setup_queue(0, 4, 0x1000);
    f.write(reg::STATUS, ALL_UP);
    f.t.notify_queue(0);
    assert_eq!(f.record.lock().unwrap().processed, [(0, 4, 0x1000, false)]);
}

#[test]
fn refuses_features_that_were_not_offered() {
    let mut f = fixture();
    let status = f.negotiate(OFFERED | 1 << 40);
    assert_eq!(status & FEATURES_OK, 0, "FEATURES_OK must not latch");
    // Cannot reach DRIVER_OK without FEATURES_OK.
    f.write(reg::STATUS, ALL_UP);
    assert!(!f.t.is_active());
    assert!(f.record.lock().unwrap().activations.is_empty());
}

#[test]
fn refuses_drivers_without_version_1() {
    let mut f = fixture();
    assert_eq!(f.negotiate(1 << VIRTIO_F_RING_EVENT_IDX) & FEATURES_OK, 0);
}

#[test]
fn refuses_features_in_high_selector_words() {
    let mut f = fixture();
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
    f.write(reg::DRIVER_FEATURES_SEL, 1);
    f.write(reg::DRIVER_FEATURES, 1);
    f.write(reg::DRIVER_FEATURES_SEL, 5);
    f.write(reg::DRIVER_FEATURES, 1);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(f.read(reg::STATUS) & FEATURES_OK, 0);
}

#[test]
fn features_are_frozen_after_features_ok() {
    let mut f = fixture();
    f.negotiate(1 << VIRTIO_F_VERSION_1);
    f.write(reg::DRIVER_FEATURES_SEL, 0);
    f.write(reg::DRIVER_FEATURES, 1 << 3);
    f.setup_queue(0, 16, 0x1000);
    f.write(reg::STATUS, ALL_UP);
    assert_eq!(f.record.lock().unwrap().activations, [1 << VIRTIO_F_VERSION_1]);
}

#[test]
fn status_bits_must_come_in_order() {
    let mut f = fixture();
    f.write(reg::STATUS, DRIVER);
    assert_eq!(f.read(reg::STATUS), 0);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(f.read(reg::STATUS), 0);
    f.write(reg::STATUS, ACKNOWLEDGE);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
    // Clearing a bit without a reset is ignored.
    f.write(reg::STATUS, DRIVER);
    assert_eq!(f.read(reg::STATUS), ACKNOWLEDGE | DRIVER);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(f.read(reg::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
}

#[test]
fn bad_queue_sizes_refuse_activation() {
    for size in [0, 3, 12, 32, 1 << 16, u32::MAX] {
        let mut f = fixture();
        f.negotiate(1 << VIRTIO_F_VERSION_1);
        f.setup_queue(0, size, 0x1000);
        f.write(reg::STATUS, ALL_UP);
        assert!(!f.t.is_active(), "size {size}");
        assert_eq!(f.read(reg::STATUS) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert_eq!(f.irq.status(), INTERRUPT_CONFIG);
        assert!(f.record.lock().unwrap().activations.is_empty());
        // Notifications go nowhere; a reset recovers.
        f.write(reg::QUEUE_NOTIFY, 0);
        assert!(f.record.lock().unwrap().processed.is_empty());
        f.write(reg::STATUS, 0);
        assert_eq!(f.read(reg::STATUS), 0);
        f.boot();
    }
}

#[test]
fn misplaced_rings_refuse_activation() {
    // Misaligned descriptor table; used ring outside guest memory; avail at 0.
    let cases: [(u64, u64, u64); 3] = [
        (0x1008, 0x2000, 0x3000),
        (0x1000, 0x2000, 0xfff0),
        (0x1000, 0, 0x3000),
    ];
    for (desc, avail, used) in cases {
        let mut f = fixture();
        f.negotiate(1 << VIRTIO_F_VERSION_1);
        f.write(reg::QUEUE_SEL, 0);
        f.write(reg::QUEUE_NUM, 16);
        f.write(reg::QUEUE_DESC_LOW, desc as u32);
        f.write(reg::QUEUE_DRIVER_LOW, avail as u32);
        f.write(reg::QUEUE_DEVICE_LOW, used as u32);
        f.write(reg::QUEUE_READY, 1);
        f.write(reg::STATUS, ALL_UP);
        assert!(!f.t.is_active(), "{desc:#x} {avail:#x} {used:#x}");
        assert_ne!(f.read(reg::STATUS) & DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn queue_layout_is_frozen_once_ready_or_running() {
    let mut f = fixture();
    f.negotiate(1 << VIRTIO_F_VERSION_1);
    f.setup_queue(0, 8, 0x1000);
    // Ready: size and addresses no longer change.
    f.write(reg::QUEUE_NUM, 3);
    f.write(reg::QUEUE_DESC_LOW, 0x9999);
    f.write(reg::STATUS, ALL_UP);
    assert!(f.t.is_active());
    f.t.notify_queue(0);
    assert_eq!(f.record.lock().unwrap().processed, [(0, 8, 0x1000, false)]);
    // After DRIVER_OK a queue that was never enabled cannot be set up.
    f.write(reg::QUEUE_SEL, 1);
    f.write(reg::QUEUE_NUM, 4);
    f.write(reg::QUEUE_READY, 1);
    assert_eq!(f.read(reg::QUEUE_READY), 0);
    f.t.notify_queue(1);
    assert_eq!(f.record.lock().unwrap().processed.len(), 1);
}

/// A pass that yields, even one started by a trapped QueueNotify write on
/// a vCPU thread, leaves the queue's notifier signalled so that the event
/// loop runs the next pass; one that drains does not.
#[test]
fn a_yielded_pass_signals_the_queue_notifier() {
    let mut f = fixture();
    f.boot();
    f.record.lock().unwrap().yield_pass = true;
    f.write(reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.t.queue_notifiers()[1].read().unwrap(), 1);
    assert!(f.t.queue_notifiers()[0].read().is_err(), "nothing for queue 0");
    f.record.lock().unwrap().yield_pass = false;
    f.t.notify_queue(1);
    assert!(f.t.queue_notifiers()[1].read().is_err(), "drained: no rearm");
    assert_eq!(f.record.lock().unwrap().processed.len(), 2);
}

#[test]
fn disabling_a_running_queue_stops_processing() {
    let mut f = fixture();
    f.boot();
    f.write(reg::QUEUE_SEL, 0);
    f.write(reg::QUEUE_READY, 0);
    assert_eq!(f.read(reg::QUEUE_READY), 0);
    f.write(reg::QUEUE_NOTIFY, 0);
    assert!(f.record.lock().unwrap().processed.is_empty());
}

#[test]
fn out_of_range_queue_indices_are_ignored() {
    let mut f = fixture();
    f.negotiate(1 << VIRTIO_F_VERSION_1);
    f.write(reg::QUEUE_SEL, 2);
    assert_eq!(f.read(reg::QUEUE_NUM_MAX), 0, "queue not available");
    assert_eq!(f.read(reg::QUEUE_READY), 0);
    f.write(reg::QUEUE_NUM, 4);
    f.write(reg::QUEUE_READY, 1);
    f.write(reg::QUEUE_SEL, u32::MAX);
    f.write(reg::QUEUE_DESC_LOW, 0x1000);
    f.setup_queue(0, 16, 0x1000);
    f.write(reg::STATUS, ALL_UP);
    assert!(f.t.is_active());
    for index in [2, 0xffff, u32::MAX] {
        f.write(reg::QUEUE_NOTIFY, index);
    }
    assert!(f.record.lock().unwrap().processed.is_empty());
}

#[test]
fn notifications_before_driver_ok_are_ignored() {
    let mut f = fixture();
    f.negotiate(1 << VIRTIO_F_VERSION_1);
    f.setup_queue(0, 16, 0x1000);
    f.write(reg::QUEUE_NOTIFY, 0);
    f.t.notify_queue(0);
    assert!(f.record.lock().unwrap().processed.is_empty());
}

#[test]
fn reset_returns_everything_to_power_on_state() {
    let mut f = fixture();
    f.boot();
    f.irq.trigger(INTERRUPT_VRING).unwrap();
    f.write(reg::STATUS, 0);
    assert_eq!(f.read(reg::STATUS), 0);
    assert_eq!(f.read(reg::INTERRUPT_STATUS), 0);
    assert_eq!(f.record.lock().unwrap().resets, 1);
    assert!(!f.t.is_active());
    for queue in 0..2 {
        f.write(reg::QUEUE_SEL, queue);
        assert_eq!(f.read(reg::QUEUE_READY), 0);
    }
    f.write(reg::QUEUE_NOTIFY, 0);
    assert!(f.record.lock().unwrap().processed.is_empty());
    // And the driver can start over, e.g. after kexec.
    f.boot();
    assert_eq!(f.record.lock().unwrap().activations.len(), 2);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.boot();
    f.irq.trigger(INTERRUPT_VRING).unwrap();
    f.irq.trigger(INTERRUPT_CONFIG).unwrap();
    assert_eq!(f.read(reg::INTERRUPT_STATUS), 3);
    f.write(reg::INTERRUPT_ACK, INTERRUPT_VRING);
    assert_eq!(f.read(reg::INTERRUPT_STATUS), INTERRUPT_CONFIG);
    f.write(reg::INTERRUPT_ACK, u32::MAX);
    assert_eq!(f.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn queue_failure_marks_device_needing_reset() {
    let mut f = fixture();
    f.boot();
    f.record.lock().unwrap().fail_process = true;
    f.write(reg::QUEUE_NOTIFY, 0);
    assert_ne!(f.read(reg::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(f.read(reg::INTERRUPT_STATUS), INTERRUPT_CONFIG);
    assert_eq!(f.irq.irqfd().read().unwrap(), 1);
    assert!(!f.t.is_active());
    f.write(reg::QUEUE_NOTIFY, 0);
    assert_eq!(f.record.lock().unwrap().processed.len(), 1);
    // Echoing NEEDS_RESET back does not clear it; DRIVER_OK does not restart.
    f.write(reg::STATUS, ALL_UP | DEVICE_NEEDS_RESET);
    assert!(!f.t.is_active());
    f.write(reg::STATUS, 0);
    assert_eq!(f.read(reg::STATUS), 0);
}

#[test]
fn odd_register_accesses_are_ignored() {
    let mut f = fixture();
    let mut byte = [0xaa; 1];
    f.t.read(reg::MAGIC_VALUE, &mut byte);
    assert_eq!(byte, [0]);
    let mut eight = [0xaa; 8];
    f.t.read(reg::MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0; 8]);
    let mut word = [0xaa; 4];
    f.t.read(reg::MAGIC_VALUE + 2, &mut word);
    assert_eq!(word, [0; 4]);
    f.t.read(0x0f0, &mut word);
    assert_eq!(word, [0; 4], "unknown register");

    f.t.write(reg::STATUS, &[ACKNOWLEDGE as u8]);
    f.t.write(reg::STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());
    f.t.write(reg::STATUS + 1, &ACKNOWLEDGE.to_le_bytes());
    f.t.write(reg::MAGIC_VALUE, &0u32.to_le_bytes());
    assert_eq!(f.read(reg::STATUS), 0);
    assert_eq!(f.read(reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
    f.t.write(reg::QUEUE_NOTIFY, &[0, 0]);
    f.t.write(reg::QUEUE_NOTIFY, &[]);
}

#[test]
fn config_space_passes_through_at_any_size() {
    let mut f = fixture();
    let mut one = [0u8; 1];
    f.t.read(CONFIG_SPACE_OFFSET + 3, &mut one);
    assert_eq!(one, [4]);
    let mut eight = [0u8; 8];
    f.t.read(CONFIG_SPACE_OFFSET, &mut eight);
    assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
    let mut two = [0xffu8; 2];
    f.t.read(CONFIG_SPACE_OFFSET + 7, &mut two);
    assert_eq!(two, [8, 0]);
    f.t.read(0xffe, &mut two);
    assert_eq!(two, [0, 0]);
    f.t.write(CONFIG_SPACE_OFFSET + 1, &[9, 9, 9]);
    assert_eq!(f.record.lock().unwrap().config_writes, [(1, vec![9, 9, 9])]);
}

#[test]
fn rejects_devices_with_bad_queue_maximum() {
    struct Odd;
    impl VirtioDevice for Odd {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[100]
        }
        fn device_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: Activation) -> Result<(), VirtioError> {
            Ok(())
        }
        fn process_queue(&mut self, _: usize, _: &mut [Queue]) -> Result<PassEnd, QueueError> {
            Ok(PassEnd::Drained)
        }
        fn reset(&mut self) {}
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let irq = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let err = MmioTransport::new(Odd, mem, irq).err().unwrap();
    assert!(matches!(err, MmioError::BadQueueMax { index: 0, max: 100 }));
}

/// Random register traffic, biased towards real registers and plausible
/// values, interleaved with proper boots: never a panic.
#[test]
fn random_register_traffic_never_panics() {
    let mut f = fixture();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let r = next();
        let offset = match r % 4 {
            0 => r >> 32 & 0xfff,
            _ => (r >> 8) % 0x30 * 4,
        };
        let len = [4, 4, 4, 1, 2, 8, 3][(r >> 40) as usize % 7];
        let value = match (r >> 48) % 4 {
            0 => next(),
            1 => (r >> 52) % 20,
            2 => 0x1000 * ((r >> 52) % 16),
            _ => u64::from(ALL_UP),
        };
        if r >> 60 == 0 {
            let mut data = vec![0; len];
            f.t.read(offset, &mut data);
        } else {
            f.t.write(offset, &value.to_le_bytes()[..len]);
        }
        if round % 1000 == 999 {
            f.boot();
        }
    }
}
