//! The sandbox's figures (issue 10), run where Linux guests boot
//! (`tools/bench-sandbox` runs it inside the nested host on PVM machines):
//!
//! ```text
//! sandbox_bench --kiln KILN --kernel VMLINUX --initrd SANDBOX_INITRD [--runs N]
//! ```
//! - cold `kiln exec -- true`: N runs of the CLI, spawn to exit;
//! - per command in a live sandbox: N runs of `true` through one `Sandbox`;
//! - memory per idle sandbox: this process's RSS with one idle sandbox
//!   (VMM, vCPU and guest pages touched by the kernel and the agent) minus
//!   its RSS before.
//!
//! Prints `BENCH-SANDBOX` lines: min / median / p90 / max in ms, and KiB.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::Sandbox;

struct Args {
    kiln: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let (mut kiln, mut kernel, mut initrd, mut runs) = (None, None, None, 10);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kiln" => kiln = Some(PathBuf::from(value)),
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--runs" => runs = value.parse().map_err(|e| format!("--runs: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        kiln: kiln.ok_or("--kiln is required")?,
        kernel: kernel.ok_or("--kernel is required")?,
        initrd: initrd.ok_or("--initrd is required")?,
        runs: runs.max(1),
    })
}

/// min / median / p90 / max in ms (nearest rank).
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "min {:.1} / median {:.1} / p90 {:.1} / max {:.1} ms",
        ms(samples[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(samples[samples.len() - 1])
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn run(args: &Args) -> Result<(), String> {
    let mut cold = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        let status = Command::new(&args.kiln)
            .arg("exec")
            .arg("--kernel")
            .arg(&args.kernel)
            .arg("--initrd")
            .arg(&args.initrd)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", args.kiln.display()))?;
        cold.push(start.elapsed());
        if !status.success() {
            return Err(format!("kiln exec -- true: {status}"));
        }
    }
    println!(
        "BENCH-SANDBOX cold `kiln exec -- true` ({} runs): {}",
        args.runs,
        summary(cold)
    );

    let before = rss_kib();
    let sandbox = Sandbox::builder()
        .kernel(&args.kernel)
        .initrd(&args.initrd)
        .build()
        .map_err(|e| e.to_string())?;
    let mut warm = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        let status = sandbox.command("true").status().map_err(|e| e.to_string())?;
        warm.push(start.elapsed());
        if !status.success() {
            return Err(format!("true in the sandbox: {status}"));
        }
    }
    println!(
        "BENCH-SANDBOX per command in a live sandbox ({} runs): {}",
        args.runs,
        summary(warm)
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib().saturating_sub(before);
    println!(
        "BENCH-SANDBOX memory per idle sandbox (256 MiB guest, after {} commands): {idle} KiB RSS",
        args.runs
    );
    drop(sandbox);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|args| run(&args));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox_bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
