//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*`: inputs
//! that take each target to the interesting states at once (an active
//! device with real requests, a queue near the index wrap, a minimal ELF
//! and bzImage, valid and invalid disk specs). The files are committed;
//! run this again after changing a target's input type:
//!
//!     cd fuzz && cargo run --example write_seeds
//!
//! Structured seeds are decoded with `arbitrary` before they are written,
//! so a seed always reads back as the operations listed here.

use std::fmt::Debug;
use std::path::Path;

use kiln::devices::virtio::block::request_type::{GET_ID, IN, OUT};
use kiln::devices::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use kiln::devices::virtio::VirtioDevice;
use kiln_fuzz::encode::{encode_rest, Encode};
use kiln_fuzz::mmio_input::{self as mmio, reg, Init};
use kiln_fuzz::queue_input as queue;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

fn write(target: &str, name: &str, bytes: &[u8]) {
    write_file(target, &format!("seed-{name}"), bytes);
}

fn write_file(target: &str, file: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), bytes).unwrap();
}

fn write_ops<T>(target: &str, name: &str, ops: &[T])
where
    T: Encode + for<'a> Arbitrary<'a> + PartialEq + Debug,
{
    let bytes = encode_rest(ops);
    let decoded = Vec::<T>::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
    assert_eq!(decoded, ops, "{target}/{name} does not read back");
    write(target, name, &bytes);
}

/// One descriptor as the guest stores it.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// A virtio-blk request header: type, reserved, sector.
fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// The first 16 bytes of an available ring: flags, idx, ring[0..6].
fn avail_ring(idx: u16, heads: &[u16]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[2..4].copy_from_slice(&idx.to_le_bytes());
    for (i, h) in heads.iter().enumerate() {
        a[4 + 2 * i..6 + 2 * i].copy_from_slice(&h.to_le_bytes());
    }
    a
}

// Where the seeds put things in guest memory (see kiln_fuzz::GUEST_REGIONS).
const DESC: u32 = 0x1000;
const AVAIL: u32 = 0x2000;
const USED: u32 = 0x3000;
const HDR: u64 = 0x4000;
const DATA: u64 = 0x5000;
const STATUS: u64 = 0x6000;
const INDIRECT_TABLE: u64 = 0x7000;

/// A three-descriptor request (header, data, status) at descriptors
/// `first..first + 3`.
fn request_descs(first: u16, kind: u32, data_len: u32) -> [[u8; 16]; 3] {
    let data_flags = if kind == OUT { 0 } else { VIRTQ_DESC_F_WRITE };
    [
        desc(HDR, 16, VIRTQ_DESC_F_NEXT, first + 1),
        desc(DATA, data_len, data_flags | VIRTQ_DESC_F_NEXT, first + 2),
        desc(STATUS, 1, VIRTQ_DESC_F_WRITE, 0),
    ]
}

fn mmio_seeds(offered: u64) {
    use mmio::Op;
    let init = |features, queue_size_log2| {
        Op::Init(Init {
            features,
            queue_size_log2,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            ready: true,
        })
    };
    let mem = |addr: u64, bytes: [u8; 16]| Op::WriteMem {
        addr: addr as u32,
        bytes,
    };
    let reg_index = |offset: u64| (offset / 4) as u8;
    let get_id: Vec<Op> = request_descs(0, GET_ID, 20)
        .iter()
        .enumerate()
        .map(|(i, d)| mem(u64::from(DESC) + 16 * i as u64, *d))
        .chain([
            mem(HDR, header(GET_ID, 0)),
            mem(u64::from(AVAIL), avail_ring(1, &[0])),
        ])
        .collect();

    let mut ops = vec![init(offered, 4)];
    ops.extend(get_id.clone());
    ops.push(Op::WriteReg {
        reg: reg_index(reg::QUEUE_NOTIFY),
        value: 0,
    });
    ops.push(Op::ReadReg {
        reg: reg_index(reg::INTERRUPT_STATUS),
    });
    write_ops("mmio_transport", "get-id", &ops);

    // A write then a read of the same sector, notified through the
    // ioeventfd path.
    let mut ops = vec![init(offered, 3)];
    for (i, d) in request_descs(0, OUT, 512)
        .iter()
        .chain(&request_descs(3, IN, 512))
        .enumerate()
    {
        ops.push(mem(u64::from(DESC) + 16 * i as u64, *d));
    }
    ops.push(mem(HDR, header(OUT, 1)));
    ops.push(mem(DATA, [0x5a; 16]));
    ops.push(mem(u64::from(AVAIL), avail_ring(1, &[0])));
    ops.push(Op::Notify { queue: 0 });
    ops.push(mem(HDR, header(IN, 1)));
    ops.push(mem(u64::from(AVAIL), avail_ring(2, &[0, 3])));
    ops.push(Op::Notify { queue: 0 });
    write_ops("mmio_transport", "write-read", &ops);

    // The layout registers written after DRIVER_OK must change nothing.
    let mut ops = vec![init(offered, 4)];
    for (offset, value) in [
        (reg::QUEUE_NUM, 2),
        (reg::QUEUE_DESC_LOW, 0x8000),
        (reg::QUEUE_DRIVER_LOW, 0x9000),
        (reg::QUEUE_DEVICE_LOW, 0xa000),
        (reg::QUEUE_READY, 1),
    ] {
        ops.push(Op::WriteReg {
            reg: reg_index(offset),
            value,
        });
    }
    ops.extend(get_id.clone());
    ops.push(Op::Notify { queue: 0 });
    write_ops("mmio_transport", "layout-after-driver-ok", &ops);

    // Features never offered, and a driver without VERSION_1: FEATURES_OK
    // must not stick and DRIVER_OK must not start the device.
    let ops = vec![
        init(offered | 1 << 63, 4),
        init(offered & !(1 << VIRTIO_F_VERSION_1), 4),
        init(offered, 4),
    ];
    write_ops("mmio_transport", "bad-features", &ops);

    // A reset while a request is outstanding, then a second life with a
    // two-entry queue elsewhere: its descriptor table straddles the first
    // two regions, its rings sit past the hole. One descriptor carries the
    // GET_ID data and the status byte.
    let mut ops = vec![init(offered, 4)];
    ops.extend(get_id.clone());
    ops.push(Op::WriteReg {
        reg: reg_index(reg::STATUS),
        value: 0,
    });
    ops.push(Op::Notify { queue: 0 });
    let (desc2, avail2) = (0xfff0u32, 0x2_1000u32);
    ops.push(Op::Init(Init {
        features: offered,
        queue_size_log2: 1,
        desc: desc2,
        avail: avail2,
        used: 0x2_2000,
        ready: true,
    }));
    ops.extend([
        mem(u64::from(desc2), desc(HDR, 16, VIRTQ_DESC_F_NEXT, 1)),
        mem(u64::from(desc2) + 16, desc(DATA, 21, VIRTQ_DESC_F_WRITE, 0)),
        mem(HDR, header(GET_ID, 0)),
        mem(u64::from(avail2), avail_ring(1, &[0])),
        Op::Notify { queue: 0 },
    ]);
    write_ops("mmio_transport", "reset-and-again", &ops);

    // Odd sizes and alignments on registers and the config space.
    let mut ops = Vec::new();
    for (offset, size) in [
        (0u16, 0u8),
        (0x70, 1),
        (0x72, 3),
        (0x100, 7),
        (0x104, 3),
        (0x13c, 7),
        (0xffe, 1),
    ] {
        ops.push(Op::Read { offset, size });
        ops.push(Op::Write {
            offset,
            size,
            value: u64::MAX,
        });
    }
    ops.push(init(offered, 8));
    ops.push(Op::Read {
        offset: 0x100,
        size: 7,
    });
    write_ops("mmio_transport", "odd-accesses", &ops);
}

fn queue_seeds() {
    use queue::Op;
    let descs = |first: u16, d: &[[u8; 16]]| -> Vec<Op> {
        d.iter()
            .enumerate()
            .map(|(i, d)| Op::Desc {
                index: first + i as u16,
                addr: u64::from_le_bytes(d[..8].try_into().unwrap()) as u32,
                len: u32::from_le_bytes(d[8..12].try_into().unwrap()),
                flags: u16::from_le_bytes(d[12..14].try_into().unwrap()),
                next: u16::from_le_bytes(d[14..].try_into().unwrap()),
            })
            .collect()
    };
    let mem = |addr: u64, bytes: [u8; 16]| Op::WriteMem {
        addr: addr as u32,
        bytes,
    };
    let offer = |slot, head| Op::Offer { slot, head };

    // Two requests through the block device, then the same chains again
    // through drain_queue.
    let mut ops = descs(0, &request_descs(0, GET_ID, 20));
    ops.extend(descs(3, &request_descs(3, IN, 1024)));
    ops.extend([
        mem(HDR, header(GET_ID, 0)),
        offer(0, 0),
        offer(1, 3),
        Op::Publish { count: 2 },
        Op::Process,
        offer(2, 0),
        offer(3, 3),
        Op::Publish { count: 2 },
        Op::Drain { reply_len: 21 },
    ]);
    write_ops("queue_state", "two-requests", &ops);

    // EVENT_IDX with used_event behind, at, and ahead of the used index.
    let reset = |size_log2, used, start, event_idx| Op::Reset {
        size_log2,
        desc: DESC,
        avail: AVAIL,
        used,
        start,
        event_idx,
    };
    let mut ops = vec![reset(4, USED, 0, true)];
    ops.extend(descs(0, &request_descs(0, GET_ID, 20)));
    ops.push(mem(HDR, header(GET_ID, 0)));
    for (slot, delta) in [(0u16, -1i16), (1, 0), (2, 5), (3, i16::MIN)] {
        ops.extend([
            Op::UsedEvent { delta },
            offer(slot, 0),
            Op::Publish { count: 1 },
            Op::Drain { reply_len: 1 },
        ]);
    }
    ops.extend([offer(4, 0), Op::Publish { count: 1 }, Op::Process]);
    write_ops("queue_state", "event-idx", &ops);

    // Indices about to wrap: requests on both sides of 65535.
    let mut ops = vec![reset(2, USED, 65534, true)];
    ops.extend(descs(0, &request_descs(0, GET_ID, 20)));
    ops.push(mem(HDR, header(GET_ID, 0)));
    for slot in 65534..65534 + 4 {
        ops.push(offer(slot as u16, 0));
    }
    ops.extend([
        Op::Publish { count: 4 },
        Op::Process,
        Op::Publish { count: 1 },
        Op::Process,
    ]);
    write_ops("queue_state", "index-wrap", &ops);

    // An indirect table holding the whole request.
    let mut ops = vec![Op::Desc {
        index: 0,
        addr: INDIRECT_TABLE as u32,
        len: 48,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
    }];
    for (i, d) in request_descs(0, IN, 512).iter().enumerate() {
        ops.push(mem(INDIRECT_TABLE + 16 * i as u64, *d));
    }
    ops.extend([
        mem(HDR, header(IN, 0)),
        offer(0, 0),
        Op::Publish { count: 1 },
        Op::Process,
        offer(1, 0),
        Op::Publish { count: 1 },
        Op::Drain { reply_len: 0 },
    ]);
    write_ops("queue_state", "indirect", &ops);

    // The used ring laid over the available ring, and a request whose
    // header straddles the boundary between the first two regions.
    let mut ops = vec![reset(3, AVAIL, 0, false)];
    ops.extend(descs(
        0,
        &[
            desc(0xfff8, 16, VIRTQ_DESC_F_NEXT, 1),
            desc(DATA, 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2),
            desc(STATUS, 1, VIRTQ_DESC_F_WRITE, 0),
        ],
    ));
    ops.extend([
        mem(0xfff8, header(GET_ID, 0)),
        offer(0, 0),
        Op::Publish { count: 1 },
        Op::Process,
        Op::Drain { reply_len: 7 },
    ]);
    write_ops("queue_state", "overlap-straddle", &ops);

    // A driver publishing more than the queue holds, then a head out of
    // range: both must end the pass with an error, not a hang.
    let ops = vec![
        Op::SetAvailIdx { idx: 17 },
        Op::Drain { reply_len: 0 },
        offer(0, 300),
        Op::Publish { count: 1 },
        Op::Process,
    ];
    write_ops("queue_state", "driver-lies", &ops);
}

/// `block_request` reads a 16-entry descriptor table, four ring bytes
/// (head count, EVENT_IDX, available index) and a payload copied to
/// 0x3000 whose first bytes double as the heads: a request whose header
/// type is N sits at descriptor N.
fn block_request_seeds() {
    const PAYLOAD: u64 = 0x3000;
    for (name, kind, data_len) in [("get-id", GET_ID, 20u32), ("read", IN, 512)] {
        let head = kind as u16;
        let data_flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
        let mut input = vec![0u8; 16 * 16];
        for (i, d) in [
            desc(PAYLOAD, 16, VIRTQ_DESC_F_NEXT, head + 1),
            desc(PAYLOAD + 0x100, data_len, data_flags, head + 2),
            desc(PAYLOAD + 0x400, 1, VIRTQ_DESC_F_WRITE, 0),
        ]
        .iter()
        .enumerate()
        {
            put(&mut input, 16 * (usize::from(head) + i), d);
        }
        input.extend([1, 0, 1, 0]);
        input.extend(header(kind, 0));
        write("block_request", name, &input);
    }
}

fn put(image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if image.len() < offset + bytes.len() {
        image.resize(offset + bytes.len(), 0);
    }
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// One ELF note: namesz, descsz, type, name, desc, each padded to 4.
fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend((name.len() as u32).to_le_bytes());
    n.extend((desc.len() as u32).to_le_bytes());
    n.extend(kind.to_le_bytes());
    n.extend(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

/// An ELF program header.
fn phdr(kind: u32, offset: usize, paddr: u64, filesz: usize, memsz: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(kind.to_le_bytes());
    p.extend(5u32.to_le_bytes()); // R+X
    p.extend((offset as u64).to_le_bytes());
    p.extend(paddr.to_le_bytes());
    p.extend(paddr.to_le_bytes());
    p.extend((filesz as u64).to_le_bytes());
    p.extend((memsz as u64).to_le_bytes());
    p.extend(0x1000u64.to_le_bytes());
    p
}

/// A 64-bit x86 ELF header with `phnum` program headers right after it.
fn elf_header(entry: u64, phnum: u16) -> Vec<u8> {
    let mut image = Vec::new();
    put(&mut image, 0, b"\x7fELF\x02\x01\x01");
    put(&mut image, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut image, 18, &0x3eu16.to_le_bytes()); // x86-64
    put(&mut image, 20, &1u32.to_le_bytes());
    put(&mut image, 24, &entry.to_le_bytes());
    put(&mut image, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut image, 52, &64u16.to_le_bytes());
    put(&mut image, 54, &56u16.to_le_bytes());
    put(&mut image, 56, &phnum.to_le_bytes());
    image
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// A 64-bit ELF with one PT_LOAD at 1 MiB and, if given, a PT_NOTE.
fn elf(notes: Option<&[u8]>) -> Vec<u8> {
    const CODE: usize = 0x100;
    const NOTES: usize = 0x200;
    let entry = 0x10_0000u64;
    let phnum: u16 = if notes.is_some() { 2 } else { 1 };
    let mut image = elf_header(entry, phnum);
    // hlt; jmp back.
    let code = [0xf4, 0xeb, 0xfd];
    put(&mut image, 64, &phdr(PT_LOAD, CODE, entry, code.len(), 0x1000));
    put(&mut image, CODE, &code);
    if let Some(notes) = notes {
        put(
            &mut image,
            64 + 56,
            &phdr(PT_NOTE, NOTES, 0, notes.len(), notes.len()),
        );
        put(&mut image, NOTES, notes);
    }
    image
}

/// A bzImage: the setup header at 0x1f1 (Linux boot protocol) and a few
/// bytes of "kernel" after `setup_sects` sectors.
fn bzimage(version: u16, setup_sects: u8, init_size: u32) -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    put(&mut image, 0x1f1, &[setup_sects]);
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &version.to_le_bytes());
    put(&mut image, 0x211, &[1]); // LOADED_HIGH
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut image, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut image, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut image, 0x260, &init_size.to_le_bytes());
    // Zero setup sectors means four (boot protocol); the boot sector is one more.
    let setup_len = (usize::from(if setup_sects == 0 { 4 } else { setup_sects }) + 1) * 512;
    put(&mut image, setup_len, &[0xf4; 64]);
    image
}

/// An ELF whose `headers` program headers all name one PT_NOTE `segment`.
fn elf_with_note_headers(headers: u16, segment: &[u8]) -> Vec<u8> {
    let notes_at = 64 + 56 * usize::from(headers);
    let mut image = elf_header(0x10_0000, headers);
    let note_phdr = phdr(PT_NOTE, notes_at, 0, segment.len(), segment.len());
    for i in 0..usize::from(headers) {
        put(&mut image, 64 + 56 * i, &note_phdr);
    }
    put(&mut image, notes_at, segment);
    image
}

/// Issue 7: thousands of PT_NOTE headers, all naming the same segment of
/// empty notes, exhaust memory in the note walk. The PVH note comes first
/// so that linux-loader's own walk stops at once and the file stays under
/// 0.5 MB (1 KB compressed); the owners collected pass 2 GB, libFuzzer's
/// default -rss_limit_mb.
fn elf_note_flood() -> Vec<u8> {
    let mut notes = note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes());
    // Each empty note is a 12-byte header of zeroes.
    notes.resize(240 << 10, 0);
    elf_with_note_headers(4400, &notes)
}

/// The same shape defeats linux-loader's own note walk, which reads every
/// 12-byte note header of every PT_NOTE segment with a read and a seek
/// until it finds the PVH note: 600 headers naming one segment of 87,400
/// empty notes (just over the 1 MiB that kiln's walk skips) take about
/// 30 s, far past the 10 s the smoke run allows one input; 65,535 headers
/// over a 1 MiB segment (a 5 MB file) would take about an hour. kiln has
/// to bound the program headers before it hands the file to linux-loader.
fn elf_note_crawl() -> Vec<u8> {
    elf_with_note_headers(600, &vec![0; 12 * 87_400])
}

fn loader_seeds() {
    let linux = note(b"Linux\0", 1, &[0; 4]);
    let mut pvh = linux.clone();
    pvh.extend(note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes()));
    write("kernel_loader", "elf-pvh", &elf(Some(&pvh)));
    write("kernel_loader", "elf-linux-note", &elf(Some(&linux)));
    write("kernel_loader", "elf-bare", &elf(None));
    write("kernel_loader", "bzimage", &bzimage(0x020f, 1, 0x10_0000));
    write("kernel_loader", "bzimage-old-protocol", &bzimage(0x0202, 0, 0));
    write_file("kernel_loader", "crash-elf-note-flood", &elf_note_flood());
    write_file("kernel_loader", "timeout-elf-note-crawl", &elf_note_crawl());
}

fn disk_spec_seeds() {
    for (name, spec) in [
        ("root", "path=/img/root.ext4,root"),
        (
            "all-options",
            "path=d.img,readonly,id=data-1,cache=none,shared=on",
        ),
        ("switches", "ro=off,path=x,readonly=yes,shared=off,cache=unsafe"),
        ("path-with-equals", "path=a=b,cache=writeback"),
        ("id-too-long", "path=x,id=123456789012345678901"),
        ("empty-path", "path=,root"),
        ("unknown", "path=x,bogus"),
    ] {
        write("disk_spec", name, spec.as_bytes());
    }
}

/// api_request: each request behind one piece-length byte (255: as much
/// as the read takes), as `Pieces` in the target reads them.
fn api_request_seeds() {
    let drive = r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#;
    for (name, request) in [
        ("get", "GET / HTTP/1.1\r\n\r\n".to_string()),
        (
            "put-drive",
            format!("PUT /drives/rootfs HTTP/1.1\r\nContent-Length: {}\r\n\r\n{drive}", drive.len()),
        ),
        (
            "pipelined",
            "GET /version HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}".to_string(),
        ),
    ] {
        let mut bytes = vec![255u8];
        bytes.extend_from_slice(request.as_bytes());
        write("api_request", name, &bytes);
    }
}

fn main() {
    let mem = kiln_fuzz::guest_memory();
    let offered = kiln_fuzz::active_scratch_disk(4096, &mem)
        .device
        .device_features();
    block_request_seeds();
    mmio_seeds(offered);
    queue_seeds();
    loader_seeds();
    disk_spec_seeds();
    net_seeds();
    api_request_seeds();
}

/// Writes one whole input of a target read with `arbitrary_take_rest`.
fn write_input<T>(target: &str, name: &str, input: &T)
where
    T: Encode + for<'a> Arbitrary<'a> + PartialEq + Debug,
{
    let mut bytes = Vec::new();
    input.encode(&mut bytes);
    let decoded = T::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
    assert_eq!(&decoded, input, "{target}/{name} does not read back");
    write(target, name, &bytes);
}

/// A virtio-net header: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset (num_buffers 0).
fn net_header(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    for (at, v) in [(2, hdr_len), (4, gso_size), (6, start), (8, offset)] {
        h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    h
}

fn net_seeds() {
    use kiln::devices::virtio::net::features::*;
    use kiln_fuzz::net_input::{NetInput, NetOp, DATA_START, INDIRECT_START};

    // Data-area offsets (descriptor `addr` fields are taken from DATA_START).
    let data = |addr: u64| (addr - DATA_START) as u32;
    let indirect = |addr: u64| (addr - INDIRECT_START) as u32;
    let bits = |list: &[u32]| list.iter().fold(0u64, |acc, &b| acc | 1 << b);
    let plain = bits(&[VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU]);
    let offloads = bits(&[
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
    ]);
    let header_at = |addr: u64, header: [u8; 12]| {
        let mut bytes = [0u8; 16];
        bytes[..12].copy_from_slice(&header);
        NetOp::WriteMem {
            addr: data(addr),
            bytes,
        }
    };
    let desc = |tx, index, addr: u64, len, flags, next| NetOp::Desc {
        tx,
        index,
        addr: data(addr),
        len,
        flags,
        next,
    };

    // One plain frame out: header and frame in two descriptors.
    let tx_frame = |frame_at: u64| {
        vec![
            header_at(0x9000, [0; 12]),
            NetOp::Fill {
                addr: data(frame_at),
                len: 60,
                byte: 0x5a,
            },
            desc(true, 0, 0x9000, 12, VIRTQ_DESC_F_NEXT, 1),
            desc(true, 1, frame_at, 60, 0, 0),
            NetOp::Offer { tx: true, head: 0 },
            NetOp::Kick { tx: true },
            NetOp::HostDrain,
        ]
    };
    write_input(
        "net_device",
        "tx-frame",
        &NetInput {
            features: plain,
            rx_size_log2: 2,
            tx_size_log2: 2,
            ops: tx_frame(0xa000),
        },
    );

    // One frame in, into a buffer straddling the region boundary.
    let rx_frame = vec![
        desc(false, 0, 0xff00, 2048, VIRTQ_DESC_F_WRITE, 0),
        NetOp::Offer { tx: false, head: 0 },
        NetOp::Kick { tx: false },
        NetOp::HostSend {
            header: [0; 12],
            len: 100,
            seed: 1,
        },
        NetOp::HostEvent { ready: 1 },
    ];
    write_input(
        "net_device",
        "rx-frame",
        &NetInput {
            features: plain,
            rx_size_log2: 4,
            tx_size_log2: 4,
            ops: rx_frame,
        },
    );

    // Mergeable buffers: a 4000-byte TSO frame over the four 1 KiB chains
    // of a full ring.
    let mut merge = Vec::new();
    for (i, addr) in [0xc000u64, 0xc400, 0xc800, 0xcc00].into_iter().enumerate() {
        merge.push(desc(false, i as u16, addr, 1024, VIRTQ_DESC_F_WRITE, 0));
        merge.push(NetOp::Offer {
            tx: false,
            head: i as u16,
        });
    }
    merge.extend([
        NetOp::Kick { tx: false },
        NetOp::HostSend {
            header: net_header(1, 1, 54, 1448, 34, 16),
            len: 4000,
            seed: 7,
        },
        NetOp::HostEvent { ready: 1 },
        NetOp::Kick { tx: false },
    ]);
    write_input(
        "net_device",
        "rx-mergeable",
        &NetInput {
            features: offloads,
            rx_size_log2: 2,
            tx_size_log2: 2,
            ops: merge,
        },
    );

    // TSO frames until the backend is full, then drained and writable.
    let mut tso = vec![
        header_at(0x9000, net_header(1, 1, 54, 1448, 34, 16)),
        NetOp::Fill {
            addr: data(0xa000),
            len: 60_000,
            byte: 0x45,
        },
        desc(true, 0, 0x9000, 12, VIRTQ_DESC_F_NEXT, 1),
        desc(true, 1, 0xa000, 60_000, 0, 0),
    ];
    for _ in 0..16 {
        tso.push(NetOp::Offer { tx: true, head: 0 });
    }
    tso.extend([
        NetOp::Kick { tx: true },
        NetOp::Kick { tx: true },
        NetOp::HostDrain,
        NetOp::HostEvent { ready: 2 },
        NetOp::HostDrain,
    ]);
    write_input(
        "net_device",
        "tx-tso-backend-full",
        &NetInput {
            features: offloads | bits(&[VIRTIO_F_RING_EVENT_IDX]),
            rx_size_log2: 4,
            tx_size_log2: 4,
            ops: tso,
        },
    );

    // An indirect transmit chain, then a reset to other features, a frame
    // from the host and the backend hanging up.
    let mut indirect_ops = vec![
        header_at(0x9000, [0; 12]),
        NetOp::Indirect {
            index: 0,
            addr: data(0x9000),
            len: 12,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
        NetOp::Indirect {
            index: 1,
            addr: data(0xa000),
            len: 200,
            flags: 0,
            next: 0,
        },
        NetOp::Desc {
            tx: true,
            index: 3,
            addr: indirect(INDIRECT_START),
            len: 32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        },
        NetOp::Offer { tx: true, head: 3 },
        NetOp::Kick { tx: true },
        NetOp::HostDrain,
        NetOp::Reset {
            features: u64::MAX,
            rx_size_log2: 8,
            tx_size_log2: 2,
        },
    ];
    indirect_ops.extend(tx_frame(0xffe0));
    indirect_ops.extend([
        NetOp::HostSend {
            header: [0; 12],
            len: 60,
            seed: 3,
        },
        NetOp::HostEvent { ready: 4 },
        NetOp::Kick { tx: false },
    ]);
    write_input(
        "net_device",
        "indirect-reset-hangup",
        &NetInput {
            features: plain | bits(&[VIRTIO_F_INDIRECT_DESC]),
            rx_size_log2: 2,
            tx_size_log2: 2,
            ops: indirect_ops,
        },
    );
}
