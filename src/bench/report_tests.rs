use super::*;

fn sample(ready_us: u64, exit_us: u64, phases: &[(&str, u64)]) -> Sample {
    Sample {
        ready_us,
        exit_us,
        marker_us: Some(ready_us + 500),
        phases_us: phases.iter().map(|(n, us)| (n.to_string(), *us)).collect(),
    }
}

/// A report with a kiln row (phases), a runc row and a skipped crun,
/// shared with the plot's tests.
pub(crate) fn example() -> Report {
    let kiln = (1..=5)
        .map(|i| {
            sample(
                100_000 + i * 1000,
                150_000 + i * 1000,
                &[
                    ("vm_created", 200),
                    ("first_kvm_run", 1_300 + i),
                    ("user_space", 100_000 + i * 1000),
                    ("guest_exit", 140_000 + i * 1000),
                ],
            )
        })
        .collect();
    let runc = [50_000, 40_000, 60_000, 45_000, 55_000]
        .iter()
        .map(|&r| sample(r, r + 10_000, &[]))
        .collect();
    Report {
        mode: "nested".to_string(),
        mode_detail: "kvm_amd under a hypervisor".to_string(),
        runs: 5,
        kernel: "/k/vmlinux".to_string(),
        initrd: Some("/k/initramfs.cpio.gz".to_string()),
        cmdline: "console=ttyS0 quiet".to_string(),
        idle_mib: 64,
        memory_budget_kib: None,
        contenders: vec![
            ContenderResult {
                name: "kiln".to_string(),
                status: Status::Ok,
                samples: kiln,
                idle: None,
            },
            ContenderResult {
                name: "runc".to_string(),
                status: Status::Ok,
                samples: runc,
                idle: None,
            },
            ContenderResult {
                name: "crun".to_string(),
                status: Status::Skipped("crun cannot use this host's cgroups".to_string()),
                samples: Vec::new(),
                idle: None,
            },
        ],
    }
}

#[test]
fn table_has_stats_ratios_and_skip_reasons() {
    let table = example().table();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("5 runs") && lines[0].contains("mode nested"),
        "{table}"
    );
    assert!(
        lines[2].contains("vs runc") && lines[2].contains("vs kiln"),
        "{table}"
    );
    let kiln: Vec<&str> = lines[3].split_whitespace().collect();
    // name runs min median p90 max marker exit-median vs-runc vs-kiln
    assert_eq!(
        kiln,
        ["kiln", "5", "101.000", "103.000", "105.000", "105.000", "103.500", "153.000", "2.06x", "1.00x"]
    );
    let runc: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(
        runc,
        ["runc", "5", "40.000", "50.000", "60.000", "60.000", "50.500", "60.000", "1.00x", "0.49x"]
    );
    assert_eq!(
        lines[5],
        format!("{:<12} skipped: crun cannot use this host's cgroups", "crun")
    );
    assert_eq!(lines.len(), 6);
}

#[test]
fn table_without_a_container_shows_no_container_ratio() {
    let mut r = example();
    r.contenders.retain(|c| c.name == "kiln");
    let table = r.table();
    let kiln: Vec<&str> = table.lines().nth(3).unwrap().split_whitespace().collect();
    assert_eq!(kiln[8..], ["-", "1.00x"]);
}

#[test]
fn json_carries_mode_summaries_phases_and_samples() {
    let v: serde_json::Value = serde_json::from_str(&example().json()).unwrap();
    assert_eq!(v["mode"], "nested");
    assert_eq!(v["runs"], 5);
    assert_eq!(v["container_reference"], "runc");
    let kiln = &v["contenders"][0];
    assert_eq!(kiln["status"], "ok");
    assert_eq!(kiln["ready_us"]["median"], 103_000);
    assert_eq!(kiln["ready_us"]["p90"], 105_000);
    assert_eq!(kiln["phase_medians_us"]["first_kvm_run"], 1_303);
    assert_eq!(kiln["samples"].as_array().unwrap().len(), 5);
    assert_eq!(kiln["samples"][0]["phases_us"]["vm_created"], 200);
    let crun = &v["contenders"][2];
    assert_eq!(crun["status"], "skipped");
    assert_eq!(crun["reason"], "crun cannot use this host's cgroups");
    assert!(crun["ready_us"].is_null());
    // Phases keep boot order in the text, not alphabetical order.
    let text = example().json();
    assert!(text.find("\"vm_created\"").unwrap() < text.find("\"first_kvm_run\"").unwrap());
    assert!(text.find("\"user_space\"").unwrap() < text.find("\"guest_exit\"").unwrap());
}

#[test]
fn csv_has_a_row_per_run_and_empty_phase_cells_for_containers() {
    let csv = example().csv();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "contender,run,ready_us,exit_us,marker_us,vm_created_us,first_kvm_run_us,user_space_us,guest_exit_us"
    );
    assert_eq!(rows.len(), 1 + 5 + 5);
    assert_eq!(rows[1], "kiln,1,101000,151000,101500,200,1301,101000,141000");
    assert_eq!(rows[6], "runc,1,50000,60000,50500,,,,");
    assert!(rows.iter().all(|r| r.split(',').count() == 9));
}

#[test]
fn files_are_written_and_a_bad_directory_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("kiln-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let written = example().write_files(&dir).unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("boot.csv")).unwrap(),
        example().csv()
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = example().write_files(&dir).unwrap_err().to_string();
    assert!(e.starts_with("cannot write") && e.contains("--out"), "{e}");
}

/// `example()` with idle rows: kiln's measured, runc's failed.
pub(crate) fn with_idle() -> Report {
    let mut r = example();
    let m = |overhead_kib, total_kib| MemoryUse {
        overhead_kib,
        total_kib,
    };
    r.memory_budget_kib = Some(1 << 20);
    r.contenders[0].idle = Some(Ok(IdleSummary::from(IdleResult {
        instances: 2,
        all_ready_us: 400_000,
        memory: vec![m(3072, 20_480), m(2048, 12_288)],
    })));
    r.contenders[1].idle = Some(Err("runc failed".to_string()));
    r
}

#[test]
fn idle_rows_give_memory_rates_and_the_budget_fit() {
    let table = with_idle().table();
    let lines: Vec<&str> = table.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("2 idle instances"))
        .unwrap();
    assert!(lines[head].contains("guest memory 64 MiB"), "{table}");
    assert!(lines[head + 1].contains("fit 1024 MiB"), "{table}");
    let kiln: Vec<&str> = lines[head + 2].split_whitespace().collect();
    // Medians by nearest rank; 2 ready in 0.4 s; 1 GiB / 16 MiB mean.
    assert_eq!(kiln, ["kiln", "2.00", "12.00", "5.00", "64"]);
    assert_eq!(lines[head + 3], format!("{:<18} failed: runc failed", "runc"));
    let v: serde_json::Value = serde_json::from_str(&with_idle().json()).unwrap();
    assert_eq!(v["memory_budget_kib"], 1 << 20);
    assert_eq!(v["cmdline"], "console=ttyS0 quiet");
    assert_eq!(v["contenders"][0]["idle"]["overhead_kib"], 2048);
    assert_eq!(v["contenders"][0]["idle"]["memory"].as_array().unwrap().len(), 2);
    assert_eq!(v["contenders"][1]["idle_error"], "runc failed");
    assert!(v["contenders"][2].get("idle").is_none());
}

#[test]
fn peers_are_not_the_container_reference() {
    let mut r = example();
    r.contenders[1].name = "cloud-hypervisor".to_string();
    assert_eq!(r.container_reference(), None);
    // The longest name still leaves a space before its figures.
    let table = r.table();
    let row = table.lines().find(|l| l.starts_with("cloud-hypervisor")).unwrap();
    assert!(row.starts_with("cloud-hypervisor     5"), "{table}");
}

#[test]
fn ms_has_three_decimals() {
    assert_eq!(ms(0), "0.000");
    assert_eq!(ms(1_234_567), "1234.567");
    assert_eq!(ms(5), "0.005");
}
