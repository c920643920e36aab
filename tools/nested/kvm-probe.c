// kvm-probe: prove that /dev/kvm can run a guest, with nothing but ioctls.
//
// Creates a VM with one 64 KiB memory slot, puts 7 bytes of real-mode code
// at 0x1000 (mov dx,0x3f8; mov al,'K'; out dx,al; hlt), runs one vCPU and
// prints every exit. Success (exit 0) = an I/O exit writing 'K' to port
// 0x3f8 followed by a HLT exit. Build static so it runs in nested-host's L1:
//   gcc -static -O2 -o kvm-probe kvm-probe.c
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define CODE_ADDR 0x1000

static const uint8_t code[] = {
    0xba, 0xf8, 0x03, /* mov dx, 0x3f8 */
    0xb0, 'K',        /* mov al, 'K'   */
    0xee,             /* out dx, al    */
    0xf4,             /* hlt           */
};

static void die(const char *what) {
    fprintf(stderr, "kvm-probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const char *module(void) {
    static const char *mods[] = {"kvm_amd", "kvm_intel", "kvm_pvm"};
    char path[64];
    for (unsigned i = 0; i < sizeof mods / sizeof *mods; i++) {
        snprintf(path, sizeof path, "/sys/module/%s", mods[i]);
        if (access(path, F_OK) == 0) return mods[i];
    }
    return "unknown";
}

int main(void) {
    double t0 = now_ms();
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open /dev/kvm");
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    printf("kvm-probe: /dev/kvm API %d, module %s\n", api, module());

    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap guest memory");
    memcpy(mem + CODE_ADDR, code, sizeof code);
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = 0,
        .memory_size = MEM_SIZE,
        .userspace_addr = (uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run)) die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = CODE_ADDR, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    int saw_out = 0, saw_hlt = 0;
    double t1 = now_ms();
    for (int i = 0; i < 16 && !saw_hlt; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            printf("kvm-probe: exit IO %s port 0x%x size %d data 0x%02x '%c'\n",
                   run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
                   run->io.port, run->io.size, data[0],
                   data[0] >= 0x20 && data[0] < 0x7f ? data[0] : '?');
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0x3f8 &&
                data[0] == 'K')
                saw_out = 1;
            break;
        }
        case KVM_EXIT_HLT:
            printf("kvm-probe: exit HLT\n");
            saw_hlt = 1;
            break;
        case KVM_EXIT_FAIL_ENTRY:
            printf("kvm-probe: exit FAIL_ENTRY reason 0x%llx\n",
                   (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
            return 1;
        case KVM_EXIT_INTERNAL_ERROR:
            printf("kvm-probe: exit INTERNAL_ERROR suberror %u\n", run->internal.suberror);
            return 1;
        default:
            printf("kvm-probe: unexpected exit reason %u\n", run->exit_reason);
            return 1;
        }
    }
    double t2 = now_ms();
    if (!(saw_out && saw_hlt)) {
        printf("kvm-probe: FAIL (out 'K' seen: %d, hlt seen: %d)\n", saw_out, saw_hlt);
        return 1;
    }
    printf("kvm-probe: OK, guest ran (setup %.2f ms, run %.2f ms)\n", t1 - t0, t2 - t1);
    return 0;
}
