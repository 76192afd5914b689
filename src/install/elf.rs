//! Refuses binaries this machine cannot run, before anything runs them.
//!
//! Reads the ELF header (class, byte order, machine, type) and, on ARM, the float ABI flags:
//! a hard-float binary needs a VFP unit, and a dynamically linked soft-float one would look for
//! the wrong C library. MIPS float ABI lives in `.MIPS.abiflags` (`PT_MIPS_ABIFLAGS`), not the
//! header: a hard-float MIPS binary is refused on a CPU whose `/proc/cpuinfo` shows no FPU
//! (most MIPS routers: Go's hard-float builds die there with SIGILL, which is why Xray and
//! sing-box publish soft-float ones).

use std::io::Read;
use std::path::Path;

use crate::platform::{self, EM_AARCH64, EM_ARM, EM_MIPS, EM_X86_64};

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const PT_MIPS_ABIFLAGS: u32 = 0x7000_0003;
/// `Val_GNU_MIPS_ABI_FP_ANY` and `_SOFT`: no FPU instructions.
const MIPS_FP_ANY: u8 = 0;
const MIPS_FP_SOFT: u8 = 3;
const EF_ARM_EABI_MASK: u32 = 0xff00_0000;
const EF_ARM_ABI_FLOAT_SOFT: u32 = 0x200;
const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;
const EF_MIPS_ABI2: u32 = 0x20;
const EF_MIPS_ABI: u32 = 0xf000;
const EF_MIPS_ABI_O32: u32 = 0x1000;

/// What a binary must be to run here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine {
    pub class64: bool,
    pub little_endian: bool,
    pub machine: u16,
    pub arm_hard_float: bool,
    /// A MIPS CPU with an FPU (hard-float binaries run).
    pub mips_fpu: bool,
}

impl Machine {
    /// The machine this agent was built for (and therefore runs on).
    pub(crate) fn host() -> Machine {
        Machine {
            class64: cfg!(target_pointer_width = "64"),
            little_endian: cfg!(target_endian = "little"),
            machine: platform::elf_machine(platform::host_arch()).unwrap_or(0),
            arm_hard_float: cfg!(target_abi = "eabihf"),
            mips_fpu: cfg!(any(target_arch = "mips", target_arch = "mips32r6"))
                && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| cpuinfo_has_fpu(&c)),
        }
    }

    fn describe(&self) -> String {
        let arch = match self.machine {
            EM_X86_64 => "x86-64",
            EM_AARCH64 => "AArch64",
            EM_ARM if self.arm_hard_float => "ARM (hard-float)",
            EM_ARM => "ARM",
            EM_MIPS => "MIPS",
            _ => "unknown machine",
        };
        format!(
            "{}-bit {}-endian {arch}",
            if self.class64 { 64 } else { 32 },
            if self.little_endian { "little" } else { "big" }
        )
    }
}

/// Linux prints `cpu model : NAME Vx.y  FPU Vx.y` on MIPS, the FPU part only when there is one.
fn cpuinfo_has_fpu(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .any(|l| l.starts_with("cpu model") && l.contains(" FPU V"))
}

/// Checks the file at `path` against `want`; the error says what the file is instead.
pub(crate) fn check_file(path: &Path, want: Machine) -> Result<(), String> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(65_536).read_to_end(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check(&head, want)
}

/// Checks an ELF file prefix (header and program headers) against `want`.
pub(crate) fn check(head: &[u8], want: Machine) -> Result<(), String> {
    if head.len() < 52 || head[..4] != *b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let class64 = match head[4] {
        1 => false,
        2 => true,
        c => return Err(format!("ELF class {c} is invalid")),
    };
    let little = match head[5] {
        1 => true,
        2 => false,
        d => return Err(format!("ELF data encoding {d} is invalid")),
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = head.get(o..o + 2)?.try_into().ok()?;
        Some(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = head.get(o..o + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |o: usize| -> Option<u64> {
        let b: [u8; 8] = head.get(o..o + 8)?.try_into().ok()?;
        Some(if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let truncated = || "ELF header is truncated".to_owned();
    let e_type = u16_at(16).ok_or_else(truncated)?;
    let machine = u16_at(18).ok_or_else(truncated)?;
    let (flags, phoff, phentsize, phnum) = if class64 {
        (u32_at(48), u64_at(32), u16_at(54), u16_at(56))
    } else {
        (
            u32_at(36),
            u32_at(28).map(u64::from),
            u16_at(42),
            u16_at(44),
        )
    };
    let flags = flags.ok_or_else(truncated)?;
    let dynamic = has_segment(head, phoff, phentsize, phnum, &u32_at, PT_INTERP).is_some();

    let found = Machine {
        class64,
        little_endian: little,
        machine,
        arm_hard_float: flags & EF_ARM_ABI_FLOAT_HARD != 0,
        mips_fpu: false,
    };
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(format!("ELF type {e_type} is not an executable"));
    }
    if class64 != want.class64 || little != want.little_endian || machine != want.machine {
        return Err(format!(
            "binary is {}, this machine needs {}",
            found.describe(),
            want.describe()
        ));
    }
    if machine == EM_ARM {
        if flags & EF_ARM_EABI_MASK != 0x0500_0000 {
            return Err(format!("ARM binary is not EABI5 (e_flags {flags:#x})"));
        }
        if flags & EF_ARM_ABI_FLOAT_HARD != 0 && !want.arm_hard_float {
            return Err("binary is ARM hard-float, this machine is soft-float".into());
        }
        if flags & EF_ARM_ABI_FLOAT_SOFT != 0 && want.arm_hard_float && dynamic {
            return Err(
                "binary is dynamically linked ARM soft-float, this machine is hard-float".into(),
            );
        }
    }
    if machine == EM_MIPS
        && (flags & EF_MIPS_ABI2 != 0 || !matches!(flags & EF_MIPS_ABI, 0 | EF_MIPS_ABI_O32))
    {
        return Err(format!("MIPS binary is not o32 (e_flags {flags:#x})"));
    }
    if machine == EM_MIPS && !want.mips_fpu {
        // The abiflags segment: version u16, isa_level, isa_rev, gpr_size, cpr1_size,
        // cpr2_size, fp_abi (u8 each).
        let fp_abi = has_segment(head, phoff, phentsize, phnum, &u32_at, PT_MIPS_ABIFLAGS)
            .and_then(|at| {
                let off = if class64 {
                    u64_at(at + 8)
                } else {
                    u32_at(at + 4).map(u64::from)
                };
                head.get(usize::try_from(off?).ok()?.checked_add(7)?)
                    .copied()
            });
        if let Some(fp) = fp_abi.filter(|fp| *fp != MIPS_FP_ANY && *fp != MIPS_FP_SOFT) {
            return Err(format!(
                "binary is MIPS hard-float (FP ABI {fp}) and this CPU has no FPU (/proc/cpuinfo): take the soft-float build"
            ));
        }
    }
    Ok(())
}

/// Where in `head` the program header of the first segment of type `kind` is.
fn has_segment(
    head: &[u8],
    phoff: Option<u64>,
    phentsize: Option<u16>,
    phnum: Option<u16>,
    u32_at: &dyn Fn(usize) -> Option<u32>,
    kind: u32,
) -> Option<usize> {
    let (off, size, num) = (usize::try_from(phoff?).ok()?, phentsize?, phnum?);
    (0..usize::from(num))
        .filter_map(|i| off.checked_add(i * usize::from(size)))
        .find(|at| {
            at.checked_add(4).is_some_and(|end| end <= head.len()) && u32_at(*at) == Some(kind)
        })
}

/// What a dynamically linked binary needs from this system that it does not have: its
/// dynamic loader (`PT_INTERP`) and its `DT_NEEDED` libraries, looked up in its
/// `DT_RUNPATH`/`DT_RPATH` (`$ORIGIN` is its directory), then the loader's configured and
/// default directories. A static binary needs nothing. The error names what is missing.
pub(crate) fn check_runtime(path: &Path) -> Result<(), String> {
    let needs = Needs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let Some(interp) = needs.interp else {
        return Ok(());
    };
    if !Path::new(&interp).exists() {
        return Err(format!(
            "binary is dynamically linked against the loader {interp}, which this system does not have (built for another C library?)"
        ));
    }
    let origin = path.parent().unwrap_or(Path::new("/"));
    let mut dirs: Vec<std::path::PathBuf> = needs
        .runpath
        .iter()
        .flat_map(|p| p.split(':'))
        .filter(|d| !d.is_empty())
        .take(32)
        .map(|d| std::path::PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
        .collect();
    dirs.extend(loader_dirs().into_iter().map(std::path::PathBuf::from));
    let missing: Vec<&str> = needs
        .needed
        .iter()
        .map(String::as_str)
        .filter(|lib| {
            if lib.contains('/') {
                return !Path::new(lib).exists();
            }
            !dirs.iter().any(|d| d.join(lib).exists())
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "binary needs {}, which this system does not have (looked in {})",
            missing.join(", "),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ));
    }
    Ok(())
}

/// Where the loaders look: glibc's `/etc/ld.so.conf` (with its `include`s, one level), musl's
/// `/etc/ld-musl-*.path`, then both loaders' defaults (Debian's multiarch ones included).
fn loader_dirs() -> Vec<String> {
    fn lines(path: &Path, out: &mut Vec<String>, include: bool) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for l in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
        {
            if let Some(pattern) = l.strip_prefix("include ") {
                // `include DIR/*.conf`: the files of DIR ending in the pattern's suffix.
                let p = Path::new(pattern.trim());
                let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                    continue;
                };
                let suffix = name.to_string_lossy().trim_start_matches('*').to_owned();
                if let (true, Ok(rd)) = (include, std::fs::read_dir(dir)) {
                    let mut files: Vec<_> = rd
                        .flatten()
                        .map(|e| e.path())
                        .filter(|f| f.to_string_lossy().ends_with(&suffix))
                        .collect();
                    files.sort();
                    for f in files {
                        lines(&f, out, false);
                    }
                }
            } else {
                out.extend(
                    l.split([':', ' ', '\t'])
                        .filter(|d| d.starts_with('/'))
                        .map(String::from),
                );
            }
        }
    }
    let mut out = Vec::new();
    lines(Path::new("/etc/ld.so.conf"), &mut out, true);
    if let Ok(rd) = std::fs::read_dir("/etc") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ld-musl-") && n.ends_with(".path") {
                lines(&e.path(), &mut out, false);
            }
        }
    }
    let multiarch = match platform::host_arch() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "armv7" => "arm-linux-gnueabihf",
        "mipsel" => "mipsel-linux-gnu",
        _ => "mips-linux-gnu",
    };
    for d in ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib"] {
        out.push(d.into());
    }
    for d in ["/lib", "/usr/lib"] {
        out.push(format!("{d}/{multiarch}"));
    }
    out
}

/// The dynamic loader and libraries an ELF file names.
#[derive(Debug, Default)]
struct Needs {
    interp: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
}

/// Largest program header table, dynamic section and string table read (bounded reads of a
/// file that may be large: only those parts are read).
const MAX_TABLE: u64 = 1 << 20;
/// More `DT_NEEDED` / `DT_RUNPATH` entries than any real binary has: refused.
const MAX_NEEDED: usize = 128;
const MAX_RUNPATHS: usize = 8;

impl Needs {
    fn read(path: &Path) -> std::io::Result<Needs> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let read_at = |off: u64, n: u64| -> std::io::Result<Vec<u8>> {
            if n > MAX_TABLE || off.checked_add(n).is_none_or(|end| end > len) {
                return Err(std::io::Error::other("ELF table out of bounds"));
            }
            let mut b = vec![0; usize::try_from(n).map_err(std::io::Error::other)?];
            f.read_exact_at(&mut b, off)?;
            Ok(b)
        };
        let h = read_at(0, 64.min(len))?;
        if h.len() < 52 || h[..4] != *b"\x7fELF" {
            return Ok(Needs::default());
        }
        let (c64, le) = (h[4] == 2, h[5] == 1);
        let num = |b: &[u8], o: usize, n: usize| -> u64 {
            let Some(s) = b.get(o..o + n) else { return 0 };
            s.iter().enumerate().fold(0u64, |acc, (i, byte)| {
                let shift = 8 * if le { i } else { n - 1 - i };
                acc | u64::from(*byte) << shift
            })
        };
        let w = if c64 { 8 } else { 4 };
        let (phoff, phentsize, phnum) = if c64 {
            (num(&h, 32, 8), num(&h, 54, 2), num(&h, 56, 2))
        } else {
            (num(&h, 28, 4), num(&h, 42, 2), num(&h, 44, 2))
        };
        let ph = read_at(phoff, phentsize * phnum)?;
        let mut loads = Vec::new();
        let (mut interp, mut dynamic) = (None, None);
        for i in 0..usize::try_from(phnum).unwrap_or(0) {
            let e = &ph[i * usize::try_from(phentsize).unwrap_or(0)..];
            // p_type, then (64-bit) p_flags, p_offset, p_vaddr, p_paddr, p_filesz
            // or (32-bit) p_offset, p_vaddr, p_paddr, p_filesz.
            let (kind, off, vaddr, filesz) = if c64 {
                (num(e, 0, 4), num(e, 8, 8), num(e, 16, 8), num(e, 32, 8))
            } else {
                (num(e, 0, 4), num(e, 4, 4), num(e, 8, 4), num(e, 16, 4))
            };
            match kind {
                1 => loads.push((vaddr, off, filesz)),
                2 => dynamic = Some((off, filesz)),
                3 => interp = Some((off, filesz)),
                _ => {}
            }
        }
        let cstr = |b: &[u8]| {
            String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or(b)).into_owned()
        };
        let mut needs = Needs {
            interp: interp
                .map(|(off, n)| read_at(off, n.min(4096)))
                .transpose()?
                .map(|b| cstr(&b)),
            ..Needs::default()
        };
        let Some((off, n)) = dynamic else {
            return Ok(needs);
        };
        let dynamic = read_at(off, n)?;
        let (mut strtab, mut strsz, mut names, mut paths) = (None, 0, Vec::new(), Vec::new());
        for entry in dynamic.chunks_exact(2 * w) {
            let (tag, val) = (num(entry, 0, w), num(entry, w, w));
            match tag {
                0 => break,
                1 => names.push(val),
                5 => strtab = Some(val),
                10 => strsz = val,
                15 | 29 => paths.push(val),
                _ => {}
            }
        }
        // DT_STRTAB is an address: the PT_LOAD segment that holds it gives its file offset.
        let Some(strtab) = strtab.and_then(|a| {
            loads
                .iter()
                .find(|(v, _, sz)| a >= *v && a - v < *sz)
                .and_then(|(v, o, _)| (a - v).checked_add(*o))
        }) else {
            return Ok(needs);
        };
        if names.len() > MAX_NEEDED || paths.len() > MAX_RUNPATHS {
            return Err(std::io::Error::other(format!(
                "{} needed libraries and {} run paths: more than a binary needs",
                names.len(),
                paths.len()
            )));
        }
        let strings = read_at(strtab, strsz)?;
        // A name is at most 255 bytes and ends with a NUL there (a hostile table of one long
        // string would otherwise be copied out once per entry).
        let at = |o: u64| {
            let s = strings.get(usize::try_from(o).ok()?..)?;
            let end = s.iter().take(256).position(|c| *c == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        needs.needed = names.into_iter().filter_map(at).collect();
        needs.runpath = paths.into_iter().filter_map(at).collect();
        Ok(needs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header with the given identity, as a linker would write it.
    fn header(class64: bool, little: bool, machine: u16, flags: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if class64 { 2 } else { 1 };
        h[5] = if little { 1 } else { 2 };
        h[6] = 1;
        put16(&mut h, little, 16, ET_EXEC);
        put16(&mut h, little, 18, machine);
        put32(&mut h, little, if class64 { 48 } else { 36 }, flags);
        h
    }

    fn put16(h: &mut [u8], little: bool, o: usize, v: u16) {
        let b = if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        h[o..o + 2].copy_from_slice(&b);
    }

    fn put32(h: &mut [u8], little: bool, o: usize, v: u32) {
        let b = if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        h[o..o + 4].copy_from_slice(&b);
    }

    const ARMHF: Machine = Machine {
        class64: false,
        little_endian: true,
        machine: EM_ARM,
        arm_hard_float: true,
        mips_fpu: false,
    };

    #[test]
    fn the_running_test_binary_matches_the_host() {
        let exe = std::env::current_exe().unwrap();
        check_file(&exe, Machine::host()).unwrap();
    }

    #[test]
    fn other_machines_are_named_in_the_error() {
        let e = check(&header(true, true, EM_AARCH64, 0), ARMHF).unwrap_err();
        assert_eq!(
            e,
            "binary is 64-bit little-endian AArch64, this machine needs 32-bit little-endian ARM (hard-float)"
        );
        let mipsel = Machine {
            class64: false,
            little_endian: true,
            machine: EM_MIPS,
            arm_hard_float: false,
            mips_fpu: false,
        };
        let e = check(&header(false, false, EM_MIPS, EF_MIPS_ABI_O32), mipsel).unwrap_err();
        assert!(e.contains("big-endian MIPS"), "{e}");
        check(&header(false, true, EM_MIPS, EF_MIPS_ABI_O32), mipsel).unwrap();
        assert!(check(&header(false, true, EM_MIPS, EF_MIPS_ABI2), mipsel).is_err());
    }

    #[test]
    fn arm_float_abi() {
        check(
            &header(false, true, EM_ARM, 0x0500_0000 | EF_ARM_ABI_FLOAT_HARD),
            ARMHF,
        )
        .unwrap();
        // Static soft-float code runs on a hard-float system.
        check(
            &header(false, true, EM_ARM, 0x0500_0000 | EF_ARM_ABI_FLOAT_SOFT),
            ARMHF,
        )
        .unwrap();
        let soft = Machine {
            arm_hard_float: false,
            ..ARMHF
        };
        let e = check(
            &header(false, true, EM_ARM, 0x0500_0000 | EF_ARM_ABI_FLOAT_HARD),
            soft,
        )
        .unwrap_err();
        assert!(e.contains("hard-float"), "{e}");
        assert!(check(&header(false, true, EM_ARM, 0x0400_0000), ARMHF).is_err());
    }

    #[test]
    fn garbage_is_not_an_executable() {
        assert_eq!(
            check(b"#!/bin/sh\necho hi\n", Machine::host()).unwrap_err(),
            "not an ELF executable"
        );
        let mut h = header(true, true, EM_X86_64, 0);
        h[16] = 1; // ET_REL
        let x86 = Machine {
            class64: true,
            little_endian: true,
            machine: EM_X86_64,
            arm_hard_float: false,
            mips_fpu: false,
        };
        assert!(check(&h, x86).unwrap_err().contains("not an executable"));
    }

    #[test]
    fn a_dynamic_binary_names_its_loader_and_libraries() {
        // `ls` on the test host: dynamically linked (Debian).
        let n = Needs::read(Path::new("/bin/ls")).unwrap();
        let interp = n.interp.expect("/bin/ls has a loader");
        assert!(Path::new(&interp).exists(), "{interp}");
        assert!(
            n.needed.iter().any(|l| l.starts_with("libc.")),
            "{:?}",
            n.needed
        );
        assert_eq!(check_runtime(Path::new("/bin/ls")), Ok(()));
        assert!(
            check_runtime(Path::new("/nonexistent")).is_err(),
            "a missing file"
        );
    }

    /// A 32-bit MIPS header with one PT_MIPS_ABIFLAGS program header whose fp_abi is `fp`.
    fn mips_with_fp_abi(little: bool, fp: u8) -> Vec<u8> {
        let mut h = header(false, little, EM_MIPS, EF_MIPS_ABI_O32);
        h.resize(52 + 32 + 24, 0);
        put32(&mut h, little, 28, 52); // e_phoff
        put16(&mut h, little, 42, 32); // e_phentsize
        put16(&mut h, little, 44, 1); // e_phnum
        put32(&mut h, little, 52, PT_MIPS_ABIFLAGS);
        put32(&mut h, little, 56, 84); // p_offset of the abiflags
        h[84 + 7] = fp;
        h
    }

    #[test]
    fn mips_hard_float_needs_an_fpu() {
        for little in [true, false] {
            let soft = Machine {
                class64: false,
                little_endian: little,
                machine: EM_MIPS,
                arm_hard_float: false,
                mips_fpu: false,
            };
            let fpu = Machine {
                mips_fpu: true,
                ..soft
            };
            assert_eq!(check(&mips_with_fp_abi(little, MIPS_FP_SOFT), soft), Ok(()));
            assert_eq!(check(&mips_with_fp_abi(little, MIPS_FP_ANY), soft), Ok(()));
            for hard in [1, 5, 6] {
                let e = check(&mips_with_fp_abi(little, hard), soft).unwrap_err();
                assert!(e.contains("hard-float") && e.contains("no FPU"), "{e}");
                assert_eq!(check(&mips_with_fp_abi(little, hard), fpu), Ok(()));
            }
        }
        assert!(cpuinfo_has_fpu("cpu model\t\t: MIPS 24Kf V7.4  FPU V0.0\n"));
        assert!(!cpuinfo_has_fpu(
            "system type : MediaTek MT7621\ncpu model\t\t: MIPS 1004Kc V2.15\n"
        ));
    }
}
