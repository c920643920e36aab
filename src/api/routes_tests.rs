use super::*;

fn req(method: &str, path: &str, body: &str) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        body: body.as_bytes().to_vec(),
    }
}

fn action(method: &str, path: &str, body: &str) -> VmmAction {
    match route(&req(method, path, body)) {
        Routed::Action(a) => a,
        Routed::Now(r) => panic!("{method} {path}: {r:?}"),
    }
}

fn refused(method: &str, path: &str, body: &str) -> String {
    match route(&req(method, path, body)) {
        Routed::Now(r) if r.status == 400 => r.body.unwrap(),
        other => panic!("{method} {path}: {other:?}"),
    }
}

#[test]
fn every_endpoint_routes_to_its_action() {
    assert_eq!(action("GET", "/", ""), VmmAction::GetInstanceInfo);
    assert_eq!(action("GET", "/machine-config", ""), VmmAction::GetMachineConfig);
    assert!(matches!(
        action("PUT", "/machine-config", r#"{"vcpu_count":2,"mem_size_mib":256}"#),
        VmmAction::PutMachineConfig(_)
    ));
    assert!(matches!(
        action("PATCH", "/machine-config", r#"{"mem_size_mib":256}"#),
        VmmAction::PatchMachineConfig(_)
    ));
    assert!(matches!(
        action("PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#),
        VmmAction::PutBootSource(_)
    ));
    let drive = r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#;
    assert!(matches!(
        action("PUT", "/drives/rootfs", drive),
        VmmAction::PutDrive(_)
    ));
    assert!(matches!(
        action(
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/n"}"#
        ),
        VmmAction::PatchDrive(_)
    ));
    let net = r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#;
    assert!(matches!(
        action("PUT", "/network-interfaces/eth0", net),
        VmmAction::PutNet(_)
    ));
    assert!(matches!(
        action("PATCH", "/network-interfaces/eth0", r#"{"iface_id":"eth0"}"#),
        VmmAction::PatchNet(_)
    ));
    assert!(matches!(
        action("PUT", "/vsock", r#"{"guest_cid":3,"uds_path":"/v.sock"}"#),
        VmmAction::PutVsock(_)
    ));
    assert!(matches!(
        action("PUT", "/logger", r#"{"log_path":"/l","level":"Debug"}"#),
        VmmAction::PutLogger(_)
    ));
    assert!(matches!(
        action("PUT", "/metrics", r#"{"metrics_path":"/m"}"#),
        VmmAction::PutMetrics(_)
    ));
    for (kind, want) in [
        ("InstanceStart", VmmAction::InstanceStart),
        ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
        ("FlushMetrics", VmmAction::FlushMetrics),
    ] {
        assert_eq!(
            action("PUT", "/actions", &format!(r#"{{"action_type":"{kind}"}}"#)),
            want
        );
    }
    assert_eq!(action("PATCH", "/vm", r#"{"state":"Paused"}"#), VmmAction::Pause);
    assert_eq!(
        action("PATCH", "/vm", r#"{"state":"Resumed"}"#),
        VmmAction::Resume
    );
}

#[test]
fn the_version_is_answered_on_the_api_thread() {
    match route(&req("GET", "/version", "")) {
        Routed::Now(r) => {
            assert_eq!(r.status, 200);
            assert!(r.body.unwrap().contains(FIRECRACKER_COMPAT));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_paths_methods_and_bodies_are_400s_with_a_fault_message() {
    assert!(refused("GET", "/nope", "").contains("Invalid request method and/or path"));
    assert!(refused("DELETE", "/drives/a", "").contains("Invalid request"));
    assert!(refused("POST", "/actions", "{}").contains("Invalid request"));
    assert!(refused("PUT", "/actions", "").contains("body"));
    assert!(refused("PUT", "/actions", "{not json").contains("fault_message"));
    assert!(refused("PUT", "/actions", r#"{"action_type":"Explode"}"#).contains("fault_message"));
    assert!(refused("PATCH", "/vm", r#"{"state":"Sleeping"}"#).contains("fault_message"));
    let drive = r#"{"drive_id":"other","path_on_host":"/r","is_root_device":false}"#;
    assert!(refused("PUT", "/drives/rootfs", drive).contains("differs"));
    assert!(refused("PUT", "/drives/", drive).contains("Invalid request"));
}
