//! Ctrl+Alt+Del through the i8042 on the real /dev/kvm: a tiny guest polls
//! the controller for keyboard data, prints the scan codes it reads on the
//! serial console and resets, while the test presses the keys on the
//! running VM through a `DeviceCallQueue` hook on `BootHooks::on_running`
//! (as the API's `SendCtrlAltDel` reaches it), under the VMM's seccomp
//! filter.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assemble, scratch, waiting_guest, PUTS, RESET};
use kiln::config::VmConfig;
use kiln::exit::ExitReason;
use kiln::vmm::{self, BootHooks, ConsoleIo, DeviceCallError, DeviceCaller, StopHandle, VmmError};

/// Prints "ready", reads four keyboard bytes as the controller hands them
/// over (translated: set 1), turns translation off, prints "raw", reads
/// four more (set 2), and resets. Interrupts stay off: it polls bit 0 of
/// the status port, as Linux's i8042 driver does on its way in.
const GUEST: &str = r#"
    .code64
    .globl _start
_start:
    lea ready(%rip), %rsi
    call puts
    call read4
    mov $0x60, %al               # write the command byte...
    out %al, $0x64
    mov $0x05, %al               # ...keyboard interrupt, system flag, no translation
    out %al, $0x60
    lea raw(%rip), %rsi
    call puts
    call read4
"#;

const ROUTINES: &str = r#"
# Four bytes from port 0x60 as hex, then a newline.
read4:
    mov $4, %ecx
1:  in $0x64, %al
    test $1, %al
    jz 1b
    in $0x60, %al
    call hex
    dec %ecx
    jnz 1b
    mov $'\n', %al
    out %al, %dx
    ret

# %al as two hex digits and a space on COM1; clobbers %eax, %ebx, %dx, %rsi.
hex:
    movzbl %al, %ebx
    mov $0x3f8, %dx
    mov %ebx, %eax
    shr $4, %eax
    call nibble
    mov %ebx, %eax
    and $15, %eax
    call nibble
    mov $' ', %al
    out %al, %dx
    ret
nibble:
    lea digits(%rip), %rsi
    mov (%rsi,%rax), %al
    out %al, %dx
    ret
"#;

fn guest(dir: &Path) -> std::path::PathBuf {
    let src = format!(
        "{GUEST}{RESET}{ROUTINES}{PUTS}digits: .ascii \"0123456789abcdef\"\nready: .asciz \"ready\\n\"\nraw: .asciz \"raw\\n\"\n"
    );
    assemble(dir, "cad", &src)
}

/// Waits until the console file holds `text`; panics after 20 s.
fn wait_for(console: &Path, text: &str) {
    let start = Instant::now();
    loop {
        let seen = std::fs::read_to_string(console).unwrap_or_default();
        if seen.contains(text) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the guest never printed {text:?}; console: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Presses Ctrl+Alt+Del on the VMM thread and returns what
/// `send_ctrl_alt_del` said.
fn press(caller: &DeviceCaller) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    caller
        .call(move |devices| {
            let _ = tx.send(devices.send_ctrl_alt_del().map_err(|e| e.to_string()));
        })
        .expect("queue the call");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the VMM thread ran the call")
}

/// Runs `kernel` (64 MiB) on a thread of its own, its console to
/// `console`, with a device-call queue on the running VM.
fn start(
    kernel: PathBuf,
    console: &Path,
) -> (DeviceCaller, StopHandle, JoinHandle<Result<ExitReason, VmmError>>) {
    let mut config = VmConfig::new(kernel);
    config.memory_mib = 64;
    let (caller, queue) = vmm::device_calls().unwrap();
    let stop = StopHandle::new().unwrap();
    let hooks = BootHooks {
        stop: Some(stop.clone()),
        on_running: Some(queue.into_hook()),
        ..BootHooks::default()
    };
    let io = ConsoleIo {
        output: std::fs::File::create(console).unwrap().into(),
        input: None,
        raw_terminal: false,
        handle_signals: false,
        detach_teardown: false,
    };
    let vmm = std::thread::spawn(move || vmm::run_vm_with(&config, io, hooks));
    (caller, stop, vmm)
}

#[test]
fn ctrl_alt_del_reaches_a_polling_guest_in_the_set_it_reads() {
    let dir = scratch("ctrl-alt-del");
    let console = dir.join("console");
    let (caller, stop, vmm) = start(guest(&dir), &console);
    // Stops the VM if an assertion fails before it ends.
    struct StopOnDrop(StopHandle);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _guard = StopOnDrop(stop);

    wait_for(&console, "ready\n");
    press(&caller).unwrap();
    wait_for(&console, "raw\n");
    press(&caller).unwrap();
    let reason = vmm.join().unwrap().unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "ready\n1d 38 e0 53 \nraw\n14 11 e0 71 \n"
    );
    // The VM is gone: so is the way to its devices.
    assert!(matches!(caller.call(|_| {}), Err(DeviceCallError::Gone)));
}

/// A guest that never reads its keyboard fills the controller's buffer:
/// the press after that is refused with a one-line error, not queued.
#[test]
fn presses_a_guest_never_reads_are_refused_once_the_buffer_is_full() {
    let dir = scratch("ctrl-alt-del-full");
    let console = dir.join("console");
    let (caller, stop, vmm) = start(waiting_guest(&dir), &console);
    wait_for(&console, "up\n");
    let results: Vec<_> = (0..5).map(|_| press(&caller)).collect();
    stop.stop();
    assert_eq!(vmm.join().unwrap().unwrap(), ExitReason::Stopped);
    assert!(results[..4].iter().all(Result::is_ok), "{results:?}");
    let err = results[4].as_ref().unwrap_err();
    assert!(
        err.starts_with("cannot send Ctrl+Alt+Del: ") && err.contains("full") && !err.contains('\n'),
        "{err}"
    );
}
