use serde_json::json;

use super::*;

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ResourceError> {
    parse_body(text.as_bytes())
}

/// The message of a body that must be refused: one line.
fn refused<T: DeserializeOwned + fmt::Debug>(text: &str) -> String {
    let err = parse::<T>(text).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{text}: {err}");
    err
}

#[test]
fn boot_source_parses_as_documented() {
    let boot: BootSource = parse(
        r#"{"kernel_image_path": "./vmlinux.bin", "initrd_path": "/tmp/initrd",
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}"#,
    )
    .unwrap();
    assert_eq!(boot.kernel_image_path, PathBuf::from("./vmlinux.bin"));
    assert_eq!(boot.initrd_path, Some(PathBuf::from("/tmp/initrd")));
    assert_eq!(
        boot.boot_args.as_deref(),
        Some("console=ttyS0 reboot=k panic=1 pci=off")
    );
    let bare: BootSource = parse(r#"{"kernel_image_path": "k"}"#).unwrap();
    assert_eq!((bare.initrd_path, bare.boot_args), (None, None));

    assert!(refused::<BootSource>(r#"{"boot_args": "x"}"#).contains("missing field `kernel_image_path`"));
    assert!(
        refused::<BootSource>(r#"{"kernel_image_path": "k", "initrd": "i"}"#)
            .contains("unknown field `initrd`")
    );
    assert!(refused::<BootSource>(r#"{"kernel_image_path": 7}"#).contains("invalid type"));
}

#[test]
fn machine_config_parses_and_answers_as_firecracker() {
    let m: MachineConfig = parse(r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#).unwrap();
    assert_eq!(
        (m.vcpu_count, m.mem_size_mib, m.smt, m.track_dirty_pages),
        (2, 1024, false, false)
    );
    assert_eq!((m.cpu_template, m.huge_pages), (None, HugePages::None));
    let full: MachineConfig = parse(
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true, "track_dirty_pages": true,
            "cpu_template": "T2S", "huge_pages": "2M"}"#,
    )
    .unwrap();
    assert_eq!(full.cpu_template, Some(CpuTemplate::T2S));
    assert_eq!(full.huge_pages, HugePages::Hugetlbfs2M);
    assert!(full.smt && full.track_dirty_pages);

    // GET /machine-config before any PUT: Firecracker's defaults, no
    // cpu_template key.
    assert_eq!(
        serde_json::to_value(MachineConfig::default()).unwrap(),
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
               "track_dirty_pages": false, "huge_pages": "None"})
    );

    for (body, why) in [
        (r#"{"vcpu_count": 1}"#, "missing field `mem_size_mib`"),
        (r#"{"mem_size_mib": 128}"#, "missing field `vcpu_count`"),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "ht_enabled": false}"#,
            "unknown field `ht_enabled`",
        ),
        (r#"{"vcpu_count": 256, "mem_size_mib": 128}"#, "expected u8"),
        (r#"{"vcpu_count": -1, "mem_size_mib": 128}"#, "expected u8"),
        (
            r#"{"vcpu_count": "2", "mem_size_mib": 128}"#,
            "invalid type: string",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": "no"}"#,
            "invalid type",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "M5"}"#,
            "unknown variant `M5`",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#,
            "unknown variant `1G`",
        ),
    ] {
        let err = refused::<MachineConfig>(body);
        assert!(err.contains(why), "{body}: {err}");
        assert!(err.starts_with("the request body is not valid: "), "{err}");
    }
}

#[test]
fn machine_config_patches_change_only_what_they_name() {
    let patch: MachineConfigUpdate = parse(r#"{"mem_size_mib": 512}"#).unwrap();
    let base = MachineConfig {
        vcpu_count: 4,
        ..MachineConfig::default()
    };
    let patched = patch.apply(&base);
    assert_eq!((patched.vcpu_count, patched.mem_size_mib), (4, 512));
    assert!(!patch.is_empty());
    assert!(parse::<MachineConfigUpdate>("{}").unwrap().is_empty());
    assert!(refused::<MachineConfigUpdate>(r#"{"vcpus": 2}"#).contains("unknown field `vcpus`"));
}

#[test]
fn drives_parse_as_documented_and_as_kata_sends_them() {
    let d: Drive = parse(
        r#"{"drive_id": "rootfs", "path_on_host": "/img/rootfs.ext4", "is_root_device": true,
            "is_read_only": false, "partuuid": "0eaa91a0-01", "cache_type": "Writeback",
            "io_engine": "Sync",
            "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000},
                             "ops": {"size": 100, "one_time_burst": 10, "refill_time": 1000}}}"#,
    )
    .unwrap();
    assert_eq!(d.drive_id, "rootfs");
    assert_eq!(d.cache_type, Some(CacheType::Writeback));
    assert_eq!(d.io_engine, Some(IoEngine::Sync));
    let limits = d.rate_limiter.unwrap();
    assert_eq!(limits.bandwidth.map(|b| b.size), Some(1 << 20));
    assert_eq!(limits.ops.and_then(|b| b.one_time_burst), Some(10));

    // Kata's placeholder drive, and its rootfs drive (Go's field order).
    let kata: Drive = parse(
        r#"{"drive_id": "drive_0", "is_read_only": false, "is_root_device": false,
            "path_on_host": "/drive_0"}"#,
    )
    .unwrap();
    assert_eq!(kata.path_on_host, Some(PathBuf::from("/drive_0")));
    assert_eq!((kata.cache_type, kata.rate_limiter), (None, None));

    let vhost: Drive = parse(r#"{"drive_id": "v", "is_root_device": false, "socket": "/s"}"#).unwrap();
    assert_eq!((vhost.path_on_host, vhost.socket.as_deref()), (None, Some("/s")));

    for (body, why) in [
        (
            r#"{"drive_id": "a", "path_on_host": "p"}"#,
            "missing field `is_root_device`",
        ),
        (
            r#"{"path_on_host": "p", "is_root_device": false}"#,
            "missing field `drive_id`",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "readonly": true}"#,
            "unknown field `readonly`",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": "yes"}"#,
            "invalid type",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "cache_type": "None"}"#,
            "unknown variant `None`",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "io_engine": "Uring"}"#,
            "unknown variant `Uring`",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "rate_limiter": {"bw": {}}}"#,
            "unknown field `bw`",
        ),
        (
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "rate_limiter": {"ops": {"size": 1}}}"#,
            "missing field `refill_time`",
        ),
    ] {
        let err = refused::<Drive>(body);
        assert!(err.contains(why), "{body}: {err}");
    }

    let patch: PartialDrive = parse(r#"{"drive_id": "drive_3", "path_on_host": "/new"}"#).unwrap();
    assert_eq!(
        (patch.path_on_host, patch.rate_limiter),
        (Some(PathBuf::from("/new")), None)
    );
    assert!(refused::<PartialDrive>(r#"{"drive_id": "a", "is_read_only": true}"#).contains("unknown field"));
}

#[test]
fn an_empty_rate_limiter_means_no_limit() {
    let net: NetworkInterface = parse(
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01",
            "rx_rate_limiter": {}, "tx_rate_limiter": {}}"#,
    )
    .unwrap();
    let rx = net.rx_rate_limiter.unwrap();
    assert_eq!(rx, RateLimiterConfig::default());
    assert!(!rx.is_limited());
    assert_eq!(net.guest_mac.as_deref(), Some("AA:FC:00:00:00:01"));
    assert_eq!(net.mtu, None);

    let patch: PartialNetworkInterface =
        parse(r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#)
            .unwrap();
    assert_eq!(patch.rx_rate_limiter, None);
    assert!(!patch.tx_rate_limiter.unwrap().is_limited());

    for (body, why) in [
        (r#"{"iface_id": "eth0"}"#, "missing field `host_dev_name`"),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "allow_mmds_requests": true}"#,
            "unknown field",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 70000}"#,
            "expected u16",
        ),
    ] {
        let err = refused::<NetworkInterface>(body);
        assert!(err.contains(why), "{body}: {err}");
    }
    assert!(
        refused::<PartialNetworkInterface>(r#"{"iface_id": "e", "guest_mac": "x"}"#)
            .contains("unknown field")
    );
}

#[test]
fn vsock_takes_the_deprecated_id_kata_sends() {
    let v: Vsock = parse(r#"{"guest_cid": 3, "uds_path": "/kata.hvsock", "vsock_id": "root"}"#).unwrap();
    assert_eq!((v.guest_cid, v.vsock_id.as_deref()), (3, Some("root")));
    let plain: Vsock = parse(r#"{"guest_cid": 3, "uds_path": "./v.sock"}"#).unwrap();
    assert_eq!(plain.vsock_id, None);
    assert!(refused::<Vsock>(r#"{"guest_cid": 3}"#).contains("missing field `uds_path`"));
    assert!(refused::<Vsock>(r#"{"guest_cid": -3, "uds_path": "v"}"#).contains("expected u32"));
    assert!(refused::<Vsock>(r#"{"guest_cid": 3, "uds_path": "v", "port": 1}"#).contains("unknown field"));
}

#[test]
fn logger_levels_read_as_firecracker_reads_them() {
    let l: Logger = parse(r#"{"log_path": "/logs.fifo", "level": "Error"}"#).unwrap();
    assert_eq!(l.level, Some(LogLevel::Error));
    for (name, level) in [
        ("warning", LogLevel::Warn),
        ("WARN", LogLevel::Warn),
        ("debug", LogLevel::Debug),
    ] {
        let l: Logger = parse(&format!(r#"{{"level": "{name}"}}"#)).unwrap();
        assert_eq!(l.level, Some(level), "{name}");
    }
    assert_eq!(LogLevel::Trace.filter(), log::LevelFilter::Trace);
    let all: Logger = parse(
        r#"{"log_path": "l", "level": "Info", "show_level": true, "show_log_origin": false,
            "module": "api_server"}"#,
    )
    .unwrap();
    assert_eq!(all.module.as_deref(), Some("api_server"));
    assert!(refused::<Logger>(r#"{"level": "loud"}"#).contains("unknown log level \"loud\""));
    assert!(refused::<Logger>(r#"{"log_fifo": "x"}"#).contains("unknown field `log_fifo`"));
}

#[test]
fn metrics_ignore_unknown_fields_as_firecracker_does_but_refuse_what_kiln_cannot_do() {
    let m: Metrics = parse(r#"{"metrics_path": "/metrics.fifo"}"#).unwrap();
    assert_eq!(m.check(), Ok(()));
    let m: Metrics = parse(r#"{"metrics_path": "m", "emit_id": false, "someday": 1}"#).unwrap();
    assert_eq!(m.check(), Ok(()));
    let with_id: Metrics = parse(r#"{"metrics_path": "m", "emit_id": true}"#).unwrap();
    assert!(with_id.check().unwrap_err().to_string().contains("emit_id"));
    let with_props: Metrics = parse(r#"{"metrics_path": "m", "properties": {"a": "b"}}"#).unwrap();
    assert!(with_props.check().unwrap_err().to_string().contains("properties"));
    assert!(refused::<Metrics>("{}").contains("missing field `metrics_path`"));
}

#[test]
fn actions_and_vm_states() {
    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let a: ActionInfo = parse(&format!(r#"{{"action_type": "{name}"}}"#)).unwrap();
        assert_eq!(a.action_type, action);
    }
    assert!(refused::<ActionInfo>(r#"{"action_type": "Reboot"}"#).contains("unknown variant `Reboot`"));
    assert!(
        refused::<ActionInfo>(r#"{"action_type": "InstanceStart", "payload": 1}"#).contains("unknown field")
    );
    assert!(refused::<ActionInfo>("not json").contains("expected"));

    let v: VmState = parse(r#"{"state": "Paused"}"#).unwrap();
    assert_eq!(v.state, VmRunState::Paused);
    let v: VmState = parse(r#"{"state": "Resumed"}"#).unwrap();
    assert_eq!(v.state, VmRunState::Resumed);
    assert!(refused::<VmState>(r#"{"state": "paused"}"#).contains("unknown variant"));
    assert!(refused::<VmState>(r#"{"state": "Paused", "x": 1}"#).contains("unknown field"));
}

#[test]
fn answers_serialise_as_firecracker_spells_them() {
    let info = InstanceInfo {
        app_name: "kiln".into(),
        id: "anonymous-instance".into(),
        state: InstanceState::NotStarted,
        vmm_version: "0.1.0".into(),
    };
    assert_eq!(
        serde_json::to_value(&info).unwrap(),
        json!({"app_name": "kiln", "id": "anonymous-instance", "state": "Not started",
               "vmm_version": "0.1.0"})
    );
    for (state, name) in [
        (InstanceState::Running, "Running"),
        (InstanceState::Paused, "Paused"),
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), json!(name));
    }
    let version = VersionInfo {
        firecracker_version: "0.1.0".into(),
    };
    assert_eq!(
        serde_json::to_string(&version).unwrap(),
        r#"{"firecracker_version":"0.1.0"}"#
    );
}

#[test]
fn error_bodies_carry_the_message() {
    assert_eq!(
        ApiError::json("no \"drive\""),
        r#"{"fault_message":"no \"drive\""}"#
    );
    let err = parse::<ActionInfo>("{").unwrap_err();
    let body: ApiError = serde_json::from_str(&ApiError::json(&err)).unwrap();
    assert_eq!(body.fault_message, err.to_string());
}
