//! A guest hammering every path that logs must not flood the host log: at
//! most one line a second per call site, and later lines count what was
//! suppressed. The logger is process-global, so this binary holds one test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::devices::bus::BusDevice;
use kiln::devices::legacy::acpi_pm::{self, AcpiPmDevice};
use kiln::devices::legacy::pvpanic::{self, PvPanicDevice};
use kiln::devices::virtio::block::{BlockConfig, BlockDevice};
use kiln::devices::virtio::{IrqfdInterrupt, MmioTransport};
use kiln::exit::ExitNotifier;
use kiln::vstate::memory::GuestMemoryMmap;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const ROUNDS: usize = 10_000;

struct Line {
    site: String,
    message: String,
    at: Instant,
}

struct Capture(Mutex<Vec<Line>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let site = format!("{}:{}", record.file().unwrap_or("?"), record.line().unwrap_or(0));
        let line = Line {
            site,
            message: record.args().to_string(),
            at: Instant::now(),
        };
        self.0.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// The guest's side: the devices it can reach and what it does to them.
struct Guest {
    transport: MmioTransport<BlockDevice>,
    pvpanic: PvPanicDevice,
    acpi: AcpiPmDevice,
    _image: TempFile,
}

impl Guest {
    fn new() -> Self {
        let image = TempFile::new().unwrap();
        image.as_file().set_len(1 << 20).unwrap();
        let disk = BlockDevice::new(BlockConfig {
            read_only: true,
            ..BlockConfig::new(image.as_path())
        })
        .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let interrupt = Arc::new(IrqfdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let exit = ExitNotifier::new().unwrap();
        Self {
            transport: MmioTransport::new(disk, mem, interrupt).unwrap(),
            pvpanic: PvPanicDevice::new(exit.clone()),
            acpi: AcpiPmDevice::new(exit),
            _image: image,
        }
    }

    fn mmio_write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// One round of everything a hostile guest can repeat at will.
    fn round(&mut self) {
        // A driver that gets the device to DRIVER_OK with a queue it never
        // placed: activation fails, the device asks for a reset.
        self.mmio_write(0x70, 0);
        self.mmio_write(0x70, 1);
        self.mmio_write(0x70, 3);
        self.mmio_write(0x24, 1);
        self.mmio_write(0x20, 1);
        self.mmio_write(0x70, 11);
        self.mmio_write(0x30, 0);
        self.mmio_write(0x44, 1);
        self.mmio_write(0x70, 15);
        // Register abuse.
        self.mmio_write(0x70, 0);
        self.mmio_write(0x70, 4);
        self.mmio_write(0x00, 1);
        self.transport.write(0x70, &[1, 0]);
        self.transport.write(0x72, &[0; 4]);
        self.transport.read(0x03, &mut [0; 4]);
        self.transport.read(0x0f0, &mut [0; 4]);
        self.mmio_write(0x50, 0);
        self.transport.write(0x100, &[0; 4]);
        // pvpanic and ACPI power management.
        self.pvpanic.write(0, &[pvpanic::PVPANIC_PANICKED | 0x80]);
        self.pvpanic.write(0, &[pvpanic::PVPANIC_CRASH_LOADED]);
        self.acpi.write(0, &[acpi_pm::RESET_VALUE]);
        self.acpi.write(
            0,
            &[acpi_pm::SLP_TYP_S5 << acpi_pm::SLP_TYP_SHIFT | acpi_pm::SLP_EN],
        );
        self.acpi
            .write(0, &[3 << acpi_pm::SLP_TYP_SHIFT | acpi_pm::SLP_EN]);
    }
}

#[test]
fn a_guest_loop_logs_at_most_one_line_a_second_per_site() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut guest = Guest::new();

    let start = Instant::now();
    for _ in 0..ROUNDS {
        guest.round();
    }
    let burst = start.elapsed();
    // Once the interval has passed, one more round: every site may log
    // again, and says how much it held back.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(burst));
    guest.round();
    let elapsed = start.elapsed();

    let lines = std::mem::take(&mut *CAPTURE.0.lock().unwrap());
    let mut by_site: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for line in &lines {
        by_site.entry(&line.site).or_default().push(line);
    }
    for (site, site_lines) in &by_site {
        eprintln!(
            "{site}: {} lines; first: {}",
            site_lines.len(),
            site_lines[0].message
        );
    }
    eprintln!(
        "{} rounds in {burst:?}, {} lines from {} sites in {elapsed:?}",
        ROUNDS + 1,
        lines.len(),
        by_site.len()
    );

    for wanted in [
        "refusing to start device",
        "out of order",
        "read-only or unknown register",
        "byte write at",
        "unaligned write",
        "byte read at",
        "read of write-only or unknown register",
        "before DRIVER_OK",
        "ignoring 4-byte config write",
        "guest kernel panicked",
        "booting its crash kernel",
        "unadvertised pvpanic event bits",
        "ACPI reset register",
        "ACPI S5",
        "unsupported ACPI sleep type",
    ] {
        assert!(
            lines.iter().any(|l| l.message.contains(wanted)),
            "the round never logged {wanted:?}"
        );
    }
    let max_per_site = 1 + elapsed.as_secs() as usize;
    for (site, site_lines) in &by_site {
        assert!(
            site_lines.len() <= max_per_site,
            "{site} logged {} lines in {elapsed:?}: {}",
            site_lines.len(),
            site_lines[0].message
        );
        for pair in site_lines.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(
                gap >= Duration::from_millis(950),
                "{site} logged twice within {gap:?}"
            );
            assert!(
                pair[1].message.contains("similar messages suppressed"),
                "{site}: {}",
                pair[1].message
            );
        }
    }
    let activation: Vec<&str> = by_site
        .values()
        .flatten()
        .filter(|l| l.message.contains("refusing to start device"))
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(activation.len(), 2, "{activation:?}");
    assert!(
        activation[1].ends_with(&format!("({} similar messages suppressed)", ROUNDS - 1)),
        "{}",
        activation[1]
    );
}
