use super::*;
use crate::api::model::{LogLevel, RateLimiterConfig, TokenBucketConfig};
use crate::config::IdError;
use crate::devices::virtio::net::MacAddr;

/// Exactly what Kata's Go runtime writes (`json.MarshalIndent` of its
/// `FcConfig`, tab-indented, fields in Go's order) for a jailed sandbox of
/// one vCPU and 2 GiB, not in debug mode: the rootfs read-only but not
/// `is_root_device` (Kata names the root in `boot_args`), eight empty
/// placeholder drives for later hotplug, one tap with `{}` rate limiters,
/// the hybrid vsock with its deprecated `vsock_id`, and the log and
/// metrics FIFOs.
const KATA_CONFIG: &str = "{
\t\"boot-source\": {
\t\t\"boot_args\": \"root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off 8250.nr_uarts=0 agent.log_vport=1025\",
\t\t\"kernel_image_path\": \"/vmlinux\"
\t},
\t\"machine-config\": {
\t\t\"mem_size_mib\": 2048,
\t\t\"smt\": false,
\t\t\"vcpu_count\": 1
\t},
\t\"vsock\": {
\t\t\"guest_cid\": 3,
\t\t\"uds_path\": \"/kata.hvsock\",
\t\t\"vsock_id\": \"root\"
\t},
\t\"logger\": {
\t\t\"level\": \"Error\",
\t\t\"log_path\": \"/logs.fifo\"
\t},
\t\"metrics\": {
\t\t\"metrics_path\": \"/metrics.fifo\"
\t},
\t\"drives\": [
\t\t{
\t\t\t\"drive_id\": \"rootfs\",
\t\t\t\"is_read_only\": true,
\t\t\t\"is_root_device\": false,
\t\t\t\"path_on_host\": \"/rootfs\"
\t\t},
DRIVES
\t],
\t\"network-interfaces\": [
\t\t{
\t\t\t\"guest_mac\": \"02:42:ac:11:00:02\",
\t\t\t\"host_dev_name\": \"tap0_kata\",
\t\t\t\"iface_id\": \"eth0\",
\t\t\t\"rx_rate_limiter\": {},
\t\t\t\"tx_rate_limiter\": {}
\t\t}
\t]
}";

fn kata_config() -> String {
    let drives: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "\t\t{{\n\t\t\t\"drive_id\": \"drive_{i}\",\n\t\t\t\"is_read_only\": false,\n\
                 \t\t\t\"is_root_device\": false,\n\t\t\t\"path_on_host\": \"/drive_{i}\"\n\t\t}}"
            )
        })
        .collect();
    KATA_CONFIG.replace("DRIVES", &drives.join(",\n"))
}

fn disk(id: &str, path: &str, read_only: bool, root: bool) -> DiskConfig {
    let mut block = BlockConfig::new(path);
    block.id = Some(id.to_string());
    block.read_only = read_only;
    block.cache = CacheMode::Unsafe;
    DiskConfig { block, root }
}

fn drive(id: &str, root: bool) -> Drive {
    Drive {
        drive_id: id.to_string(),
        path_on_host: Some(PathBuf::from(format!("/img/{id}"))),
        is_root_device: root,
        ..Drive::default()
    }
}

fn net(id: &str, tap: &str) -> NetworkInterface {
    NetworkInterface {
        iface_id: id.to_string(),
        host_dev_name: tap.to_string(),
        ..NetworkInterface::default()
    }
}

fn booting() -> VmResources {
    let mut r = VmResources::default();
    r.set_boot_source(BootSource {
        kernel_image_path: "/vmlinux".into(),
        ..BootSource::default()
    })
    .unwrap();
    r
}

fn ids(r: &VmResources) -> Vec<&str> {
    r.drives().iter().map(|d| d.drive_id.as_str()).collect()
}

fn limit(size: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 1000,
        }),
        ops: None,
    }
}

#[test]
fn katas_config_file_gives_the_vm_kata_means() {
    let file = VmResources::from_config_file(&kata_config()).unwrap();
    let vm = file.resources.vm_config().unwrap();

    let mut expected = VmConfig::new("/vmlinux");
    expected.cmdline = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
                        pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on \
                        acpi=off 8250.nr_uarts=0 agent.log_vport=1025"
        .to_string();
    // The guest is told acpi=off, so kiln lists the devices on the command
    // line instead of in a DSDT the guest will not read.
    expected.acpi = false;
    expected.memory_mib = 2048;
    expected.disks = vec![disk("rootfs", "/rootfs", true, false)];
    for i in 0..8 {
        let id = format!("drive_{i}");
        expected.disks.push(disk(&id, &format!("/{id}"), false, false));
    }
    expected.nets = vec![NetConfig {
        mac: Some("02:42:ac:11:00:02".parse::<MacAddr>().unwrap()),
        id: Some("eth0".into()),
        ..NetConfig::new("tap0_kata")
    }];
    expected.vsock = Some(VsockConfig {
        cid: 3,
        socket: "/kata.hvsock".into(),
    });
    assert_eq!(vm, expected);

    let logger = file.logger.unwrap();
    assert_eq!(logger.log_path, Some(PathBuf::from("/logs.fifo")));
    assert_eq!(logger.level, Some(LogLevel::Error));
    assert_eq!(file.metrics.unwrap().metrics_path, PathBuf::from("/metrics.fifo"));
    assert_eq!(file.resources.machine_config().vcpu_count, 1);
    assert_eq!(file.resources.vsock().unwrap().vsock_id.as_deref(), Some("root"));
}

#[test]
fn firecrackers_getting_started_config_boots_a_root_drive() {
    let file = VmResources::from_config_file(
        r#"{
          "boot-source": {"kernel_image_path": "vmlinux.bin",
                          "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"},
          "drives": [{"drive_id": "rootfs", "path_on_host": "ubuntu.ext4",
                      "is_root_device": true, "is_read_only": false}],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024}
        }"#,
    )
    .unwrap();
    assert_eq!((file.logger, file.metrics), (None, None));
    let vm = file.resources.vm_config().unwrap();
    assert_eq!(vm.cmdline, "console=ttyS0 reboot=k panic=1 pci=off");
    assert!(vm.acpi);
    assert_eq!((vm.cpus, vm.memory_mib), (2, 1024));
    // kiln's builder adds root=/dev/vda rw for it, as Firecracker does.
    assert_eq!(vm.disks, vec![disk("rootfs", "ubuntu.ext4", false, true)]);
    assert!(vm.nets.is_empty() && vm.vsock.is_none());
}

#[test]
fn defaults_are_firecrackers_and_a_boot_source_is_needed() {
    let r = VmResources::default();
    assert_eq!(r.machine_config(), &MachineConfig::default());
    assert_eq!(
        (r.machine_config().vcpu_count, r.machine_config().mem_size_mib),
        (1, 128)
    );
    assert_eq!(r.vm_config(), Err(ResourceError::NoBootSource));
    assert!(r
        .vm_config()
        .unwrap_err()
        .to_string()
        .contains("PUT /boot-source"));

    let vm = booting().vm_config().unwrap();
    assert_eq!(vm, VmConfig::new("/vmlinux"));
    assert_eq!(vm.cmdline, config::DEFAULT_CMDLINE);
    assert!(
        vm.cmdline.contains("console=ttyS0"),
        "the serial console stays usable"
    );
}

#[test]
fn a_root_partuuid_names_the_root_on_the_command_line() {
    let mut r = booting();
    let mut root = drive("rootfs", true);
    root.partuuid = Some("0eaa91a0-01".into());
    r.put_drive(root.clone()).unwrap();
    let vm = r.vm_config().unwrap();
    assert_eq!(
        vm.cmdline,
        format!("{} root=PARTUUID=0eaa91a0-01 rw", config::DEFAULT_CMDLINE)
    );
    assert!(vm.disks[0].root);

    root.is_read_only = Some(true);
    root.partuuid = Some("6b1f6fd2-3a27-4b32-9c2c-1d8e5c6a8f10/PARTNROFF=1".into());
    r.put_drive(root.clone()).unwrap();
    assert!(r.vm_config().unwrap().cmdline.ends_with("/PARTNROFF=1 ro"));

    // A command line that names its root keeps it (kiln's builder rule).
    r.set_boot_source(BootSource {
        kernel_image_path: "k".into(),
        initrd_path: None,
        boot_args: Some("console=ttyS0 root=/dev/vdb".into()),
    })
    .unwrap();
    assert_eq!(r.vm_config().unwrap().cmdline, "console=ttyS0 root=/dev/vdb");

    for bad in ["", "01 init=/bin/sh", "abc/PARTNROFF=", "xyz"] {
        root.partuuid = Some(bad.into());
        let err = r.put_drive(root.clone()).unwrap_err();
        assert!(matches!(err, ResourceError::BadPartuuid { .. }), "{bad:?}: {err}");
    }
    let mut data = drive("data", false);
    data.partuuid = Some("0eaa91a0-02".into());
    let err = r.put_drive(data).unwrap_err().to_string();
    assert!(err.contains("needs is_root_device true"), "{err}");
}

#[test]
fn put_replaces_a_drive_by_id_and_keeps_one_root_first() {
    let mut r = booting();
    r.put_drive(drive("a", false)).unwrap();
    r.put_drive(drive("b", false)).unwrap();
    r.put_drive(drive("root", true)).unwrap();
    assert_eq!(ids(&r), ["root", "a", "b"]);

    let mut new_a = drive("a", false);
    new_a.path_on_host = Some("/img/other".into());
    new_a.is_read_only = Some(true);
    r.put_drive(new_a.clone()).unwrap();
    assert_eq!(ids(&r), ["root", "a", "b"], "replaced in place");
    assert_eq!(r.drives()[1], new_a);
    let vm = r.vm_config().unwrap();
    assert!(vm.disks[1].block.read_only && vm.disks[0].root);

    let before = r.clone();
    let err = r.put_drive(drive("b", true)).unwrap_err();
    assert_eq!(
        err,
        ResourceError::SecondRoot {
            id: "b".into(),
            root: "root".into()
        }
    );
    assert_eq!(r, before, "a refused PUT changes nothing");

    // The root may be PUT again, and stop being the root.
    r.put_drive(drive("root", true)).unwrap();
    r.put_drive(drive("root", false)).unwrap();
    r.put_drive(drive("b", true)).unwrap();
    assert_eq!(ids(&r), ["b", "root", "a"]);
    assert!(r.vm_config().unwrap().disks[0].root);
}

#[test]
fn drive_fields_kiln_cannot_honour_are_refused() {
    let mut r = booting();
    let mut vhost = drive("v", false);
    vhost.path_on_host = None;
    vhost.socket = Some("/vhost.sock".into());
    assert!(r.put_drive(vhost).unwrap_err().to_string().contains("vhost-user"));
    let mut no_path = drive("v", false);
    no_path.path_on_host = None;
    assert!(r
        .put_drive(no_path)
        .unwrap_err()
        .to_string()
        .contains("path_on_host is missing"));
    let mut io_uring = drive("v", false);
    io_uring.io_engine = Some(IoEngine::Async);
    assert!(r
        .put_drive(io_uring)
        .unwrap_err()
        .to_string()
        .contains("io_engine Async"));
    let mut sync = drive("v", false);
    sync.io_engine = Some(IoEngine::Sync);
    sync.cache_type = Some(CacheType::Writeback);
    r.put_drive(sync).unwrap();
    assert_eq!(r.vm_config().unwrap().disks[0].block.cache, CacheMode::Writeback);

    // kiln's own rules, from DiskConfig::validate, with the drive named.
    let err = r.put_drive(drive("has space", false)).unwrap_err();
    assert!(
        matches!(
            &err,
            ResourceError::Drive {
                why: DiskError::Id(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("drive \"has space\": id "), "{err}");
    let mut empty = drive("e", false);
    empty.path_on_host = Some(PathBuf::new());
    assert!(matches!(
        r.put_drive(empty).unwrap_err(),
        ResourceError::Drive {
            why: DiskError::NoPath,
            ..
        }
    ));
    let mut zero_refill = drive("z", false);
    zero_refill.rate_limiter = Some(RateLimiterConfig {
        ops: Some(TokenBucketConfig {
            size: 5,
            one_time_burst: None,
            refill_time: 0,
        }),
        bandwidth: None,
    });
    assert!(matches!(
        r.put_drive(zero_refill).unwrap_err(),
        ResourceError::Drive {
            why: DiskError::RateLimit(_),
            ..
        }
    ));
}

#[test]
fn drives_are_patched_before_boot() {
    let mut r = booting();
    let mut d = drive("data", false);
    d.rate_limiter = Some(RateLimiterConfig {
        ops: limit(100).bandwidth,
        bandwidth: limit(1 << 20).bandwidth,
    });
    r.put_drive(d).unwrap();
    r.update_drive(&PartialDrive {
        drive_id: "data".into(),
        path_on_host: Some("/img/new".into()),
        rate_limiter: None,
    })
    .unwrap();
    assert_eq!(r.drives()[0].path_on_host, Some(PathBuf::from("/img/new")));

    // A bucket given replaces that bucket; size 0 turns it off; the other
    // bucket stays.
    let patch = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 0,
            one_time_burst: None,
            refill_time: 0,
        }),
        ops: None,
    };
    r.update_drive(&PartialDrive {
        drive_id: "data".into(),
        path_on_host: None,
        rate_limiter: Some(patch),
    })
    .unwrap();
    let limits = r.vm_config().unwrap().disks[0].block.rate_limiter;
    assert_eq!(limits.bandwidth, None);
    assert_eq!(limits.ops.map(|b| b.size), Some(100));
    assert_eq!(
        r.vm_config().unwrap().disks[0].block.path,
        PathBuf::from("/img/new")
    );

    let err = r
        .update_drive(&PartialDrive {
            drive_id: "nope".into(),
            ..PartialDrive::default()
        })
        .unwrap_err();
    assert_eq!(err, ResourceError::UnknownDrive("nope".into()));
    assert!(err.to_string().contains("PUT /drives/nope"));
}

#[test]
fn network_interfaces_are_put_in_place_and_patched() {
    let mut r = booting();
    r.put_net(net("eth0", "tap0")).unwrap();
    r.put_net(net("eth1", "tap1")).unwrap();
    let mut moved = net("eth0", "tap9");
    moved.guest_mac = Some("02:00:00:00:00:09".into());
    r.put_net(moved).unwrap();
    let vm = r.vm_config().unwrap();
    assert_eq!(
        vm.nets.iter().map(|n| n.tap.as_str()).collect::<Vec<_>>(),
        ["tap9", "tap1"]
    );
    assert_eq!(vm.nets[0].mac.unwrap().to_string(), "02:00:00:00:00:09");

    r.update_net(&PartialNetworkInterface {
        iface_id: "eth1".into(),
        rx_rate_limiter: Some(limit(4096)),
        tx_rate_limiter: Some(RateLimiterConfig::default()),
    })
    .unwrap();
    let card = &r.vm_config().unwrap().nets[1];
    assert_eq!(card.rx_rate_limiter, limit(4096));
    assert!(!card.tx_rate_limiter.is_limited());
    let err = r
        .update_net(&PartialNetworkInterface {
            iface_id: "eth7".into(),
            ..PartialNetworkInterface::default()
        })
        .unwrap_err();
    assert_eq!(err, ResourceError::UnknownNet("eth7".into()));

    let before = r.clone();
    assert_eq!(
        r.put_net(net("eth2", "tap1")).unwrap_err(),
        ResourceError::from(ConfigError::SharedTap("tap1".into()))
    );
    let mut mtu = net("eth2", "tap2");
    mtu.mtu = Some(9000);
    assert!(r
        .put_net(mtu)
        .unwrap_err()
        .to_string()
        .contains("mtu is not supported"));
    let mut bad_mac = net("eth2", "tap2");
    bad_mac.guest_mac = Some("AA:FC:00:00:00".into());
    let err = r.put_net(bad_mac).unwrap_err();
    assert!(
        matches!(
            &err,
            ResourceError::Net {
                why: NetError::Mac(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("network interface \"eth2\": MAC address"),
        "{err}"
    );
    assert!(matches!(
        r.put_net(net("eth2", "tap/2")).unwrap_err(),
        ResourceError::Net {
            why: NetError::TapName(_),
            ..
        }
    ));
    assert_eq!(r, before);
}

#[test]
fn ids_are_unique_across_drives_and_cards() {
    let mut r = booting();
    r.put_drive(drive("data", false)).unwrap();
    assert_eq!(
        r.put_net(net("data", "tap0")).unwrap_err(),
        ResourceError::from(ConfigError::Id(IdError::Duplicate("data".into())))
    );
    assert!(r.network_interfaces().is_empty());
}

#[test]
fn the_machine_config_is_put_patched_and_refused_by_name() {
    let mut r = VmResources::default();
    r.set_machine_config(MachineConfig {
        vcpu_count: 4,
        mem_size_mib: 512,
        ..MachineConfig::default()
    })
    .unwrap();
    r.update_machine_config(&MachineConfigUpdate {
        mem_size_mib: Some(1024),
        cpu_template: Some(CpuTemplate::None),
        ..MachineConfigUpdate::default()
    })
    .unwrap();
    assert_eq!(
        serde_json::to_value(r.machine_config()).unwrap(),
        serde_json::json!({"vcpu_count": 4, "mem_size_mib": 1024, "smt": false,
                           "track_dirty_pages": false, "cpu_template": "None",
                           "huge_pages": "None"})
    );
    assert_eq!(
        r.update_machine_config(&MachineConfigUpdate::default()),
        Err(ResourceError::EmptyPatch)
    );

    let before = r.clone();
    for (update, why) in [
        (
            MachineConfigUpdate {
                smt: Some(true),
                ..MachineConfigUpdate::default()
            },
            "machine-config smt",
        ),
        (
            MachineConfigUpdate {
                track_dirty_pages: Some(true),
                ..MachineConfigUpdate::default()
            },
            "snapshots",
        ),
        (
            MachineConfigUpdate {
                cpu_template: Some(CpuTemplate::T2),
                ..MachineConfigUpdate::default()
            },
            "cpu_template T2 is not supported",
        ),
        (
            MachineConfigUpdate {
                huge_pages: Some(HugePages::Hugetlbfs2M),
                ..MachineConfigUpdate::default()
            },
            "huge_pages 2M is not supported",
        ),
        (
            MachineConfigUpdate {
                vcpu_count: Some(0),
                ..MachineConfigUpdate::default()
            },
            "machine-config vcpu_count: ",
        ),
        (
            MachineConfigUpdate {
                vcpu_count: Some(255),
                ..MachineConfigUpdate::default()
            },
            "more than kiln supports (254)",
        ),
        (
            MachineConfigUpdate {
                mem_size_mib: Some(1),
                ..MachineConfigUpdate::default()
            },
            "machine-config mem_size_mib: ",
        ),
    ] {
        let err = r.update_machine_config(&update).unwrap_err().to_string();
        assert!(err.contains(why), "{update:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(r, before, "{update:?} left a trace");
    }
}

#[test]
fn vsock_is_checked_by_kilns_rules() {
    let mut r = booting();
    r.set_vsock(Vsock {
        guest_cid: 3,
        uds_path: "/tmp/v.sock".into(),
        vsock_id: Some("root".into()),
    })
    .unwrap();
    r.set_vsock(Vsock {
        guest_cid: 9,
        uds_path: "/tmp/w.sock".into(),
        vsock_id: None,
    })
    .unwrap();
    assert_eq!(r.vm_config().unwrap().vsock.unwrap().cid, 9);
    assert_eq!(
        r.set_vsock(Vsock {
            guest_cid: 2,
            uds_path: "/tmp/v.sock".into(),
            vsock_id: None,
        }),
        Err(ResourceError::Vsock(VsockError::ReservedCid(2)))
    );
    let err = r
        .set_vsock(Vsock {
            guest_cid: 3,
            uds_path: "/nonexistent-kiln-dir/v.sock".into(),
            vsock_id: None,
        })
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("vsock: the directory"), "{err}");
}

#[test]
fn boot_args_are_checked_when_put() {
    let mut r = booting();
    let err = r
        .set_boot_source(BootSource {
            kernel_image_path: "k".into(),
            initrd_path: None,
            boot_args: Some("a".repeat(4096)),
        })
        .unwrap_err();
    assert!(
        matches!(&err, ResourceError::Config(why) if matches!(**why, ConfigError::CmdlineTooLong { .. })),
        "{err}"
    );
    assert_eq!(
        r.boot_source().unwrap().kernel_image_path,
        PathBuf::from("/vmlinux")
    );
}

#[test]
fn config_files_ignore_unknown_keys_and_refuse_features_kiln_lacks() {
    let base = r#""boot-source": {"kernel_image_path": "k"}"#;
    let file = VmResources::from_config_file(&format!(
        r#"{{{base}, "balloon": null, "pmem": [], "serial": {{"serial_out_path": "x"}}, "future-key": 1}}"#
    ))
    .unwrap();
    assert!(file.resources.drives().is_empty(), "drives may be left out");

    for key in [
        "balloon",
        "cpu-config",
        "mmds-config",
        "entropy",
        "memory-hotplug",
    ] {
        let err = VmResources::from_config_file(&format!(r#"{{{base}, "{key}": {{}}}}"#)).unwrap_err();
        assert_eq!(err, ResourceError::UnsupportedKey(key));
    }
    let err = VmResources::from_config_file(&format!(r#"{{{base}, "pmem": [{{"id": "p"}}]}}"#)).unwrap_err();
    assert_eq!(err, ResourceError::UnsupportedKey("pmem"));

    for (text, why) in [
        ("{}", "missing field `boot-source`"),
        ("{", "EOF while parsing"),
        (
            r#"{"boot-source": {"kernel_image_path": "k", "bogus": 1}}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "k"}, "drives": {}}"#,
            "invalid type: map",
        ),
    ] {
        let err = VmResources::from_config_file(text).unwrap_err().to_string();
        assert!(
            err.starts_with("the config file is not valid: ") && err.contains(why),
            "{text}: {err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    let err = VmResources::from_config_file(&format!(
        r#"{{{base}, "metrics": {{"metrics_path": "m", "emit_id": true}}}}"#
    ))
    .unwrap_err();
    assert!(err.to_string().contains("emit_id"), "{err}");
    let err = VmResources::from_config_file(&format!(
        r#"{{{base}, "drives": [{{"drive_id": "a", "path_on_host": "a", "is_root_device": true}},
                                {{"drive_id": "b", "path_on_host": "b", "is_root_device": true}}]}}"#
    ))
    .unwrap_err();
    assert!(matches!(err, ResourceError::SecondRoot { .. }), "{err}");
}

#[test]
fn path_ids_must_match_body_ids() {
    assert_eq!(check_path_id("rootfs", "rootfs"), Ok(()));
    let err = check_path_id("rootfs", "root").unwrap_err().to_string();
    assert_eq!(
        err,
        "the id in the path (\"rootfs\") differs from the one in the body (\"root\"); make them the same"
    );
}
