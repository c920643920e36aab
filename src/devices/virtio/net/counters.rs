//! Per-NIC counters: frames and bytes each way, and every dropped frame
//! with the reason it was dropped.
//!
//! The device updates them from its own thread; anyone holding the `Arc`
//! can read a [`NetCountersSnapshot`] at any time without stopping it.
//! Each counter is exact, but a snapshot is not one instant: counters
//! updated while it is taken may be read before or after the update.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a frame was dropped. `Tx` is guest to host, `Rx` host to guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Over the negotiated size (the MTU) or [`super::MAX_FRAME_LEN`].
    TxTooLarge,
    /// Shorter than an Ethernet header.
    TxTooShort,
    /// A malformed virtio-net header (see [`super::HeaderError`]).
    TxBadHeader,
    /// Segmentation of a kind the driver did not negotiate.
    TxGsoNotNegotiated,
    /// A partial checksum without `VIRTIO_NET_F_CSUM` negotiated.
    TxCsumNotNegotiated,
    /// A descriptor chain that cannot be read: device-writable, outside
    /// guest memory, broken or too long.
    TxBadChain,
    /// The backend refused the frame (the tap is down, for example).
    TxBackend,
    /// A frame arrived and the guest had posted no buffer for it.
    RxNoBuffer,
    /// The guest posted a receive chain with device-readable descriptors.
    RxChainNotWritable,
    /// The frame did not fit in the guest's receive chain.
    RxChainTooSmall,
    /// A receive chain that cannot be used: outside guest memory, broken or
    /// too long.
    RxBadChain,
    /// Reading from the backend failed.
    RxBackend,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 12] = [
        Self::TxTooLarge,
        Self::TxTooShort,
        Self::TxBadHeader,
        Self::TxGsoNotNegotiated,
        Self::TxCsumNotNegotiated,
        Self::TxBadChain,
        Self::TxBackend,
        Self::RxNoBuffer,
        Self::RxChainNotWritable,
        Self::RxChainTooSmall,
        Self::RxBadChain,
        Self::RxBackend,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// A stable name for reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TxTooLarge => "tx_too_large",
            Self::TxTooShort => "tx_too_short",
            Self::TxBadHeader => "tx_bad_header",
            Self::TxGsoNotNegotiated => "tx_gso_not_negotiated",
            Self::TxCsumNotNegotiated => "tx_csum_not_negotiated",
            Self::TxBadChain => "tx_bad_chain",
            Self::TxBackend => "tx_backend",
            Self::RxNoBuffer => "rx_no_buffer",
            Self::RxChainNotWritable => "rx_chain_not_writable",
            Self::RxChainTooSmall => "rx_chain_too_small",
            Self::RxBadChain => "rx_bad_chain",
            Self::RxBackend => "rx_backend",
        }
    }

    /// Whether the frame was going from the guest to the host.
    pub fn is_tx(self) -> bool {
        matches!(
            self,
            Self::TxTooLarge
                | Self::TxTooShort
                | Self::TxBadHeader
                | Self::TxGsoNotNegotiated
                | Self::TxCsumNotNegotiated
                | Self::TxBadChain
                | Self::TxBackend
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Live counters of one NIC. Bytes count Ethernet frames, without the
/// virtio-net header.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    rx_throttled: AtomicU64,
    tx_throttled: AtomicU64,
}

impl NetCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// A frame of `bytes` reached the guest.
    pub fn record_rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A frame of `bytes` left for the host.
    pub fn record_tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A rate limit stopped receiving (`rx`) or transmitting for a while.
    pub fn record_throttle(&self, rx: bool) {
        let counter = if rx {
            &self.rx_throttled
        } else {
            &self.tx_throttled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NetCountersSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NetCountersSnapshot {
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
            drops: self.drops.each_ref().map(load),
            rx_throttled: load(&self.rx_throttled),
            tx_throttled: load(&self.tx_throttled),
        }
    }
}

/// The counters at one point (see the module notes on consistency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    drops: [u64; DropReason::COUNT],
    /// Times a rate limit stopped receiving / transmitting.
    pub rx_throttled: u64,
    pub tx_throttled: u64,
}

impl NetCountersSnapshot {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn tx_drops(&self) -> u64 {
        self.sum_drops(|r| r.is_tx())
    }

    pub fn rx_drops(&self) -> u64 {
        self.sum_drops(|r| !r.is_tx())
    }

    /// Every non-zero drop counter, by reason.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.drops(r)))
            .filter(|&(_, n)| n > 0)
    }

    fn sum_drops(&self, which: impl Fn(DropReason) -> bool) -> u64 {
        DropReason::ALL
            .into_iter()
            .filter(|&r| which(r))
            .map(|r| self.drops(r))
            .fold(0, u64::wrapping_add)
    }
}

/// One line: `rx P packets B bytes, tx P packets B bytes, drops: none` or
/// `drops: reason=N reason=N`.
impl std::fmt::Display for NetCountersSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rx {} packets {} bytes, tx {} packets {} bytes, drops:",
            self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes
        )?;
        let mut any = false;
        for (reason, count) in self.nonzero_drops() {
            write!(f, " {}={count}", reason.as_str())?;
            any = true;
        }
        if !any {
            write!(f, " none")?;
        }
        if self.rx_throttled > 0 || self.tx_throttled > 0 {
            write!(
                f,
                ", throttled: rx {} tx {}",
                self.rx_throttled, self.tx_throttled
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn reasons_map_one_to_one_onto_counters() {
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?} is out of order in ALL");
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for reason in DropReason::ALL {
            assert_eq!(reason.is_tx(), reason.as_str().starts_with("tx_"), "{reason:?}");
        }
    }

    #[test]
    fn counters_add_up_and_snapshots_are_copies() {
        let counters = NetCounters::new();
        counters.record_tx(60);
        counters.record_tx(1514);
        counters.record_rx(42);
        counters.record_drop(DropReason::TxBadHeader);
        counters.record_drop(DropReason::TxBadHeader);
        counters.record_drop(DropReason::RxChainTooSmall);
        let before = counters.snapshot();
        assert_eq!((before.tx_packets, before.tx_bytes), (2, 1574));
        assert_eq!((before.rx_packets, before.rx_bytes), (1, 42));
        assert_eq!(before.drops(DropReason::TxBadHeader), 2);
        assert_eq!(before.drops(DropReason::RxChainTooSmall), 1);
        assert_eq!(before.drops(DropReason::TxTooLarge), 0);
        assert_eq!((before.tx_drops(), before.rx_drops()), (2, 1));
        assert_eq!(
            before.nonzero_drops().collect::<Vec<_>>(),
            [(DropReason::TxBadHeader, 2), (DropReason::RxChainTooSmall, 1)]
        );

        counters.record_drop(DropReason::RxNoBuffer);
        assert_eq!(before.drops(DropReason::RxNoBuffer), 0);
        assert_eq!(counters.snapshot().drops(DropReason::RxNoBuffer), 1);
        assert_eq!(NetCounters::new().snapshot(), NetCountersSnapshot::default());
    }

    #[test]
    fn a_snapshot_prints_on_one_line() {
        let counters = NetCounters::new();
        assert_eq!(
            counters.snapshot().to_string(),
            "rx 0 packets 0 bytes, tx 0 packets 0 bytes, drops: none"
        );
        counters.record_rx(60);
        counters.record_tx(1514);
        counters.record_drop(DropReason::TxBadHeader);
        counters.record_drop(DropReason::RxNoBuffer);
        counters.record_drop(DropReason::RxNoBuffer);
        assert_eq!(
            counters.snapshot().to_string(),
            "rx 1 packets 60 bytes, tx 1 packets 1514 bytes, drops: tx_bad_header=1 rx_no_buffer=2"
        );
        counters.record_throttle(false);
        assert_eq!(
            counters.snapshot().to_string(),
            "rx 1 packets 60 bytes, tx 1 packets 1514 bytes, drops: tx_bad_header=1 rx_no_buffer=2, \
             throttled: rx 0 tx 1"
        );
    }

    #[test]
    fn counters_are_readable_while_another_thread_counts() {
        let counters = Arc::new(NetCounters::new());
        let writer = {
            let counters = counters.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    counters.record_tx(100);
                    counters.record_drop(DropReason::TxBackend);
                }
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let now = counters.snapshot().tx_packets;
            assert!(now >= last, "a counter went backwards");
            last = now;
        }
        writer.join().unwrap();
        let done = counters.snapshot();
        assert_eq!((done.tx_packets, done.tx_bytes), (10_000, 1_000_000));
        assert_eq!(done.drops(DropReason::TxBackend), 10_000);
    }
}
