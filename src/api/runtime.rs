//! The VMM thread's side of the API once the VM runs: an event-loop
//! subscriber that answers the API thread's requests between two passes
//! of the loop, so a client never blocks the devices and the devices
//! never block a client for longer than one pass.

use std::os::fd::AsRawFd;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::action::{ApiInbox, VmmAction};
use super::http::Response;
use super::metrics::MetricsSink;
use super::model::{InstanceInfo, InstanceState, MachineConfig};
use crate::vmm::RunningVm;

/// How long a pause may wait for every vCPU to leave the guest.
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

/// What `GET /` and `GET /machine-config` report of this VM.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: String,
    pub machine: MachineConfig,
}

pub struct ApiRuntime {
    inbox: ApiInbox,
    vm: RunningVm,
    identity: Identity,
    metrics: Option<MetricsSink>,
}

impl ApiRuntime {
    pub fn new(inbox: ApiInbox, vm: RunningVm, identity: Identity, metrics: Option<MetricsSink>) -> Self {
        Self {
            inbox,
            vm,
            identity,
            metrics,
        }
    }

    /// One action on the running VM.
    pub fn handle(&mut self, action: VmmAction) -> Response {
        let outcome: Result<Option<String>, String> = match action {
            VmmAction::GetInstanceInfo => Ok(Some(instance_info(&self.identity.id, state_of(&self.vm)))),
            VmmAction::GetMachineConfig => Ok(serde_json::to_string(&self.identity.machine).ok()),
            VmmAction::PatchDrive(patch) => {
                let id = &patch.drive_id;
                let mut result = Ok(None);
                if let Some(path) = &patch.path_on_host {
                    result = self.vm.devices.swap_drive_file(id, path).map(|()| None);
                }
                if let (Ok(_), Some(limits)) = (&result, &patch.rate_limiter) {
                    result = self
                        .vm
                        .devices
                        .update_drive_rate_limiter(id, limits)
                        .map(|()| None);
                }
                result.map_err(|e| e.to_string())
            }
            VmmAction::PatchNet(patch) => self
                .vm
                .devices
                .update_net_rate_limiters(
                    &patch.iface_id,
                    patch.rx_rate_limiter.as_ref(),
                    patch.tx_rate_limiter.as_ref(),
                )
                .map(|()| None)
                .map_err(|e| e.to_string()),
            VmmAction::SendCtrlAltDel => self
                .vm
                .devices
                .send_ctrl_alt_del()
                .map(|()| None)
                .map_err(|e| e.to_string()),
            VmmAction::FlushMetrics => match &mut self.metrics {
                Some(sink) => sink
                    .flush(&self.vm.timeline, state_of(&self.vm))
                    .map(|()| None)
                    .map_err(|e| format!("cannot write the metrics: {e}")),
                None => Err("no metrics sink is configured; PUT /metrics before InstanceStart".into()),
            },
            VmmAction::Pause => {
                if self.vm.pause.pause(&self.vm.vcpus, PAUSE_LIMIT) {
                    Ok(None)
                } else {
                    self.vm.pause.resume();
                    Err(format!(
                        "the vCPUs did not stop within {PAUSE_LIMIT:?}; the VM keeps running"
                    ))
                }
            }
            VmmAction::Resume => {
                self.vm.pause.resume();
                Ok(None)
            }
            VmmAction::InstanceStart => Err("the microVM is already running".into()),
            other => Err(format!(
                "The requested operation is not supported after starting the microVM ({}).",
                action_name(&other)
            )),
        };
        match outcome {
            Ok(Some(body)) => Response::json(200, body),
            Ok(None) => Response::no_content(),
            Err(message) => Response::fault(400, message),
        }
    }
}

fn state_of(vm: &RunningVm) -> InstanceState {
    if vm.pause.is_paused() {
        InstanceState::Paused
    } else {
        InstanceState::Running
    }
}

/// `GET /`'s body.
pub fn instance_info(id: &str, state: InstanceState) -> String {
    let info = InstanceInfo {
        app_name: "kiln".into(),
        id: id.to_string(),
        state,
        vmm_version: super::routes::version(),
    };
    serde_json::to_string(&info).unwrap_or_default()
}

/// The request an action came from, for messages.
pub fn action_name(action: &VmmAction) -> &'static str {
    match action {
        VmmAction::GetInstanceInfo => "GET /",
        VmmAction::GetMachineConfig => "GET /machine-config",
        VmmAction::PutMachineConfig(_) => "PUT /machine-config",
        VmmAction::PatchMachineConfig(_) => "PATCH /machine-config",
        VmmAction::PutBootSource(_) => "PUT /boot-source",
        VmmAction::PutDrive(_) => "PUT /drives",
        VmmAction::PatchDrive(_) => "PATCH /drives",
        VmmAction::PutNet(_) => "PUT /network-interfaces",
        VmmAction::PatchNet(_) => "PATCH /network-interfaces",
        VmmAction::PutVsock(_) => "PUT /vsock",
        VmmAction::PutLogger(_) => "PUT /logger",
        VmmAction::PutMetrics(_) => "PUT /metrics",
        VmmAction::InstanceStart => "InstanceStart",
        VmmAction::SendCtrlAltDel => "SendCtrlAltDel",
        VmmAction::FlushMetrics => "FlushMetrics",
        VmmAction::Pause => "PATCH /vm Paused",
        VmmAction::Resume => "PATCH /vm Resumed",
    }
}

impl MutEventSubscriber for ApiRuntime {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.inbox.wake.as_raw_fd() {
            while let Some(request) = self.inbox.try_next() {
                let response = self.handle(request.action.clone());
                request.answer(response);
            }
        } else if let Some(sink) = &mut self.metrics {
            sink.tick(&self.vm.timeline, state_of(&self.vm));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.inbox.wake, EventSet::IN)) {
            log::error!("cannot watch the API's requests: {e}");
        }
        if let Some(timer) = self.metrics.as_ref().and_then(MetricsSink::timer) {
            if let Err(e) = ops.add(Events::new(timer, EventSet::IN)) {
                log::error!("cannot watch the metrics timer: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::action;
    use crate::api::model::{PartialDrive, PartialNetworkInterface};
    use crate::exit::ExitNotifier;
    use crate::timeline::BootTimeline;
    use crate::vstate::vcpu::{PauseControl, VcpuKicker};

    /// A runtime over a VM with no devices and no vCPUs.
    fn runtime() -> ApiRuntime {
        let (_, inbox) = action::channel().unwrap();
        let vm = RunningVm {
            devices: Default::default(),
            pause: PauseControl::default(),
            vcpus: VcpuKicker::new(&[]),
            exit: ExitNotifier::new().unwrap(),
            timeline: Arc::new(BootTimeline::starting_now()),
        };
        let identity = Identity {
            id: "vm-9".into(),
            machine: MachineConfig::default(),
        };
        ApiRuntime::new(inbox, vm, identity, None)
    }

    fn fault(r: &Response) -> String {
        assert_eq!(r.status, 400, "{r:?}");
        r.body.clone().unwrap()
    }

    #[test]
    fn state_follows_pause_and_resume() {
        let mut rt = runtime();
        let info = |rt: &mut ApiRuntime| rt.handle(VmmAction::GetInstanceInfo).body.unwrap();
        assert!(info(&mut rt).contains(r#""state":"Running""#));
        assert!(info(&mut rt).contains(r#""id":"vm-9""#));
        assert_eq!(rt.handle(VmmAction::Pause).status, 204);
        assert!(info(&mut rt).contains(r#""state":"Paused""#));
        assert_eq!(rt.handle(VmmAction::Resume).status, 204);
        assert!(info(&mut rt).contains(r#""state":"Running""#));
        let machine = rt.handle(VmmAction::GetMachineConfig);
        assert_eq!(machine.status, 200);
        assert!(machine.body.unwrap().contains("vcpu_count"));
    }

    #[test]
    fn changes_to_devices_it_does_not_have_are_400s() {
        let mut rt = runtime();
        let drive = PartialDrive {
            drive_id: "rootfs".into(),
            path_on_host: Some("/x".into()),
            rate_limiter: None,
        };
        assert!(fault(&rt.handle(VmmAction::PatchDrive(drive))).contains("rootfs"));
        let net = PartialNetworkInterface {
            iface_id: "eth0".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(fault(&rt.handle(VmmAction::PatchNet(net))).contains("eth0"));
        assert!(fault(&rt.handle(VmmAction::SendCtrlAltDel)).contains("fault_message"));
        assert!(fault(&rt.handle(VmmAction::FlushMetrics)).contains("PUT /metrics"));
    }

    #[test]
    fn pre_boot_requests_are_refused_once_running() {
        let mut rt = runtime();
        assert!(fault(&rt.handle(VmmAction::InstanceStart)).contains("already running"));
        for action in [
            VmmAction::PutBootSource(Default::default()),
            VmmAction::PutMachineConfig(MachineConfig::default()),
            VmmAction::PutLogger(Default::default()),
        ] {
            let name = action_name(&action);
            let body = fault(&rt.handle(action));
            assert!(body.contains("after starting the microVM"), "{name}: {body}");
            assert!(body.contains(name), "{name}: {body}");
        }
    }
}
