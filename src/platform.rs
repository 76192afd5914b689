//! The machine this agent was built for, named once: its catalogue arch key and the ELF
//! header a binary must have to run here.

/// Catalogue asset keys, one per supported target.
pub(crate) const ARCH_KEYS: [&str; 5] = ["x86_64", "aarch64", "armv7", "mipsel", "mips"];

pub(crate) const EM_MIPS: u16 = 8;
pub(crate) const EM_ARM: u16 = 40;
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const EM_AARCH64: u16 = 183;

/// The catalogue key of the CPU this agent was built for.
pub(crate) fn host_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "x86_64"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else if cfg!(target_arch = "arm") {
        "armv7"
    } else if cfg!(all(target_arch = "mips", target_endian = "little")) {
        "mipsel"
    } else if cfg!(target_arch = "mips") {
        "mips"
    } else {
        "unsupported"
    }
}

/// The ELF `e_machine` of an arch key's binaries.
pub(crate) fn elf_machine(arch: &str) -> Option<u16> {
    match arch {
        "x86_64" => Some(EM_X86_64),
        "aarch64" => Some(EM_AARCH64),
        "armv7" => Some(EM_ARM),
        "mipsel" | "mips" => Some(EM_MIPS),
        _ => None,
    }
}
