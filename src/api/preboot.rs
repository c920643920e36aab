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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::api::model::{Logger, Metrics};
    use crate::api::routes::{route, Routed};

    fn preboot() -> Preboot {
        Preboot::new(
            VmResources::default(),
            "vm-1".into(),
            Arc::new(BootTimeline::starting_now()),
        )
    }

    /// `method path body` through the router and the pre-boot handler.
    fn ask(p: &mut Preboot, method: &str, path: &str, body: &str) -> Response {
        let request = super::super::http::Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        };
        let action = match route(&request) {
            Routed::Action(a) => a,
            Routed::Now(r) => return r,
        };
        let (reply, answer) = mpsc::sync_channel(1);
        match p.handle(ApiRequest { action, reply }) {
            Some(start) => {
                assert_eq!(start.action, VmmAction::InstanceStart);
                Response::json(0, "start".into())
            }
            None => answer.recv().unwrap(),
        }
    }

    #[test]
    fn configuration_requests_are_answered_204_and_kept() {
        let mut p = preboot();
        assert_eq!(
            ask(&mut p, "PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#).status,
            204
        );
        assert_eq!(
            ask(
                &mut p,
                "PUT",
                "/machine-config",
                r#"{"vcpu_count":2,"mem_size_mib":256}"#
            )
            .status,
            204
        );
        assert_eq!(
            ask(&mut p, "PATCH", "/machine-config", r#"{"mem_size_mib":512}"#).status,
            204
        );
        let drive = r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":true}"#;
        assert_eq!(ask(&mut p, "PUT", "/drives/rootfs", drive).status, 204);
        assert_eq!(
            ask(
                &mut p,
                "PATCH",
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/s"}"#
            )
            .status,
            204
        );
        let net = r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#;
        assert_eq!(ask(&mut p, "PUT", "/network-interfaces/eth0", net).status, 204);
        assert_eq!(
            ask(
                &mut p,
                "PUT",
                "/vsock",
                r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#
            )
            .status,
            204
        );
        let config = p.resources.vm_config().unwrap();
        assert_eq!((config.cpus, config.memory_mib), (2, 512));
        assert_eq!(config.disks[0].block.path, std::path::Path::new("/s"));
        let r = ask(&mut p, "GET", "/machine-config", "");
        assert!(r.body.unwrap().contains(r#""mem_size_mib":512"#));
        let r = ask(&mut p, "GET", "/", "");
        assert!(r.body.unwrap().contains(r#""state":"Not started""#));
    }

    #[test]
    fn instance_start_is_handed_back() {
        let mut p = preboot();
        assert_eq!(
            ask(&mut p, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
                .body
                .unwrap(),
            "start"
        );
    }

    #[test]
    fn run_time_actions_and_bad_values_are_400s() {
        let mut p = preboot();
        for (method, path, body) in [
            ("PATCH", "/vm", r#"{"state":"Paused"}"#),
            ("PATCH", "/vm", r#"{"state":"Resumed"}"#),
            ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
            ("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#),
            ("PUT", "/machine-config", r#"{"vcpu_count":0,"mem_size_mib":256}"#),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":256,"smt":true}"#,
            ),
            (
                "PATCH",
                "/drives/none",
                r#"{"drive_id":"none","path_on_host":"/x"}"#,
            ),
            ("PUT", "/metrics", r#"{"metrics_path":"/nonexistent/dir/m"}"#),
            ("PUT", "/logger", r#"{"log_path":"/nonexistent/dir/l"}"#),
        ] {
            let r = ask(&mut p, method, path, body);
            assert_eq!(r.status, 400, "{method} {path} {body}: {r:?}");
            assert!(r.body.unwrap().contains("fault_message"));
        }
    }

    #[test]
    fn metrics_are_set_once_and_flush_before_the_start() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("m.json");
        std::fs::write(&path, b"").unwrap();
        let mut p = preboot();
        let body = serde_json::to_string(&Metrics {
            metrics_path: path.clone(),
            ..Metrics::default()
        })
        .unwrap();
        assert_eq!(ask(&mut p, "PUT", "/metrics", &body).status, 204);
        assert_eq!(ask(&mut p, "PUT", "/metrics", &body).status, 400);
        assert_eq!(
            ask(&mut p, "PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#).status,
            204
        );
        assert!(std::fs::read_to_string(&path).unwrap().contains("Not started"));
        let logger = serde_json::to_string(&Logger {
            module: Some("kiln".into()),
            ..Logger::default()
        })
        .unwrap();
        assert_eq!(ask(&mut p, "PUT", "/logger", &logger).status, 400);
    }
}
