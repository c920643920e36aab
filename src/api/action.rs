//! What the API thread hands the VMM thread: one typed action per
//! request (Firecracker's `VmmAction`), and the channel it goes through.
//!
//! The VMM thread owns the VM; the API thread never touches it. A request
//! becomes a [`VmmAction`], travels with a one-shot reply channel, and the
//! VMM thread answers when its event loop gets to it (an eventfd wakes the
//! loop). Before the VM exists the main thread answers the same way.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::http::Response;
use super::model::{
    BootSource, Drive, Logger, MachineConfig, MachineConfigUpdate, Metrics, NetworkInterface, PartialDrive,
    PartialNetworkInterface, Vsock,
};

/// How long the API thread waits for the VMM's answer. The VMM answers
/// between two event-loop passes; only a VM being built or a pause that
/// waits for its vCPUs takes more than microseconds.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    GetInstanceInfo,
    GetMachineConfig,
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(PartialDrive),
    PutNet(NetworkInterface),
    PatchNet(PartialNetworkInterface),
    PutVsock(Vsock),
    PutLogger(Logger),
    PutMetrics(Metrics),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
}

/// One action and where its answer goes.
pub struct ApiRequest {
    pub action: VmmAction,
    pub reply: SyncSender<Response>,
}

impl ApiRequest {
    /// Answers; the API thread may have given up waiting, which is fine.
    pub fn answer(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// The API thread's end.
pub struct ApiSender {
    tx: Sender<ApiRequest>,
    wake: EventFd,
}

/// The VMM thread's end: `wake` is readable when requests wait.
pub struct ApiInbox {
    rx: Receiver<ApiRequest>,
    pub wake: EventFd,
}

/// A connected pair.
pub fn channel() -> std::io::Result<(ApiSender, ApiInbox)> {
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        ApiSender {
            tx,
            wake: wake.try_clone()?,
        },
        ApiInbox { rx, wake },
    ))
}

impl ApiSender {
    /// Hands `action` to the VMM and waits for its answer.
    pub fn call(&self, action: VmmAction) -> Response {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.tx.send(ApiRequest { action, reply }).is_err() {
            return Response::fault(503, "the VMM has stopped");
        }
        let _ = self.wake.write(1);
        answer
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| Response::fault(503, "the VMM did not answer in time; try again"))
    }
}

impl ApiInbox {
    /// The next waiting request, if any (clears the wake-up first, so a
    /// request sent meanwhile wakes the loop again).
    pub fn try_next(&self) -> Option<ApiRequest> {
        let _ = self.wake.read();
        self.rx.try_recv().ok()
    }

    /// Blocks for the next request (before the VM runs); `None` once the
    /// API thread is gone.
    pub fn next_blocking(&self) -> Option<ApiRequest> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_the_vmm_answer() {
        let (sender, inbox) = channel().unwrap();
        let vmm = std::thread::spawn(move || {
            let req = inbox.next_blocking().unwrap();
            assert_eq!(req.action, VmmAction::GetInstanceInfo);
            req.answer(Response::no_content());
        });
        assert_eq!(sender.call(VmmAction::GetInstanceInfo).status, 204);
        vmm.join().unwrap();
    }

    #[test]
    fn a_gone_vmm_gives_503() {
        let (sender, inbox) = channel().unwrap();
        drop(inbox);
        assert_eq!(sender.call(VmmAction::Pause).status, 503);
    }

    #[test]
    fn the_wake_up_is_readable_while_requests_wait() {
        let (sender, inbox) = channel().unwrap();
        let t = std::thread::spawn(move || sender.call(VmmAction::Resume));
        // Wait for the request, answer it through try_next.
        let req = loop {
            if let Some(r) = inbox.try_next() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        req.answer(Response::no_content());
        assert_eq!(t.join().unwrap().status, 204);
    }
}
