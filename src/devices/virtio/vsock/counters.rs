//! Per-device counters: packets and payload bytes each way, connections,
//! and every packet or connection refused, with why. Readable from any
//! thread while the device runs (as `net/counters.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was refused or a connection reset. `Tx` is from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VsockFault {
    /// A TX chain that does not hold a packet (broken, writable, short).
    TxBadChain,
    /// `len` beyond the chain or above 64 KiB.
    TxBadLen,
    /// `src_cid` is not the guest's CID.
    TxWrongSrcCid,
    /// `dst_cid` is not the host.
    TxWrongDstCid,
    /// A socket type other than STREAM.
    TxBadType,
    /// An operation code that does not exist.
    TxBadOp,
    /// A packet for no connection we know.
    TxUnknownConnection,
    /// REQUEST for a connection that exists.
    TxDuplicateRequest,
    /// The guest sent more than the credit we gave it.
    TxCreditLie,
    /// A packet the connection's state does not allow (data after the
    /// guest's own SHUTDOWN SEND, RESPONSE to a live connection).
    TxBadState,
    /// An RX chain that cannot take a packet.
    RxBadChain,
    /// A connection refused because the device holds the most it may.
    ConnectionLimit,
    /// A guest connection to a host port nobody listens on.
    HostConnectFailed,
    /// A host peer whose handshake line was wrong, late or cut short.
    HandshakeFailed,
    /// A guest that did not answer a host connection in time.
    GuestConnectTimeout,
    /// A connection whose closing did not drain in time.
    CloseTimeout,
    /// A host stream that failed (reset, broken pipe).
    HostStreamError,
}

impl VsockFault {
    pub const ALL: [Self; 17] = [
        Self::TxBadChain,
        Self::TxBadLen,
        Self::TxWrongSrcCid,
        Self::TxWrongDstCid,
        Self::TxBadType,
        Self::TxBadOp,
        Self::TxUnknownConnection,
        Self::TxDuplicateRequest,
        Self::TxCreditLie,
        Self::TxBadState,
        Self::RxBadChain,
        Self::ConnectionLimit,
        Self::HostConnectFailed,
        Self::HandshakeFailed,
        Self::GuestConnectTimeout,
        Self::CloseTimeout,
        Self::HostStreamError,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// A stable name for reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TxBadChain => "tx_bad_chain",
            Self::TxBadLen => "tx_bad_len",
            Self::TxWrongSrcCid => "tx_wrong_src_cid",
            Self::TxWrongDstCid => "tx_wrong_dst_cid",
            Self::TxBadType => "tx_bad_type",
            Self::TxBadOp => "tx_bad_op",
            Self::TxUnknownConnection => "tx_unknown_connection",
            Self::TxDuplicateRequest => "tx_duplicate_request",
            Self::TxCreditLie => "tx_credit_lie",
            Self::TxBadState => "tx_bad_state",
            Self::RxBadChain => "rx_bad_chain",
            Self::ConnectionLimit => "connection_limit",
            Self::HostConnectFailed => "host_connect_failed",
            Self::HandshakeFailed => "handshake_failed",
            Self::GuestConnectTimeout => "guest_connect_timeout",
            Self::CloseTimeout => "close_timeout",
            Self::HostStreamError => "host_stream_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The device's counters; share the `Arc` to read them.
#[derive(Debug, Default)]
pub struct VsockCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    connections: AtomicU64,
    faults: [AtomicU64; VsockFault::COUNT],
}

impl VsockCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// A packet with `bytes` of payload went to the guest.
    pub fn record_rx(&self, bytes: u32) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(u64::from(bytes), Ordering::Relaxed);
    }

    /// A packet with `bytes` of payload came from the guest.
    pub fn record_tx(&self, bytes: u32) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(u64::from(bytes), Ordering::Relaxed);
    }

    /// A connection was established.
    pub fn record_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, fault: VsockFault) {
        self.faults[fault.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> VsockCountersSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockCountersSnapshot {
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
            connections: load(&self.connections),
            faults: self.faults.each_ref().map(load),
        }
    }
}

/// The counters at one point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub connections: u64,
    faults: [u64; VsockFault::COUNT],
}

impl VsockCountersSnapshot {
    pub fn faults(&self, fault: VsockFault) -> u64 {
        self.faults[fault.index()]
    }

    /// Every non-zero fault counter.
    pub fn nonzero_faults(&self) -> impl Iterator<Item = (VsockFault, u64)> + '_ {
        VsockFault::ALL
            .into_iter()
            .map(|f| (f, self.faults(f)))
            .filter(|&(_, n)| n > 0)
    }
}

/// One line: `rx P packets B bytes, tx P packets B bytes, C connections,
/// faults: none` or `faults: name=N ...`.
impl std::fmt::Display for VsockCountersSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rx {} packets {} bytes, tx {} packets {} bytes, {} connections, faults:",
            self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes, self.connections
        )?;
        let mut any = false;
        for (fault, count) in self.nonzero_faults() {
            write!(f, " {}={count}", fault.as_str())?;
            any = true;
        }
        if !any {
            write!(f, " none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_faults_map_one_to_one_onto_counters() {
        for (i, fault) in VsockFault::ALL.into_iter().enumerate() {
            assert_eq!(fault.index(), i, "{fault:?} is out of order in ALL");
        }
        let mut names: Vec<_> = VsockFault::ALL.iter().map(|f| f.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VsockFault::COUNT);
        let counters = VsockCounters::new();
        counters.record(VsockFault::TxCreditLie);
        counters.record_rx(10);
        assert_eq!(
            counters.snapshot().to_string(),
            "rx 1 packets 10 bytes, tx 0 packets 0 bytes, 0 connections, faults: tx_credit_lie=1"
        );
    }
}
