//! Running untrusted commands with `kiln::Sandbox`: a command's output, a
//! spawned command with piped streams, and files in and out.
//!
//! ```text
//! cargo run --example sandbox -- [--kernel VMLINUX --initrd SANDBOX_INITRD]
//! ```
//! Without the flags it uses kiln's default sandbox guest (`kiln guest`
//! prints its KERNEL= and SANDBOX_INITRD=). Needs /dev/kvm that runs Linux.

use std::io::{Read, Write};
use std::time::Duration;

use kiln::{Sandbox, Stdio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Sandbox::builder()
        .memory_mib(256)
        .cpus(1)
        .timeout(Duration::from_secs(10));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        builder = match flag.as_str() {
            "--kernel" => builder.kernel(value),
            "--initrd" => builder.initrd(value),
            other => return Err(format!("unknown flag {other}").into()),
        };
    }
    let sandbox = builder.build()?;

    // Like std::process::Command::output: status, stdout and stderr.
    let out = sandbox
        .command("sh")
        .arg("-c")
        .arg("read name; echo \"hello, $name\"; echo to-stderr >&2; exit 3")
        .stdin("sandbox\n")
        .output()?;
    println!("status: {}", out.status);
    println!("stdout: {}", String::from_utf8_lossy(&out.stdout).trim_end());
    println!("stderr: {}", String::from_utf8_lossy(&out.stderr).trim_end());

    // A running command with piped streams.
    let mut child = sandbox
        .command("tr")
        .args(["a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(b"shouting from the guest\n")?;
    drop(stdin); // end-of-file
    let mut upper = String::new();
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut upper)?;
    println!("tr says: {} ({})", upper.trim_end(), child.wait()?);

    // Files in and out, binary-safe.
    let bytes: Vec<u8> = (0..=255).collect();
    sandbox.write_file("/work/in.bin", &bytes)?;
    let size = sandbox.command("wc").args(["-c", "/work/in.bin"]).output()?;
    println!("guest sees: {}", String::from_utf8_lossy(&size.stdout).trim_end());
    assert_eq!(sandbox.read_file("/work/in.bin")?, bytes);

    // Dropping the sandbox powers the guest off and frees everything.
    drop(sandbox);
    Ok(())
}
