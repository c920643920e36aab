//! The host side of the device contract, through the transport, its
//! handler and a real event loop: a test device watches sockets (one end
//! of a socketpair each; the test holds the other end, as a tap or a vsock
//! peer would) and does what each test scripts on their readiness.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};

use crate::devices::virtio::events::{HostEvents, Watched, HOST_EVENT_BATCH};
use crate::devices::virtio::features::VIRTIO_F_VERSION_1;
use crate::devices::virtio::queue::QueueError;
use crate::devices::virtio::status::{DEVICE_NEEDS_RESET, DRIVER_OK};
use crate::devices::virtio::test_utils::{memory, other_source, wire, DriverRing, Wired};
use crate::devices::virtio::{Activation, PassEnd, VirtioDevice, VirtioError};
use crate::vstate::memory::GuestMemoryMmap;

/// One call of `process_host_event`, as the device saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    token: u64,
    ready: EventSet,
    /// Sizes of the queues the device was handed, and which were ready.
    queues: Vec<(u16, bool)>,
}

/// What the device has while active, for the script to use.
struct Ctx {
    events: Arc<HostEvents>,
    watched: HashMap<u64, Watched<UnixStream>>,
    /// Sockets the script may start watching at run time, by token.
    spare: Vec<(u64, UnixStream)>,
}

impl Ctx {
    /// Reads what is there (non-blocking); returns the byte count.
    fn read_some(&mut self, token: u64, max: usize) -> usize {
        let Some(watched) = self.watched.get_mut(&token) else {
            return 0;
        };
        let mut buf = vec![0; max];
        watched.get_mut().read(&mut buf).unwrap_or(0)
    }
}

type Script = Box<dyn FnMut(&mut Ctx, u64, EventSet) -> Result<PassEnd, QueueError> + Send>;

struct SocketDevice {
    /// Watched at every activation (a clone each time), token = index + 1.
    sockets: Vec<UnixStream>,
    spare: Vec<(u64, UnixStream)>,
    /// Keep the watched sockets over a reset: the transport must clear them.
    forget_on_reset: bool,
    ctx: Option<Ctx>,
    script: Script,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl VirtioDevice for SocketDevice {
    fn device_type(&self) -> u32 {
        99
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn device_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, ctx: Activation) -> Result<(), VirtioError> {
        let mut watched = HashMap::new();
        for (i, socket) in self.sockets.iter().enumerate() {
            let token = i as u64 + 1;
            let clone = socket.try_clone().unwrap();
            let guard = ctx.host_events.watch(clone, token, EventSet::IN).unwrap();
            watched.insert(token, guard);
        }
        self.ctx = Some(Ctx {
            events: ctx.host_events,
            watched,
            spare: std::mem::take(&mut self.spare),
        });
        Ok(())
    }
    /// The guest added buffers: everything paused is watched again.
    fn process_queue(&mut self, _: usize, _: &mut [Queue]) -> Result<PassEnd, QueueError> {
        if let Some(ctx) = &self.ctx {
            for watched in ctx.watched.values() {
                watched.set_interest(EventSet::IN).unwrap();
            }
        }
        Ok(PassEnd::Drained)
    }
    fn process_host_event(
        &mut self,
        token: u64,
        ready: EventSet,
        queues: &mut [Queue],
    ) -> Result<PassEnd, QueueError> {
        self.calls.lock().unwrap().push(Call {
            token,
            ready,
            queues: queues.iter().map(|q| (q.size(), q.ready())).collect(),
        });
        let ctx = self.ctx.as_mut().expect("called while not active");
        (self.script)(ctx, token, ready)
    }
    fn reset(&mut self) {
        if self.forget_on_reset {
            // Leaks the guards: their fds stay open and registered, as a
            // careless device would leave them.
            if let Some(ctx) = self.ctx.take() {
                std::mem::forget(ctx.watched);
            }
        } else {
            self.ctx = None;
        }
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    wired: Wired<SocketDevice>,
    /// The far ends of the device's sockets, by token - 1.
    peers: Vec<UnixStream>,
    /// The far ends of the spare sockets, by token.
    spare_peers: HashMap<u64, UnixStream>,
    calls: Arc<Mutex<Vec<Call>>>,
}

fn pair() -> (UnixStream, UnixStream) {
    let (device_end, peer) = UnixStream::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    (device_end, peer)
}

/// A device watching `sockets` sockets, with `spares` more (tokens 100,
/// 101, ...) it may add at run time.
fn rig(sockets: usize, spares: usize, script: Script) -> Rig {
    let mem = memory(&[(0, 0x10_0000)]);
    let (ends, peers): (Vec<_>, Vec<_>) = (0..sockets).map(|_| pair()).unzip();
    let mut spare = Vec::new();
    let mut spare_peers = HashMap::new();
    for i in 0..spares {
        let (end, peer) = pair();
        spare.push((100 + i as u64, end));
        spare_peers.insert(100 + i as u64, peer);
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let device = SocketDevice {
        sockets: ends,
        spare,
        forget_on_reset: false,
        ctx: None,
        script,
        calls: calls.clone(),
    };
    Rig {
        wired: wire(device, &mem),
        mem,
        peers,
        spare_peers,
        calls,
    }
}

/// Reads what is ready and is done.
fn read_all() -> Script {
    Box::new(|ctx, token, _| {
        ctx.read_some(token, 4096);
        Ok(PassEnd::Drained)
    })
}

impl Rig {
    fn start(&self) {
        let rings = [
            DriverRing::at(&self.mem, 0x1000, 16),
            DriverRing::at(&self.mem, 0x4000, 8),
        ];
        self.wired.start(1 << VIRTIO_F_VERSION_1, &rings);
    }

    fn send(&self, token: u64, bytes: &[u8]) {
        (&self.peers[token as usize - 1]).write_all(bytes).unwrap();
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn tokens(&self) -> Vec<u64> {
        self.calls().iter().map(|c| c.token).collect()
    }

    fn watched(&self) -> usize {
        self.wired.transport.lock().unwrap().host_events().len()
    }

    /// Runs the loop until a round serves nothing; returns the events
    /// served per round (the last, empty round left out).
    fn settle(&mut self) -> Vec<usize> {
        let mut rounds = Vec::new();
        loop {
            match self.wired.run() {
                0 => return rounds,
                n => rounds.push(n),
            }
            assert!(rounds.len() < 100, "never settles: {rounds:?}");
        }
    }
}

#[test]
fn host_fd_readiness_calls_the_device_with_its_queues() {
    let mut rig = rig(1, 0, read_all());
    // Not watched before DRIVER_OK.
    rig.send(1, b"early");
    assert_eq!(rig.wired.run(), 0);
    rig.start();
    assert_eq!(rig.settle(), [1]);
    assert_eq!(
        rig.calls(),
        [Call {
            token: 1,
            ready: EventSet::IN,
            queues: vec![(16, true), (8, true)],
        }]
    );
    rig.send(1, b"more");
    assert_eq!(rig.settle(), [1]);
    assert_eq!(rig.tokens(), [1, 1]);
}

/// From inside a host event the device starts watching another socket and
/// stops watching the one it was called for.
#[test]
fn the_device_adds_and_removes_fds_at_run_time() {
    let mut rig = rig(
        1,
        1,
        Box::new(|ctx, token, _| {
            ctx.read_some(token, 4096);
            if token == 1 {
                let (spare_token, socket) = ctx.spare.pop().unwrap();
                let guard = ctx.events.watch(socket, spare_token, EventSet::IN).unwrap();
                ctx.watched.insert(spare_token, guard);
                ctx.watched.remove(&1);
            }
            Ok(PassEnd::Drained)
        }),
    );
    rig.start();
    rig.send(1, b"switch");
    assert_eq!(rig.settle(), [1]);
    assert_eq!(rig.watched(), 1);
    // The removed socket is not served any more; the added one is.
    rig.send(1, b"ignored");
    (&rig.spare_peers[&100]).write_all(b"hello").unwrap();
    rig.settle();
    assert_eq!(rig.tokens(), [1, 100]);
}

/// A device with nothing to put the data in (no guest buffers) takes away
/// the interest: the data stays in the socket and the loop goes idle
/// instead of spinning. When the guest adds buffers (a queue
/// notification) it watches again and is called at once.
#[test]
fn an_fd_without_interest_is_not_served_until_rearmed() {
    let mut rig = rig(
        1,
        0,
        Box::new(|ctx, token, _| {
            ctx.watched[&token].set_interest(EventSet::empty()).unwrap();
            Ok(PassEnd::Drained)
        }),
    );
    rig.start();
    rig.send(1, b"waiting");
    assert_eq!(rig.settle(), [1]);
    for _ in 0..3 {
        assert_eq!(rig.wired.run(), 0);
    }
    assert_eq!(rig.tokens(), [1]);
    rig.wired.kicks[0].write(1).unwrap();
    assert_eq!(rig.settle(), [1, 1], "the queue kick, then the socket");
    assert_eq!(rig.tokens(), [1, 1]);
}

/// The peer goes away: the device hears of it once (a level-triggered
/// hang-up would be reported forever, whatever the interest), and the fd
/// is no longer watched even though this device keeps its guard; dropping
/// the guard later is harmless.
#[test]
fn a_hang_up_is_delivered_once() {
    let mut rig = rig(1, 0, read_all());
    rig.start();
    rig.send(1, b"last words");
    drop(rig.peers.remove(0));
    assert_eq!(rig.settle(), [1]);
    let calls = rig.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].ready.contains(EventSet::HANG_UP), "{:?}", calls[0].ready);
    assert_eq!(rig.watched(), 0);
    for _ in 0..3 {
        assert_eq!(rig.wired.run(), 0);
    }
    rig.wired.reset();
    assert_eq!(rig.calls().len(), 1);
}

/// The device may answer a hang-up by dropping the fd itself.
#[test]
fn a_device_may_drop_a_hung_up_fd_itself() {
    let mut rig = rig(
        2,
        0,
        Box::new(|ctx, token, ready| {
            ctx.read_some(token, 4096);
            if ready.contains(EventSet::HANG_UP) {
                ctx.watched.remove(&token);
            }
            Ok(PassEnd::Drained)
        }),
    );
    rig.start();
    drop(rig.peers.remove(0));
    assert_eq!(rig.settle(), [1]);
    assert_eq!(rig.watched(), 1, "the other socket is still watched");
    rig.peers[0].write_all(b"x").unwrap();
    rig.settle();
    assert_eq!(rig.tokens(), [1, 2]);
}

/// A reset removes every host fd, even from a device that leaves its own
/// registrations behind; after the next DRIVER_OK the device watches
/// again and is served again.
#[test]
fn reset_removes_every_host_fd_and_reactivation_watches_again() {
    for forget_on_reset in [false, true] {
        let mut rig = rig(2, 0, read_all());
        rig.wired.transport.lock().unwrap().device_mut().forget_on_reset = forget_on_reset;
        rig.start();
        assert_eq!(rig.watched(), 2);
        rig.wired.reset();
        assert_eq!(rig.watched(), 0, "forget_on_reset={forget_on_reset}");
        rig.send(1, b"x");
        rig.send(2, b"y");
        assert_eq!(rig.wired.run(), 0);
        assert!(rig.calls().is_empty());

        rig.start();
        assert_eq!(rig.watched(), 2);
        assert_eq!(rig.settle(), [1]);
        let mut tokens = rig.tokens();
        tokens.sort();
        assert_eq!(tokens, [1, 2]);
    }
}

/// The device takes one byte per call and yields: the socket stays ready,
/// and it is served again only after the other ready source, once per
/// round of the event loop, until it is empty.
#[test]
fn a_yielded_host_event_is_served_again_after_other_ready_events() {
    let mut rig = rig(
        1,
        0,
        Box::new(|ctx, token, _| {
            ctx.read_some(token, 1);
            Ok(PassEnd::Yielded)
        }),
    );
    let (other, other_served) = other_source(&mut rig.wired.event_loop);
    rig.start();
    rig.send(1, b"12345");
    other.write(1).unwrap();
    assert_eq!(rig.wired.run(), 2, "the socket and the other source");
    assert_eq!((rig.calls().len(), other_served.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(rig.settle(), [1, 1, 1, 1]);
    assert_eq!(rig.calls().len(), 5);
}

/// Many ready sockets: one round serves a bounded batch, the next round
/// the rest.
#[test]
fn one_round_serves_a_bounded_batch() {
    let sockets = HOST_EVENT_BATCH + 8;
    let mut rig = rig(sockets, 0, read_all());
    rig.start();
    for token in 1..=sockets as u64 {
        rig.send(token, b"x");
    }
    assert_eq!(rig.wired.run(), 1);
    assert_eq!(rig.calls().len(), HOST_EVENT_BATCH);
    assert_eq!(rig.settle(), [1]);
    let mut tokens = rig.tokens();
    tokens.sort();
    assert_eq!(tokens, (1..=sockets as u64).collect::<Vec<_>>());
}

/// A device that fails on a host event (a broken ring, say) needs a reset:
/// the driver is told, and nothing is watched any more.
#[test]
fn a_failing_host_event_needs_a_reset() {
    let mut rig = rig(
        2,
        0,
        Box::new(|_, _, _| Err(QueueError::HeadOutOfRange { head: 9, size: 8 })),
    );
    rig.start();
    rig.send(1, b"x");
    rig.send(2, b"y");
    assert_eq!(rig.settle(), [1]);
    assert_eq!(rig.calls().len(), 1, "the rest of the batch is dropped");
    assert_eq!(rig.wired.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert_eq!(rig.watched(), 0);
    // The driver resets and starts again.
    rig.wired.reset();
    rig.start();
    assert_eq!(rig.wired.status() & (DEVICE_NEEDS_RESET | DRIVER_OK), DRIVER_OK);
    assert_eq!(rig.watched(), 2);
}
