//! Rules to a BPF program, with a binary search on the call number.
//!
//! seccompiler compiles each call's argument rules (kept here as they
//! are), but dispatches on the call number with a linear chain. When a
//! filter is installed, the kernel decides for every call number whether
//! the filter always allows it (its action cache) by emulating the filter
//! for that number; with a linear chain each refused number walks all of
//! it, about 200 µs for the VMM's filter on our machines, which is most of
//! a microVM's start-up budget. A search tree walks about a dozen
//! instructions per number instead.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram, SeccompRule};

// Classic BPF opcodes (linux/bpf_common.h); libc types them as u32.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JMP_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JMP_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

// struct seccomp_data: the call number, then the architecture.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
// AUDIT_ARCH_X86_64: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// Ranges this small are searched linearly (a split costs as much).
const LEAF: usize = 3;

#[derive(Clone, Copy)]
struct Label(usize);

enum Insn {
    Plain(sock_filter),
    /// `code k`: to `Label` when true, on when false (two instructions:
    /// the test, then a long jump it skips, so no offset outgrows a byte).
    JumpIf(u16, u32, Label),
    Goto(Label),
    Mark(Label),
}

impl Insn {
    fn len(&self) -> usize {
        match self {
            Insn::Plain(_) | Insn::Goto(_) => 1,
            Insn::JumpIf(..) => 2,
            Insn::Mark(_) => 0,
        }
    }
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

#[derive(Default)]
struct Builder {
    insns: Vec<Insn>,
    labels: usize,
}

impl Builder {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// Tests the loaded call number against `calls` (sorted): a listed
    /// number goes to its label, any other to `refuse`.
    fn search(&mut self, calls: &[(u32, Label)], refuse: Label) {
        if calls.len() <= LEAF {
            for &(nr, target) in calls {
                self.push(Insn::JumpIf(JMP_JEQ_K, nr, target));
            }
            self.push(Insn::Goto(refuse));
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let upper = self.label();
        self.push(Insn::JumpIf(JMP_JGE_K, high[0].0, upper));
        self.search(low, refuse);
        self.push(Insn::Mark(upper));
        self.search(high, refuse);
    }

    fn finish(self) -> BpfProgram {
        let mut at = vec![0; self.labels];
        let mut pc = 0;
        for insn in &self.insns {
            if let Insn::Mark(Label(l)) = insn {
                at[*l] = pc;
            }
            pc += insn.len();
        }
        let mut out = Vec::with_capacity(pc);
        // A jump's offset counts from the instruction after it; labels
        // only ever lie ahead.
        let far = |from: usize, Label(l): Label| (at[l] - from - 1) as u32;
        for insn in self.insns {
            match insn {
                Insn::Plain(f) => out.push(f),
                Insn::JumpIf(code, k, target) => {
                    out.push(sock_filter {
                        code,
                        jt: 0,
                        jf: 1,
                        k,
                    });
                    let from = out.len();
                    out.push(stmt(JMP_JA, far(from, target)));
                }
                Insn::Goto(target) => {
                    let from = out.len();
                    out.push(stmt(JMP_JA, far(from, target)));
                }
                Insn::Mark(_) => {}
            }
        }
        out
    }
}

/// The filter for `rules`: calls without argument rules are allowed, calls
/// with them are allowed when one rule matches, everything else gets
/// `refuse` (a `SECCOMP_RET_*` action); a foreign architecture kills the
/// process, as seccompiler's filters do.
pub fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, refuse: u32) -> BpfProgram {
    let mut b = Builder::default();
    b.push(Insn::Plain(stmt(LD_W_ABS, DATA_ARCH)));
    let native = b.label();
    b.push(Insn::JumpIf(JMP_JEQ_K, AUDIT_ARCH_X86_64, native));
    b.push(Insn::Plain(stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS)));
    b.push(Insn::Mark(native));
    b.push(Insn::Plain(stmt(LD_W_ABS, DATA_NR)));

    let (allow, deny) = (b.label(), b.label());
    let mut chains: Vec<(Label, Vec<SeccompRule>)> = Vec::new();
    let mut calls = Vec::with_capacity(rules.len());
    for (nr, chain) in rules {
        let target = if chain.is_empty() {
            allow
        } else {
            let l = b.label();
            chains.push((l, chain));
            l
        };
        calls.push((nr as u32, target));
    }
    b.search(&calls, deny);

    // Each argument chain is seccompiler's: its rules in turn, each ending
    // in allow (their jumps are relative and stay inside), then refuse.
    for (label, chain) in chains {
        b.push(Insn::Mark(label));
        for rule in chain {
            let program: BpfProgram = rule.into();
            program.into_iter().for_each(|f| b.push(Insn::Plain(f)));
            b.push(Insn::Plain(stmt(RET_K, libc::SECCOMP_RET_ALLOW)));
        }
        b.push(Insn::Plain(stmt(RET_K, refuse)));
    }
    b.push(Insn::Mark(allow));
    b.push(Insn::Plain(stmt(RET_K, libc::SECCOMP_RET_ALLOW)));
    b.push(Insn::Mark(deny));
    b.push(Insn::Plain(stmt(RET_K, refuse)));
    b.finish()
}

#[cfg(test)]
mod tests {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};

    use super::*;
    use crate::seccomp::{rules, ThreadKind};

    /// Runs a classic BPF program over one `seccomp_data` (call number,
    /// architecture, six arguments), as the kernel would; returns the
    /// action and how many instructions it executed.
    fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |offset: u32| -> u32 {
            match offset {
                0 => nr,
                4 => arch,
                16..=63 => {
                    let arg = args[(offset as usize - 16) / 8];
                    if offset.is_multiple_of(8) {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load from offset {offset}"),
            }
        };
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0);
        loop {
            let f = &program[pc];
            steps += 1;
            pc += 1;
            let op = u32::from(f.code);
            if op == u32::from(LD_W_ABS) {
                acc = word(f.k);
            } else if op == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K {
                acc &= f.k;
            } else if op == u32::from(JMP_JA) {
                pc += f.k as usize;
            } else if op & 0x07 == libc::BPF_JMP {
                let taken = match op & 0xf0 {
                    libc::BPF_JEQ => acc == f.k,
                    libc::BPF_JGE => acc >= f.k,
                    libc::BPF_JGT => acc > f.k,
                    libc::BPF_JSET => acc & f.k != 0,
                    other => panic!("jump op {other:#x}"),
                };
                pc += usize::from(if taken { f.jt } else { f.jf });
            } else if op == u32::from(RET_K) {
                return (f.k, steps);
            } else {
                panic!("opcode {op:#x}");
            }
        }
    }

    /// Argument values worth trying: every constant the rules compare
    /// with (taken from the programs), nearby values, and some others.
    fn interesting(program: &[sock_filter]) -> Vec<u64> {
        let mut v: Vec<u64> = vec![0, 1, 7, u64::MAX, 1 << 32, 0x7, 0x4];
        for f in program {
            let k = u64::from(f.k);
            v.extend([k, k + 1, k.wrapping_sub(1), k | 1 << 40]);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn the_tree_decides_every_call_as_seccompilers_chain_does() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::VmmWithApi,
        ] {
            let map: BTreeMap<_, _> = rules::rules(kind).into_iter().collect();
            let tree = compile(map.clone(), libc::SECCOMP_RET_TRAP);
            let chain: BpfProgram = SeccompFilter::new(
                map.clone(),
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .unwrap()
            .try_into()
            .unwrap();
            let values = interesting(&chain);
            let (mut tree_steps, mut chain_steps) = (0, 0);
            for nr in 0..512 {
                // Arguments matter only for calls with rules.
                let argsets: Vec<[u64; 6]> = match map.get(&i64::from(nr)) {
                    Some(rules) if !rules.is_empty() => (0..3)
                        .flat_map(|i| values.iter().map(move |&v| (i, v)))
                        .map(|(i, v)| {
                            let mut a = [0; 6];
                            a[i] = v;
                            a
                        })
                        .collect(),
                    _ => vec![[0; 6]],
                };
                let plain = argsets.len() == 1;
                for args in argsets {
                    let (want, c) = run(&chain, nr, AUDIT_ARCH_X86_64, args);
                    let (got, t) = run(&tree, nr, AUDIT_ARCH_X86_64, args);
                    assert_eq!(got, want, "{kind:?}: call {nr} with {args:x?}");
                    if plain {
                        chain_steps += c;
                        tree_steps += t;
                    }
                }
                let i386 = 3 | 0x4000_0000;
                assert_eq!(run(&tree, nr, i386, [0; 6]).0, libc::SECCOMP_RET_KILL_PROCESS);
            }
            // The point of the tree: far fewer steps to decide on a call
            // without argument rules (what the kernel's cache emulates).
            assert!(tree_steps * 4 < chain_steps, "{tree_steps} vs {chain_steps}");
        }
    }

    #[test]
    fn a_refused_call_walks_a_short_path() {
        let map: BTreeMap<_, _> = rules::rules(ThreadKind::Vmm).into_iter().collect();
        let tree = compile(map, libc::SECCOMP_RET_TRAP);
        let (action, steps) = run(&tree, libc::SYS_execve as u32, AUDIT_ARCH_X86_64, [0; 6]);
        assert_eq!(action, libc::SECCOMP_RET_TRAP);
        assert!(steps <= 20, "{steps} instructions");
    }
}
