#!/usr/bin/env python3
"""Checks a built agent binary is what its target triple promises: a statically linked ELF
executable for the right machine, class, byte order and (ARM) float ABI, with no interpreter
and no shared-library dependencies.

usage: check_elf.py TARGET_TRIPLE BINARY
"""
import struct
import sys

# triple prefix -> (ELF class, little endian, e_machine, name)
EXPECT = {
    "x86_64-": (2, True, 62, "x86-64"),
    "aarch64-": (2, True, 183, "AArch64"),
    "armv7-": (1, True, 40, "ARM"),
    "mipsel-": (1, True, 8, "MIPS"),
    "mips-": (1, False, 8, "MIPS"),
}
PT_INTERP, PT_DYNAMIC, DT_NEEDED = 3, 2, 1
EF_ARM_ABI_FLOAT_HARD, EF_ARM_EABI_MASK = 0x400, 0xFF000000
EF_MIPS_ABI2, EF_MIPS_ABI_O32, EF_MIPS_ARCH = 0x20, 0x1000, 0xF0000000


def fail(msg):
    sys.exit(f"check_elf: {msg}")


def main():
    triple, path = sys.argv[1], sys.argv[2]
    want = next((v for k, v in EXPECT.items() if triple.startswith(k)), None)
    if want is None:
        fail(f"unknown target {triple}")
    cls, little, machine, name = want
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF":
        fail(f"{path} is not ELF")
    if data[4] != cls or (data[5] == 1) != little:
        fail(f"{path}: class {data[4]} / data {data[5]}, want {cls} / {'LE' if little else 'BE'}")
    e = "<" if little else ">"
    if cls == 2:
        e_type, e_machine, _, _, e_phoff, _, e_flags, _, e_phentsize, e_phnum = struct.unpack_from(e + "HHIQQQIHHH", data, 16)
    else:
        e_type, e_machine, _, _, e_phoff, _, e_flags, _, e_phentsize, e_phnum = struct.unpack_from(e + "HHIIIIIHHH", data, 16)
    if e_machine != machine:
        fail(f"{path}: e_machine {e_machine}, want {machine} ({name})")
    if e_type not in (2, 3):
        fail(f"{path}: e_type {e_type} is not an executable")
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type = struct.unpack_from(e + "I", data, off)[0]
        if p_type == PT_INTERP:
            fail(f"{path} has a PT_INTERP: it is dynamically linked")
        if p_type == PT_DYNAMIC:
            if cls == 2:
                _, _, p_offset, _, _, p_filesz = struct.unpack_from(e + "IIQQQQ", data, off)
                fmt, size = e + "qQ", 16
            else:
                _, p_offset, _, _, p_filesz = struct.unpack_from(e + "IIIII", data, off)
                fmt, size = e + "iI", 8
            for j in range(0, p_filesz, size):
                tag, _ = struct.unpack_from(fmt, data, p_offset + j)
                if tag == DT_NEEDED:
                    fail(f"{path} needs a shared library (DT_NEEDED)")
                if tag == 0:
                    break
    extra = ""
    if machine == 40:
        if e_flags & EF_ARM_EABI_MASK != 0x05000000:
            fail(f"{path}: ARM e_flags {e_flags:#x} is not EABI5")
        if not e_flags & EF_ARM_ABI_FLOAT_HARD:
            fail(f"{path}: ARM e_flags {e_flags:#x} is not hard-float (musleabihf)")
        extra = ", EABI5 hard-float"
    if machine == 8:
        if e_flags & EF_MIPS_ABI2 or e_flags & 0xF000 not in (0, EF_MIPS_ABI_O32):
            fail(f"{path}: MIPS e_flags {e_flags:#x} is not o32")
        extra = f", o32, arch flags {e_flags & EF_MIPS_ARCH:#x}"
    print(f"{path}: static {cls * 32}-bit {'LE' if little else 'BE'} {name}{extra}: ok")


if __name__ == "__main__":
    main()
