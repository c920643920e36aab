//! virtio-blk on the real /dev/kvm, driven by a tiny guest that is its own
//! virtio-mmio driver: it negotiates VERSION_1, sets up queue 0 with
//! statically laid out rings, reads sector 0, writes sector 1 and flushes,
//! polling the used ring (interrupts stay masked). Runs in milliseconds.

mod common;

use std::time::Duration;

use common::{assemble, boot, run_kiln, scratch, PUTS};

const TIMEOUT: Duration = Duration::from_secs(20);

const DRIVER_CODE: &str = r#"
    .code64
    .globl _start
    .set BASE, 0xd0000000
_start:
    mov $BASE, %rbx
    mov 0x00(%rbx), %eax
    cmp $0x74726976, %eax        # "virt"
    jne fail
    mov 0x08(%rbx), %eax
    cmp $2, %eax                 # block device
    jne fail
    movl $0, 0x70(%rbx)          # reset
    movl $3, 0x70(%rbx)          # ACKNOWLEDGE | DRIVER
    movl $1, 0x24(%rbx)          # driver features, high word
    movl $1, 0x20(%rbx)          # VERSION_1 (bit 32)
    movl $0, 0x24(%rbx)
    movl $0, 0x20(%rbx)
    movl $11, 0x70(%rbx)         # | FEATURES_OK
    mov 0x70(%rbx), %eax
    test $8, %eax
    jz fail
    movl $0, 0x30(%rbx)          # queue 0
    movl $8, 0x38(%rbx)          # 8 entries
    lea desc(%rip), %rax
    mov %eax, 0x80(%rbx)
    shr $32, %rax
    mov %eax, 0x84(%rbx)
    lea avail(%rip), %rax
    mov %eax, 0x90(%rbx)
    shr $32, %rax
    mov %eax, 0x94(%rbx)
    lea used(%rip), %rax
    mov %eax, 0xa0(%rbx)
    shr $32, %rax
    mov %eax, 0xa4(%rbx)
    movl $1, 0x44(%rbx)          # queue ready
    movl $15, 0x70(%rbx)         # | DRIVER_OK
    mov $0, %ecx                 # read sector 0
    call submit
    mov $3, %ecx                 # write sector 1
    call submit
    mov $6, %ecx                 # flush
    call submit
    lea buf0(%rip), %rsi
    movb $0, 16(%rsi)
    call puts
    mov $'\n', %al
    out %al, %dx
    movzbl st0(%rip), %eax
    call digit
    movzbl st1(%rip), %eax
    call digit
    movzbl st2(%rip), %eax
    call digit
    mov $'\n', %al
    out %al, %dx
    jmp reset
fail:
    lea failmsg(%rip), %rsi
    call puts
reset:
    mov $0xfe, %al
    out %al, $0x64
    hlt

# Publish chain head %ecx in the avail ring, notify, wait for the device.
submit:
    lea avail(%rip), %rdi
    movzwl 2(%rdi), %eax
    mov %eax, %edx
    and $7, %edx
    mov %cx, 4(%rdi,%rdx,2)
    inc %eax
    mov %ax, 2(%rdi)             # x86 keeps stores in order: ring, then idx
    movl $0, 0x50(%rbx)          # QUEUE_NOTIFY 0
    lea used(%rip), %rdi
1:  movzwl 2(%rdi), %edx
    cmp %ax, %dx
    jne 1b
    ret

digit:
    add $'0', %al
    mov $0x3f8, %dx
    out %al, %dx
    ret

    .data
    .balign 4096
desc:                            # addr, len, flags (1 NEXT, 2 WRITE), next
    .quad hdr0
    .long 16
    .word 1, 1
    .quad buf0
    .long 512
    .word 3, 2
    .quad st0
    .long 1
    .word 2, 0
    .quad hdr1
    .long 16
    .word 1, 4
    .quad buf1
    .long 512
    .word 1, 5
    .quad st1
    .long 1
    .word 2, 0
    .quad hdr2
    .long 16
    .word 1, 7
    .quad st2
    .long 1
    .word 2, 0
    .balign 4096
avail:
    .word 0, 0
    .fill 9, 2, 0
    .balign 4096
used:
    .word 0, 0
    .fill 8, 8, 0
    .word 0
    .balign 16
hdr0: .long 0, 0                 # IN, sector 0
    .quad 0
hdr1: .long 1, 0                 # OUT, sector 1
    .quad 1
hdr2: .long 4, 0                 # FLUSH
    .quad 0
    .balign 512
buf0: .fill 512, 1, 0
buf1: .ascii "WRITTEN-BY-GUEST"
    .fill 496, 1, 0x2e
st0: .byte 9
st1: .byte 9
st2: .byte 9
failmsg: .asciz "FAIL\n"
"#;

/// The driver with the shared `puts` routine appended to its code.
fn driver() -> String {
    let (code, data) = DRIVER_CODE
        .split_once("    .data")
        .expect("driver has a data section");
    format!("{code}{PUTS}    .data{data}")
}

fn image(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let mut data = vec![0u8; 1 << 20];
    data[..16].copy_from_slice(b"KILN-DISK-SECTOR");
    std::fs::write(&img, &data).unwrap();
    img
}

#[test]
fn guest_driver_reads_writes_and_flushes_a_disk() {
    let dir = scratch("virtio-rw");
    let guest = assemble(&dir, "driver", &driver());
    let img = image(&dir);
    let disk = format!("path={}", img.display());
    let out = boot(&guest, &["--disk", &disk]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "KILN-DISK-SECTOR\n000\n");
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[512..528], b"WRITTEN-BY-GUEST");
    assert_eq!(data.len(), 1 << 20);
}

#[test]
fn read_only_disk_refuses_the_write_and_is_untouched() {
    let dir = scratch("virtio-ro");
    let guest = assemble(&dir, "driver", &driver());
    let img = image(&dir);
    let before = std::fs::read(&img).unwrap();
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    let disk = format!("path={},readonly", img.display());
    let out = boot(&guest, &["--disk", &disk]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    // Read OK, write VIRTIO_BLK_S_IOERR, flush OK.
    assert_eq!(out.stdout, "KILN-DISK-SECTOR\n010\n");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), mtime);
}

/// Starts kiln on a spinning guest with `disk`; it holds the image until killed.
fn hold_image(dir: &std::path::Path, disk: &str) -> std::process::Child {
    let spin = assemble(dir, "spin", ".code64\n.globl _start\n_start:\n1:  jmp 1b\n");
    let child = std::process::Command::new(common::kiln())
        .args([
            "boot",
            "--kernel",
            spin.to_str().unwrap(),
            "--memory",
            "64",
            "--disk",
            disk,
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn a_locked_image_is_refused_unless_both_share_it() {
    let dir = scratch("virtio-lock");
    let img = image(&dir);
    let disk = format!("path={}", img.display());
    let shared = format!("{disk},shared=on");
    let mut holder = hold_image(&dir, &disk);
    let mut writer = hold_image(&dir, &disk);
    let mut sharer = hold_image(&dir, &shared);
    let writer_status = writer.try_wait().unwrap();
    let sharer_status = sharer.try_wait().unwrap();
    for c in [&mut holder, &mut writer, &mut sharer] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // A second writer is refused while the first runs, and so is one
    // asking to share, since the first did not allow it.
    assert_eq!(writer_status.and_then(|s| s.code()), Some(1));
    assert_eq!(sharer_status.and_then(|s| s.code()), Some(1));

    // Two that both allow sharing run side by side.
    let mut a = hold_image(&dir, &shared);
    let mut b = hold_image(&dir, &shared);
    let (a_status, b_status) = (a.try_wait().unwrap(), b.try_wait().unwrap());
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        a_status.is_none() && b_status.is_none(),
        "sharers exited: {a_status:?} {b_status:?}"
    );
}

#[test]
fn a_locked_image_error_is_one_clear_line() {
    let dir = scratch("virtio-lock-msg");
    let img = image(&dir);
    let disk = format!("path={}", img.display());
    let spin = assemble(&dir, "spin2", ".code64\n.globl _start\n_start:\n1:  jmp 1b\n");
    let mut first = hold_image(&dir, &disk);
    let second = run_kiln(
        &["boot", "--kernel", spin.to_str().unwrap(), "--disk", &disk],
        TIMEOUT,
    );
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert_eq!(second.stderr.lines().count(), 1, "{}", second.stderr);
    assert!(
        second.stderr.contains("in use") && second.stderr.contains("shared=on"),
        "{}",
        second.stderr
    );
}

#[test]
fn bad_disk_arguments_are_one_line_errors() {
    let dir = scratch("virtio-bad");
    let guest = assemble(&dir, "spin", ".code64\n.globl _start\n_start:\n    hlt\n");
    let k = guest.to_str().unwrap();
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let odd_spec = format!("path={}", odd.display());
    for (spec, code, needle) in [
        ("path=/nonexistent/disk.img", 1, "/nonexistent/disk.img"),
        (odd_spec.as_str(), 1, "512"),
        ("root", 2, "path=FILE is required"),
        ("path=x,cache=fast", 2, "cache"),
    ] {
        let out = run_kiln(
            &["boot", "--kernel", k, "--memory", "64", "--disk", spec],
            TIMEOUT,
        );
        assert_eq!(out.code, Some(code), "{spec}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{spec}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{spec}: {}", out.stderr);
    }
}
