//! The VMM thread's side of the API before `InstanceStart`: requests build
//! up the VM's description ([`VmResources`]), the logger and the metrics.

use std::sync::Arc;

use super::action::{ApiRequest, VmmAction};
use super::http::Response;
use super::metrics::MetricsSink;
use super::model::InstanceState;
use super::resources::{ResourceError, VmResources};
use super::runtime::{action_name, instance_info};
use crate::timeline::BootTimeline;

/// What the API has set up so far.
pub struct Preboot {
    pub resources: VmResources,
    pub id: String,
    pub metrics: Option<MetricsSink>,
    timeline: Arc<BootTimeline>,
}

impl Preboot {
    pub fn new(resources: VmResources, id: String, timeline: Arc<BootTimeline>) -> Self {
        Self {
            resources,
            id,
            metrics: None,
            timeline,
        }
    }

    /// Answers `request`, or hands it back if it is `InstanceStart` (the
    /// caller boots the VM and answers it then).
    pub fn handle(&mut self, request: ApiRequest) -> Option<ApiRequest> {
        if request.action == VmmAction::InstanceStart {
            return Some(request);
        }
        let response = self.answer(&request.action);
        request.answer(response);
        None
    }

    fn answer(&mut self, action: &VmmAction) -> Response {
        let r = &mut self.resources;
        let done = |result: Result<(), ResourceError>| match result {
            Ok(()) => Response::no_content(),
            Err(e) => Response::fault(400, e.to_string()),
        };
        match action {
            VmmAction::GetInstanceInfo => {
                Response::json(200, instance_info(&self.id, InstanceState::NotStarted))
            }
            VmmAction::GetMachineConfig => {
                Response::json(200, serde_json::to_string(r.machine_config()).unwrap_or_default())
            }
            VmmAction::PutMachineConfig(c) => done(r.set_machine_config(c.clone())),
            VmmAction::PatchMachineConfig(u) => done(r.update_machine_config(u)),
            VmmAction::PutBootSource(b) => done(r.set_boot_source(b.clone())),
            VmmAction::PutDrive(d) => done(r.put_drive(d.clone())),
            VmmAction::PatchDrive(p) => done(r.update_drive(p)),
            VmmAction::PutNet(n) => done(r.put_net(n.clone())),
            VmmAction::PatchNet(p) => done(r.update_net(p)),
            VmmAction::PutVsock(v) => done(r.set_vsock(v.clone())),
            VmmAction::PutLogger(l) => match super::logger::configure(l) {
                Ok(()) => Response::no_content(),
                Err(e) => Response::fault(400, e.to_string()),
            },
            VmmAction::PutMetrics(m) => {
                if self.metrics.is_some() {
                    return Response::fault(400, "the metrics are already configured; they can be set once");
                }
                if let Err(e) = m.check() {
                    return Response::fault(400, e.to_string());
                }
                match MetricsSink::open(&m.metrics_path) {
                    Ok(sink) => {
                        self.metrics = Some(sink);
                        Response::no_content()
                    }
                    Err(e) => Response::fault(
                        400,
                        format!("cannot open the metrics file {}: {e}", m.metrics_path.display()),
                    ),
                }
            }
            VmmAction::FlushMetrics => match &mut self.metrics {
                Some(sink) => match sink.flush(&self.timeline, InstanceState::NotStarted) {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::fault(400, format!("cannot write the metrics: {e}")),
                },
                None => Response::fault(400, "no metrics sink is configured; PUT /metrics first"),
            },
            other => Response::fault(
                400,
                format!(
                    "{} is not supported before the microVM starts (send InstanceStart first)",
                    action_name(other)
                ),
            ),
        }
    }
}
