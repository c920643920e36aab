//! kiln on the real /dev/kvm with tiny guests assembled by the test. These
//! run in milliseconds, on hardware KVM and on PVM hosts alike.

mod common;

use std::time::Duration;

use common::{assemble, boot, run_kiln, scratch, PUTS, RESET};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn prints_through_the_uart_and_resets_with_status_zero() {
    let dir = scratch("hello");
    let src = format!(
        ".code64\n.globl _start\n_start:\n    lea msg(%rip), %rsi\n    call puts\n{RESET}{PUTS}msg: .asciz \"hello from a tiny guest\\n\"\n"
    );
    let out = boot(&assemble(&dir, "hello", &src), &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hello from a tiny guest\n");
    assert!(out.stderr.is_empty(), "unexpected stderr: {}", out.stderr);
}

/// `rep outsb` hands KVM's exit a whole string at once; every byte of it
/// must reach the console, not only the first.
#[test]
fn rep_outsb_prints_the_whole_string() {
    let dir = scratch("outsb");
    let src = format!(
        r#"
    .code64
    .globl _start
_start:
    cld
    lea msg(%rip), %rsi
    mov $(msg_end - msg), %rcx
    mov $0x3f8, %dx
    rep outsb
{RESET}msg: .ascii "string port I/O, every byte of it\n"
msg_end:
"#
    );
    let out = boot(&assemble(&dir, "outsb", &src), &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "string port I/O, every byte of it\n");
}

/// `rep insb` from COM1: first 4 reads of the scratch register (each must
/// see it), then, once input is ready, 5 bytes from the receive FIFO (each
/// must pop one byte). Prints what it read with plain `out`s.
const INSB_GUEST: &str = r#"
    .code64
    .globl _start
_start:
    cld
    mov $0x3ff, %dx            # scratch register
    mov $'s', %al
    out %al, %dx
    mov $0x6000, %rdi
    mov $4, %rcx
    rep insb
    mov $0x3fd, %dx            # LSR
wait:
    in %dx, %al
    test $1, %al               # data ready
    jz wait
    mov $0x3f8, %dx
    mov $5, %rcx
    rep insb
    mov $0x6000, %rsi
    mov $9, %rcx
print:
    lodsb
    out %al, %dx
    dec %rcx
    jnz print
    mov $0xfe, %al
    out %al, $0x64
    hlt
"#;

#[test]
fn rep_insb_reads_every_byte() {
    let dir = scratch("insb");
    let guest = assemble(&dir, "insb", INSB_GUEST);
    // One write: the UART gets all 5 bytes before the guest sees any.
    let out = common::boot_with_input(&guest, &[], Some(b"kiln\n"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "sssskiln\n");
}

#[test]
fn triple_fault_is_a_clear_nonzero_exit() {
    let dir = scratch("triple");
    // With an empty IDT, #UD cannot be delivered: #GP, #DF, then shutdown.
    let src = ".code64\n.globl _start\n_start:\n    ud2\n";
    let out = boot(&assemble(&dir, "triple", src), &[]);
    assert_eq!(out.code, Some(4), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {}", out.stderr);
    assert!(lines[0].contains("triple-fault"), "{}", lines[0]);
}

/// The BSP copies a real-mode trampoline to 0x10000, wakes the APs with
/// INIT + SIPI, and each CPU writes its CPUID APIC ID as one digit to
/// COM1; the BSP waits for every AP to check in, then resets.
fn smp_guest_source() -> String {
    format!(
        r#"
    .code64
    .globl _start
_start:
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %bl, %al
    add $'0', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    dec %ebx                  # APs expected
    lea ap_start(%rip), %rsi
    mov $0x10000, %rdi
    mov $(ap_end - ap_start), %rcx
    rep movsb
    movw $0, 0x5000
    mov $0xfee00300, %rax
    movl $0x000c4500, (%rax)  # INIT to all but self
    movl $0x000c4610, (%rax)  # SIPI, vector 0x10 -> 0x10000
wait:
    movzwl 0x5000, %ecx
    cmp %ebx, %ecx
    jb wait
    mov $'\n', %al
    mov $0x3f8, %dx
    out %al, %dx
{RESET}
    .code16
ap_start:
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %bl, %al
    add $'0', %al
    mov $0x3f8, %dx
    out %al, %dx
    xor %ax, %ax
    mov %ax, %ds
    lock incw 0x5000
1:  hlt
    jmp 1b
ap_end:
"#
    )
}

#[test]
fn every_vcpu_reports_its_own_apic_id() {
    let dir = scratch("smp");
    let guest = assemble(&dir, "smp", &smp_guest_source());
    for cpus in [2u8, 4] {
        let n = cpus.to_string();
        let out = boot(&guest, &["--cpus", &n]);
        assert_eq!(out.code, Some(0), "cpus={cpus} stderr: {}", out.stderr);
        let mut ids: Vec<char> = out.stdout.trim_end().chars().collect();
        ids.sort_unstable();
        let want: Vec<char> = (0..cpus).map(|i| char::from(b'0' + i)).collect();
        assert_eq!(ids, want, "cpus={cpus} stdout: {:?}", out.stdout);
    }
}

/// Prints the command line from the zero page, then the sum of the e820
/// RAM entries as 16 hex digits.
fn zero_page_guest_source() -> String {
    format!(
        r#"
    .code64
    .globl _start
_start:
    mov %rsi, %r15             # zero page
    mov 0x228(%r15), %esi      # hdr.cmd_line_ptr
    call puts
    mov $'\n', %al
    out %al, %dx
    movzbl 0x1e8(%r15), %ecx   # e820_entries
    lea 0x2d0(%r15), %r8       # e820_table, 20-byte entries
    xor %r9, %r9
sum:
    test %ecx, %ecx
    jz print
    cmpl $1, 16(%r8)
    jne 3f
    add 8(%r8), %r9
3:  add $20, %r8
    dec %ecx
    jmp sum
print:
    mov $16, %ecx
    mov $0x3f8, %dx
hex:
    rol $4, %r9
    mov %r9b, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 4f
    add $('a' - '0' - 10), %al
4:  out %al, %dx
    dec %ecx
    jnz hex
    mov $'\n', %al
    out %al, %dx
{RESET}{PUTS}"#
    )
}

#[test]
fn zero_page_carries_the_cmdline_and_memory_size() {
    let dir = scratch("zeropage");
    let guest = assemble(&dir, "zp", &zero_page_guest_source());
    for mib in [64u64, 200] {
        let cmdline = format!("console=ttyS0 kiln.test={mib}");
        let m = mib.to_string();
        let out = run_kiln(
            &[
                "boot",
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                &m,
                "--cmdline",
                &cmdline,
            ],
            TIMEOUT,
        );
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], cmdline);
        // All RAM but the 0x9fc00..0x100000 BIOS hole.
        let want = (mib << 20) - (0x10_0000 - 0x9_fc00);
        assert_eq!(u64::from_str_radix(lines[1], 16).unwrap(), want, "{lines:?}");
    }
}

/// A tiny guest that carries a "Linux" ELF note, as every vmlinux does.
fn linux_lookalike_source() -> String {
    format!(
        ".code64\n.globl _start\n_start:\n    lea msg(%rip), %rsi\n    call puts\n{RESET}{PUTS}msg: .asciz \"ran\\n\"\n\
         .section .note.Linux, \"a\", @note\n.balign 4\n.long 6, 4, 1\n.asciz \"Linux\"\n.balign 4\n.long 0\n"
    )
}

#[test]
fn linux_kernel_on_a_pvm_host_is_refused_in_one_line() {
    let dir = scratch("pvm");
    let guest = assemble(&dir, "linuxish", &linux_lookalike_source());
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let out = boot(&guest, &[]);
    if pvm {
        assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("PVM") && out.stderr.contains("nested-host"),
            "{}",
            out.stderr
        );
        assert!(out.elapsed < Duration::from_secs(5));
    } else {
        assert_eq!(out.code, Some(0), "hardware KVM boots it: {}", out.stderr);
    }
    // --force runs it anyway; a tiny guest is fine under PVM.
    let forced = boot(&guest, &["--force"]);
    assert_eq!(forced.code, Some(0), "stderr: {}", forced.stderr);
    assert_eq!(forced.stdout, "ran\n");
}

#[test]
fn sigterm_stops_a_stuck_guest_cleanly() {
    let dir = scratch("sigterm");
    for (name, body) in [
        ("halted", "    cli\n1:  hlt\n    jmp 1b\n"),
        ("spinning", "1:  jmp 1b\n"),
    ] {
        let guest = assemble(&dir, name, &format!(".code64\n.globl _start\n_start:\n{body}"));
        let mut child = std::process::Command::new(common::kiln())
            .args([
                "boot",
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "64",
                "--cpus",
                "2",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("{name}: kiln ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{name}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(err.trim(), "kiln: stopped by signal 15", "{name}");
    }
}

#[test]
fn acpi_s5_powers_off_with_status_zero() {
    let dir = scratch("s5");
    // SLP_TYP 5 | SLP_EN to the hardware-reduced sleep control register.
    let src = ".code64\n.globl _start\n_start:\n    mov $0x34, %al\n    mov $0x600, %dx\n    out %al, %dx\n1:  hlt\n    jmp 1b\n";
    let out = boot(&assemble(&dir, "s5", src), &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn pvpanic_is_a_distinct_nonzero_exit() {
    let dir = scratch("pvpanic");
    let src = ".code64\n.globl _start\n_start:\n    mov $1, %al\n    mov $0x505, %dx\n    out %al, %dx\n1:  hlt\n    jmp 1b\n";
    let out = boot(&assemble(&dir, "panic", src), &[]);
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "kiln: the guest kernel panicked (reported via pvpanic)"
    );
}

/// Prints the 8-byte signature at boot_params.acpi_rsdp_addr, or "none".
fn rsdp_guest_source() -> String {
    format!(
        r#"
    .code64
    .globl _start
_start:
    mov 0x70(%rsi), %rbx       # acpi_rsdp_addr
    test %rbx, %rbx
    jz none
    mov $8, %ecx
    mov $0x3f8, %dx
1:  mov (%rbx), %al
    out %al, %dx
    inc %rbx
    dec %ecx
    jnz 1b
    jmp done
none:
    lea nomsg(%rip), %rsi
    call puts
done:
{RESET}{PUTS}nomsg: .asciz "none"
"#
    )
}

#[test]
fn acpi_rsdp_is_passed_unless_no_acpi() {
    let dir = scratch("rsdp");
    let guest = assemble(&dir, "rsdp", &rsdp_guest_source());
    let out = boot(&guest, &["--cpus", "2"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "RSD PTR "),
        "{}",
        out.stderr
    );
    let out = boot(&guest, &["--no-acpi"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "none"),
        "{}",
        out.stderr
    );
}

/// Echoes COM1 input back, upper-cased, until a newline, then resets.
const ECHO_GUEST: &str = r#"
    .code64
    .globl _start
_start:
    mov $0x3f8, %dx
wait:
    add $5, %dx            # LSR
    in %dx, %al
    sub $5, %dx
    test $1, %al           # data ready
    jz wait
    in %dx, %al
    cmp $'a', %al
    jb 1f
    cmp $'z', %al
    ja 1f
    sub $32, %al
1:  out %al, %dx
    cmp $'\n', %al
    jne wait
    mov $0xfe, %al
    out %al, $0x64
    hlt
"#;

#[test]
fn host_input_reaches_the_guest_without_loss() {
    let dir = scratch("echo");
    let guest = assemble(&dir, "echo", ECHO_GUEST);
    // More than the UART's 64-byte FIFO at once: the rest must wait, not
    // drop. A lost byte would leave the guest waiting for its newline until
    // the deadline.
    let text = "the quick brown fox jumps over the lazy dog ".repeat(8);
    let out = common::boot_with_input(&guest, &[], Some(format!("{text}\n").as_bytes()));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("{}\n", text.to_uppercase()));
}

#[test]
fn a_prompt_without_newline_shows_while_the_guest_runs() {
    use std::io::Read;
    let dir = scratch("prompt");
    let src = format!(
        ".code64\n.globl _start\n_start:\n    lea msg(%rip), %rsi\n    call puts\n1:  jmp 1b\n{PUTS}msg: .asciz \"login: \"\n"
    );
    let guest = assemble(&dir, "prompt", &src);
    let mut child = std::process::Command::new(common::kiln())
        .args(["boot", "--kernel", guest.to_str().unwrap(), "--memory", "64"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"login: ") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let start = std::time::Instant::now();
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reader.join().unwrap(), b"login: ", "the prompt was held back");
}

/// The guest prints forever; kiln's stdout is a pipe nobody reads. Once the
/// pipe is full, guest output must neither block the vCPU inside the UART
/// nor the event loop behind it: SIGTERM still stops kiln, promptly. (kiln
/// used to write from the vCPU thread under the UART's lock, which the
/// event loop then waited for: SIGTERM went unanswered for good.)
#[test]
fn sigterm_stops_a_guest_printing_to_an_unread_pipe() {
    let dir = scratch("unread");
    let src = format!(
        ".code64\n.globl _start\n_start:\n1:  lea msg(%rip), %rsi\n    call puts\n    jmp 1b\n{PUTS}msg: .asciz \"a guest that prints forever, read or not\\n\"\n"
    );
    let guest = assemble(&dir, "spam", &src);
    let mut child = common::KillOnDrop(
        std::process::Command::new(common::kiln())
            .args(["boot", "--kernel", guest.to_str().unwrap(), "--memory", "64"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Held open, never read.
    let unread = child.0.stdout.take().unwrap();
    // Full to within a line (a pipe takes a short write whole or not at all).
    let capacity = common::shrink_pipe(&unread);
    common::wait_for_queued(&unread, capacity - 64, Duration::from_secs(10));
    // The guest goes on printing into the full pipe for a while.
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let status = common::wait_or_kill(&mut child.0, Duration::from_secs(2))
        .expect("kiln ignored SIGTERM while its output pipe was full");
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err.trim(), "kiln: stopped by signal 15");
    eprintln!("stopped {elapsed:?} after SIGTERM");
}

/// The design card: one event-loop thread and one thread per vCPU, nothing
/// else, also while guest output waits for a reader that does not read
/// (kiln once wrote the console from a thread of its own).
#[test]
fn a_vm_runs_one_thread_per_vcpu_beside_the_event_loop() {
    let dir = scratch("threads");
    let src = format!(
        ".code64\n.globl _start\n_start:\n1:  lea msg(%rip), %rsi\n    call puts\n    jmp 1b\n{PUTS}msg: .asciz \"counting threads\\n\"\n"
    );
    let guest = assemble(&dir, "spam", &src);
    let mut child = common::KillOnDrop(
        std::process::Command::new(common::kiln())
            .args([
                "boot",
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "64",
                "--cpus",
                "2",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let unread = child.0.stdout.take().unwrap();
    let capacity = common::shrink_pipe(&unread);
    common::wait_for_queued(&unread, capacity - 64, Duration::from_secs(10));
    // KVM's own workers (kvm-nx-lpage-recovery, a vhost task since Linux
    // 6.13) show up among the tasks too: flagged PF_USER_WORKER.
    const PF_USER_WORKER: u64 = 0x4000;
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", child.0.id())).unwrap() {
        let path = task.unwrap().path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // The flags are the 7th field after the parenthesised name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let flags: u64 = after_name.split(' ').nth(6).unwrap().parse().unwrap();
        if flags & PF_USER_WORKER == 0 {
            names.push(
                std::fs::read_to_string(path.join("comm"))
                    .unwrap()
                    .trim()
                    .to_string(),
            );
        }
    }
    names.sort();
    assert_eq!(
        names,
        ["kiln", "kiln-vcpu0", "kiln-vcpu1"],
        "the event loop and 2 vCPU threads"
    );
}

/// 32 numbered lines of 4 KiB; before each, the guest waits for the UART's
/// transmitter-empty bit, as a driver does, and counts the waits. Then it
/// says whether it was ever held back, and resets once it gets a byte of
/// input.
fn burst_guest_source() -> String {
    format!(
        r#"
    .code64
    .globl _start
_start:
    cld
    xor %r12d, %r12d           # line number
    xor %r13d, %r13d           # times the transmitter was busy
next:
    lea line(%rip), %rdi       # 8 hex digits of the line number
    mov %r12d, %ebx
    mov $8, %ecx
hex:
    rol $4, %ebx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $('a' - '0' - 10), %al
1:  stosb
    dec %ecx
    jnz hex
    mov $0x3fd, %dx            # LSR
wait:
    in %dx, %al
    test $0x20, %al            # transmitter holding register empty
    jnz send
    inc %r13
    jmp wait
send:
    mov $0x3f8, %dx
    lea line(%rip), %rsi
    mov $4096, %rcx
    rep outsb
    inc %r12d
    cmp $32, %r12d
    jb next
    lea held(%rip), %rsi
    test %r13, %r13
    jnz 2f
    lea free(%rip), %rsi
2:  call puts
    mov $0x3fd, %dx
3:  in %dx, %al
    test $1, %al               # data ready
    jz 3b
{RESET}{PUTS}
held: .asciz "held back\n"
free: .asciz "never held back\n"
line:
    .ascii "00000000"
    .rept 4087
    .byte 'a' + (. - line) % 26
    .endr
    .byte '\n'
"#
    )
}

/// The guest prints faster than kiln's output is read: the UART holds it
/// back instead of dropping output, and every byte arrives, in order. (A
/// guest blocked inside its `out` instead, as kiln used to do, never sees
/// the transmitter busy.)
#[test]
fn output_faster_than_the_reader_holds_the_guest_back_and_arrives_intact() {
    use std::io::{Read, Write};
    let dir = scratch("burst");
    let guest = assemble(&dir, "burst", &burst_guest_source());
    let mut child = common::KillOnDrop(
        std::process::Command::new(common::kiln())
            .args(["boot", "--kernel", guest.to_str().unwrap(), "--memory", "64"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    // A small pipe: kiln's own buffer, not the kernel's, takes the backlog.
    common::shrink_pipe(&stdout);
    // Not reading until kiln holds 64 KiB, 16 lines: the first line's time
    // tells how fast this host runs the guest. Reading late is safe: past
    // a second the stalled reader frees the guest, which then waits for
    // input, its 128 KiB all buffered.
    let first_line = common::wait_for_queued(&stdout, 4096, Duration::from_secs(20));
    std::thread::sleep((first_line * 30).clamp(Duration::from_millis(500), Duration::from_secs(10)));
    let tail: Vec<u8> = (8..4095).map(|i| b'a' + (i % 26) as u8).collect();
    let mut want = Vec::new();
    for n in 0..32u32 {
        want.extend_from_slice(format!("{n:08x}").as_bytes());
        want.extend_from_slice(&tail);
        want.push(b'\n');
    }
    want.extend_from_slice(b"held back\n");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while got.len() < want.len() && !got.ends_with(b"never held back\n") {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.0.stdin.take().unwrap().write_all(b"x").unwrap();
    let status = common::wait_or_kill(&mut child.0, Duration::from_secs(20)).expect("kiln hung");
    let mut err = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(got.len(), want.len(), "bytes lost or added");
    assert!(got == want, "output corrupted");
}

/// The boot-timer page (0xc0000000) and the metrics' phase names, in order.
const BOOT_TIMER: &str = "    mov $0xc0000000, %rax\n";
const PHASES: [&str; 8] = [
    "process_start",
    "vm_created",
    "memory_mapped",
    "kernel_loaded",
    "devices_ready",
    "first_kvm_run",
    "user_space",
    "guest_exit",
];

/// Boots `body` (then a reset) with `--boot-timer --metrics`; returns the
/// outcome and the metrics record.
fn boot_timed(name: &str, body: &str) -> (common::Outcome, serde_json::Value) {
    let dir = scratch(name);
    let src =
        format!(".code64\n.globl _start\n_start:\n{BOOT_TIMER}{body}{RESET}{PUTS}msg: .asciz \"up\\n\"\n");
    let metrics = dir.join("metrics.json");
    let out = boot(
        &assemble(&dir, name, &src),
        &["--boot-timer", "--metrics", metrics.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let text = std::fs::read_to_string(&metrics).expect("kiln wrote --metrics");
    (out, serde_json::from_str(&text).expect("--metrics is JSON"))
}

/// A one-byte write of 123 (after a 7, before a second 123) gives one
/// `--boot-timer` line, and `--metrics` has every phase, in boot order.
#[test]
fn boot_timer_write_is_reported_and_metrics_have_every_phase_in_order() {
    let body = "    movb $7, (%rax)\n    movb $123, (%rax)\n    movb $123, (%rax)\n    lea msg(%rip), %rsi\n    call puts\n";
    let (out, record) = boot_timed("boot-timer", body);
    assert_eq!(out.stdout, "up\n");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line: {}", out.stderr);
    assert!(
        lines[0].starts_with("kiln: boot: user space reached at "),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(" ms after start)"), "{}", lines[0]);
    for phase in &PHASES[1..6] {
        assert!(lines[0].contains(&format!("{phase} ")), "{phase}: {}", lines[0]);
    }
    let times: Vec<u64> = PHASES
        .iter()
        .map(|p| {
            record["phases_us"][p]
                .as_u64()
                .unwrap_or_else(|| panic!("{p} missing: {record}"))
        })
        .collect();
    assert_eq!(times[0], 0);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {record}");
    assert_eq!(record["exit_reason"], "reset");
    assert_eq!(record["exit_code"], 0);
    assert!(record["peak_rss_kib"].as_u64().is_some_and(|k| k > 0), "{record}");
    assert!(
        record["cpu_user_us"].is_u64() && record["cpu_sys_us"].is_u64(),
        "{record}"
    );
}

/// Other values, offsets and widths are not "user space reached".
#[test]
fn boot_timer_ignores_other_values_offsets_and_widths() {
    let body = "    movb $122, (%rax)\n    movb $124, (%rax)\n    movb $123, 1(%rax)\n    movw $123, (%rax)\n    movl $123, (%rax)\n";
    let (out, record) = boot_timed("boot-timer-ignored", body);
    assert!(out.stderr.is_empty(), "unexpected stderr: {}", out.stderr);
    assert!(record["phases_us"]["user_space"].is_null(), "{record}");
    for phase in ["first_kvm_run", "guest_exit"] {
        assert!(record["phases_us"][phase].is_u64(), "{phase}: {record}");
    }
}
